//! The worker's Prometheus metrics (`--metrics-listen ADDR`, `GET /metrics`): what its
//! current task is doing, from the same progress reports the coordinator gets (step,
//! loss, step time, tokens/s, words real and synthetic, items/s for eval and caption
//! shards, all-reduce seconds), what its checkpoints cost (bytes and seconds written),
//! and the GPU memory in use. One registry per process; `prometheus-client` encodes it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use outloud_core::task::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Task {
    /// The Outloud job (`job` is Prometheus's own label, the scrape job).
    job_id: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Words {
    job_id: String,
    step: String,
    kind: &'static str,
}

type Float = Gauge<f64, AtomicU64>;

struct WorkerMetrics {
    registry: Registry,
    step: Family<Task, Float>,
    loss: Family<Task, Float>,
    step_seconds: Family<Task, Float>,
    tokens_per_second: Family<Task, Float>,
    items_per_second: Family<Task, Float>,
    words: Family<Words, Float>,
    allreduce_seconds: Family<Task, Float>,
    checkpoint_bytes: Counter,
    checkpoint_seconds: Counter<f64, AtomicU64>,
    gpu_memory: Float,
    /// Each task's previous report: when, at which step, tokens and items.
    last: Mutex<HashMap<Task, (Instant, u64, u64, u64)>>,
}

fn metrics() -> &'static WorkerMetrics {
    static METRICS: OnceLock<WorkerMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::default();
        let task = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Task, Float>::default();
            registry.register(name, help, family.clone());
            family
        };
        let step = task(
            &mut registry,
            "outloud_worker_step",
            "Optimizer steps the task has done.",
        );
        let loss = task(
            &mut registry,
            "outloud_worker_loss",
            "The task's latest training loss.",
        );
        let step_seconds = task(
            &mut registry,
            "outloud_worker_step_seconds",
            "Seconds per optimizer step, since the previous report.",
        );
        let tokens_per_second = task(
            &mut registry,
            "outloud_worker_tokens_per_second",
            "Tokens trained on per second, since the previous report.",
        );
        let items_per_second = task(
            &mut registry,
            "outloud_worker_items_per_second",
            "Items per second (eval items scored, pictures captioned), since the previous report.",
        );
        let allreduce_seconds = task(
            &mut registry,
            "outloud_worker_allreduce_seconds",
            "Seconds the task's gang spent in all-reduces.",
        );
        let words = Family::<Words, Float>::default();
        registry.register(
            "outloud_worker_words",
            "Words the task consumed, real and synthetic.",
            words.clone(),
        );
        let checkpoint_bytes = Counter::default();
        registry.register(
            "outloud_worker_checkpoint_bytes",
            "Bytes of checkpoints written.",
            checkpoint_bytes.clone(),
        );
        let checkpoint_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "outloud_worker_checkpoint_seconds",
            "Seconds spent writing checkpoints (off the training thread).",
            checkpoint_seconds.clone(),
        );
        let gpu_memory = Float::default();
        registry.register(
            "outloud_worker_gpu_memory_bytes",
            "GPU memory in use on the device (0 on a CPU).",
            gpu_memory.clone(),
        );
        WorkerMetrics {
            registry,
            step,
            loss,
            step_seconds,
            tokens_per_second,
            items_per_second,
            words,
            allreduce_seconds,
            checkpoint_bytes,
            checkpoint_seconds,
            gpu_memory,
            last: Mutex::new(HashMap::new()),
        }
    })
}

/// Records a progress report of step `step` of job `job`.
pub fn progress(job: &str, step: &str, m: &Metrics, cuda: bool) {
    let all = metrics();
    let task = Task {
        job_id: job.to_string(),
        step: step.to_string(),
    };
    all.step.get_or_create(&task).set(m.step as f64);
    all.loss.get_or_create(&task).set(m.loss);
    all.allreduce_seconds
        .get_or_create(&task)
        .set(m.allreduce_seconds);
    for (kind, words) in [
        ("real", m.words.saturating_sub(m.synthetic_words)),
        ("synthetic", m.synthetic_words),
    ] {
        let labels = Words {
            job_id: task.job_id.clone(),
            step: task.step.clone(),
            kind,
        };
        all.words.get_or_create(&labels).set(words as f64);
    }
    let now = Instant::now();
    let mut last = all.last.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((then, step, tokens, items)) =
        last.insert(task.clone(), (now, m.step, m.tokens, m.items))
    {
        let seconds = now.duration_since(then).as_secs_f64().max(1e-9);
        if m.step > step {
            all.step_seconds
                .get_or_create(&task)
                .set(seconds / (m.step - step) as f64);
        }
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
        all.tokens_per_second
            .get_or_create(&task)
            .set(rate(m.tokens, tokens));
        all.items_per_second
            .get_or_create(&task)
            .set(rate(m.items, items));
    }
    if cuda && let Some(bytes) = gpu_memory_in_use() {
        all.gpu_memory.set(bytes as f64);
    }
}

/// Records a checkpoint written: its bytes and the seconds it took.
pub fn checkpoint_written(bytes: u64, seconds: f64) {
    let all = metrics();
    all.checkpoint_bytes.inc_by(bytes);
    all.checkpoint_seconds.inc_by(seconds);
}

fn gpu_memory_in_use() -> Option<u64> {
    cudarc::driver::result::init().ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some(total.saturating_sub(free) as u64)
}

/// The exposition text.
pub fn render() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &metrics().registry);
    text
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let routes = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    axum::serve(listener, routes).await
}
