//! Tracing set-up shared by every Outloud binary: human-readable lines on stderr,
//! filtered by `RUST_LOG` (default `info`), spans carrying job, phase, task, worker, rank;
//! the signals that ask a binary to stop; and the machine's CPU model, which workers
//! advertise and benchmarks print.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// A layer beside the stderr lines, with its own filter (a worker's task-log shipping).
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync>;

pub fn init(default_filter: &str) {
    init_with(default_filter, Vec::new());
}

/// [`init`], with `extra` layers that see spans and events whatever `RUST_LOG` lets
/// through to stderr (each filters for itself).
pub fn init_with(default_filter: &str, extra: Vec<ExtraLayer>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter);
    // An empty list of layers would say "never" for every callsite and silence stderr
    // too; no list at all is no layer.
    let extra = (!extra.is_empty()).then_some(extra);
    // A second init (tests that call into a binary's main) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(extra)
        .with(stderr)
        .try_init();
}

/// Completes on Ctrl-C or SIGTERM (what Kubernetes sends before it kills a pod).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The CPU's model name, as /proc/cpuinfo says it.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}
