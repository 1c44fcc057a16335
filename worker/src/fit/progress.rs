//! How a training loop tells the world where it is: the mean loss since the last
//! report ([`LossWindow`]), a line in the task's log every few seconds
//! ([`ProgressLog`]), and a trace span per range of steps between checkpoints
//! ([`StepRange`]).

use std::time::{Duration, Instant};

use outloud_core::task::Metrics;

/// Mean loss since the last report, and when the next report is due.
#[derive(Default)]
pub(super) struct LossWindow {
    sum: f64,
    pub(super) count: u32,
    since: Option<Instant>,
}

impl LossWindow {
    const EVERY: Duration = Duration::from_millis(500);

    pub(super) fn add(&mut self, loss: f64) {
        self.sum += loss;
        self.count += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    pub(super) fn due(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= Self::EVERY)
    }

    pub(super) fn take(&mut self) -> f64 {
        let mean = self.sum / self.count.max(1) as f64;
        *self = Self::default();
        mean
    }
}

/// A line in the task's log every [`ProgressLog::EVERY`] (metrics go every report).
#[derive(Default)]
pub(super) struct ProgressLog {
    last: Option<Instant>,
}

impl ProgressLog {
    const EVERY: Duration = Duration::from_secs(5);

    /// Logs where training is, unless it did less than [`Self::EVERY`] ago.
    pub(super) fn say(&mut self, metrics: &Metrics, steps: u64, lr: f64) {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let (done, loss) = (metrics.step, metrics.loss);
        tracing::info!(step = done, of = steps, loss, lr, "training");
    }
}

/// A span over the optimizer steps from one checkpoint to the next: a trace shows how
/// training went without a span per step.
pub(super) struct StepRange {
    span: tracing::span::EnteredSpan,
}

impl StepRange {
    pub(super) fn open(from: u64) -> Self {
        let span = tracing::info_span!(
            "steps",
            from,
            to = tracing::field::Empty,
            tokens = tracing::field::Empty
        );
        Self {
            span: span.entered(),
        }
    }

    /// Ends this range at `metrics.step` and opens the next.
    pub(super) fn close(self, metrics: &Metrics) -> Self {
        self.close_last(metrics);
        Self::open(metrics.step)
    }

    pub(super) fn close_last(self, metrics: &Metrics) {
        self.span.record("to", metrics.step);
        self.span.record("tokens", metrics.tokens);
    }
}
