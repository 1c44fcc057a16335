//! Traces over OTLP: one job is one trace.
//!
//! Its ids are functions of what the job record already holds, so every process (and a
//! coordinator restarted from its state) names the same spans: the trace id hashes the
//! job's id and submission time; the job's root span, each run of a step and each lease
//! hash the trace id with what they are. The coordinator exports those spans as they
//! end (`coordinator::traces`); a worker receives its lease's span as a W3C
//! `traceparent` in the assignment and parents its own spans (task, training-step
//! ranges, checkpoints, collectives, eval) under it ([`worker_layer`]).

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};

/// The standard variable naming a collector; `--otlp-endpoint` overrides it.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The trace of the job `job_id` submitted at `submitted_at` (ms).
pub fn job_trace(job_id: &str, submitted_at: u64) -> TraceId {
    let digest = hash(&["trace", job_id, &submitted_at.to_string()]);
    TraceId::from_bytes(digest[..16].try_into().expect("16 bytes"))
}

/// A span of `trace` named by `parts` (e.g. `["lease", task, epoch]`).
pub fn span_id(trace: TraceId, parts: &[&str]) -> SpanId {
    let trace = trace.to_string();
    let mut all = vec![trace.as_str()];
    all.extend_from_slice(parts);
    let digest = hash(&all);
    SpanId::from_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The job's root span.
pub fn job_span(trace: TraceId) -> SpanId {
    span_id(trace, &["job"])
}

/// Run `attempt` (1, 2 after a retry, ...) of the step at `index`.
pub fn step_span(trace: TraceId, index: usize, attempt: u32) -> SpanId {
    span_id(trace, &["step", &index.to_string(), &attempt.to_string()])
}

/// The lease of `task` (its id's text) under `epoch`.
pub fn lease_span(trace: TraceId, task: &str, epoch: u64) -> SpanId {
    span_id(trace, &["lease", task, &epoch.to_string()])
}

fn hash(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

/// `00-<trace>-<span>-01`: the W3C trace-context header of a sampled span.
pub fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// The span a `traceparent` names, as a remote parent.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// An OpenTelemetry context whose parent is the span a `traceparent` names.
pub fn remote_parent(text: &str) -> Option<opentelemetry::Context> {
    let parent = parse_traceparent(text)?;
    Some(opentelemetry::Context::new().with_remote_span_context(parent))
}

/// What a process says of itself in every span it exports.
pub fn resource(service: &'static str, instance: String) -> Resource {
    Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance,
        ))
        .build()
}

/// An OTLP/gRPC exporter to `endpoint`. Call it inside a Tokio runtime (tonic's
/// channel lives there), which must outlive the exports.
pub fn exporter(endpoint: &str) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::WithExportConfig;
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?)
}

/// Exports this process's `tracing` spans (INFO and above) to `endpoint`. Keep the
/// provider: dropping or shutting it down flushes what is queued.
pub fn worker_layer(
    endpoint: &str,
    resource: Resource,
) -> anyhow::Result<(
    crate::telemetry::ExtraLayer,
    opentelemetry_sdk::trace::SdkTracerProvider,
)> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter(endpoint)?)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("outloud"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    Ok((Box::new(layer), provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let trace = job_trace("j-1-abc", 42);
        assert_eq!(trace, job_trace("j-1-abc", 42));
        assert_ne!(trace, job_trace("j-1-abc", 43));
        assert_ne!(lease_span(trace, "j/1/0", 1), lease_span(trace, "j/1/0", 2));
        assert_ne!(step_span(trace, 1, 1), step_span(trace, 1, 2));
        assert_ne!(job_span(trace), step_span(trace, 0, 1));
    }

    #[test]
    fn traceparents_round_trip() {
        let trace = job_trace("j", 1);
        let span = lease_span(trace, "j/0/0", 3);
        let text = traceparent(trace, span);
        let parsed = parse_traceparent(&text).unwrap();
        assert_eq!((parsed.trace_id(), parsed.span_id()), (trace, span));
        assert!(parsed.is_sampled() && parsed.is_remote());
        assert!(parse_traceparent("01-x-y-01").is_none());
        assert!(parse_traceparent(&format!("{text}-extra")).is_none());
        let zeros = format!("00-{}-{}-01", "0".repeat(32), "0".repeat(16));
        assert!(parse_traceparent(&zeros).is_none());
    }
}
