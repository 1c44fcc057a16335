//! Task logs, shipped to the job's storage so `outloud logs JOB` can read and follow
//! them from anywhere: every event inside a task's span becomes one JSON line in that
//! task's buffer ([`ShippingLayer`]), and every flush interval the buffer goes to
//! storage as one chunk ([`Shipper`]) under `core::task::log_folder`, numbered in
//! order. A chunk is written once and never changed, so object stores need no appends.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outloud_core::storage::Location;
use outloud_core::task::log_chunk_name;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// One task's unshipped lines, kept in its span's extensions.
#[derive(Clone, Default)]
pub struct TaskLog(Arc<Mutex<Vec<String>>>);

impl TaskLog {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Starts collecting the lines logged inside `span` (and the spans under it). None when
/// the span is disabled or the process has no [`ShippingLayer`].
pub fn collect(span: &tracing::Span) -> Option<TaskLog> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        let log = TaskLog::default();
        span.extensions_mut().insert(log.clone());
        Some(log)
    })
    .flatten()
}

/// The layer that turns events into lines of the [`TaskLog`] of the task they happen in.
pub struct ShippingLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for ShippingLayer {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let mut inner = Vec::new();
        for span in scope {
            if let Some(log) = span.extensions().get::<TaskLog>() {
                log.push(line(event, &inner));
                return;
            }
            inner.push(span.name());
        }
    }
}

/// `{"ts_ms": ..., "level": "INFO", "message": "...", "fields": {...}, "spans": [...]}`:
/// the spans are those inside the task's, innermost first.
fn line(event: &Event<'_>, spans: &[&str]) -> String {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let ts_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut line = serde_json::json!({
        "ts_ms": ts_ms,
        "level": event.metadata().level().as_str(),
        "message": fields.message,
    });
    if !fields.values.is_empty() {
        line["fields"] = Value::Object(fields.values);
    }
    if !spans.is_empty() {
        line["spans"] = spans.into();
    }
    line.to_string()
}

#[derive(Default)]
struct Fields {
    message: String,
    values: Map<String, Value>,
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.values.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.values.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            name => {
                self.values.insert(name.into(), value.into());
            }
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        match field.name() {
            "message" => self.message = text,
            name => {
                self.values.insert(name.into(), text.into());
            }
        }
    }
}

/// Writes a task's lines to storage, a chunk per flush interval, until finished.
pub struct Shipper {
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
}

impl Shipper {
    pub fn start(log: TaskLog, folder: Location, every: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move {
            let (mut seq, mut pending) = (0, Vec::new());
            loop {
                let last = tokio::time::timeout(every, stopped.wait_for(|s| *s))
                    .await
                    .is_ok();
                pending.extend(log.take());
                if !pending.is_empty() {
                    let chunk = folder.join(&log_chunk_name(seq));
                    let mut text = pending.join("\n");
                    text.push('\n');
                    // A log that cannot be shipped must not fail the task it describes:
                    // its lines wait for the next chunk.
                    match chunk.put(text.into_bytes()).await {
                        Ok(()) => (seq, pending) = (seq + 1, Vec::new()),
                        Err(e) => {
                            tracing::warn!(chunk = %chunk.url(), error = %e, "task log not shipped yet")
                        }
                    }
                }
                if last {
                    return;
                }
            }
        });
        Self { stop, running }
    }

    /// Ships what is left and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.running.await;
    }
}
