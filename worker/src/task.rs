//! Running one leased task: the context a phase runs in (lease, device, stop flag,
//! progress channel) and the dispatch by phase kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outloud_coordinator::scheduler::{Assignment, Metrics};
use outloud_coordinator::spec::PhaseKind;
use tch::Device;
use tokio::sync::mpsc;

use crate::error::WorkerError;
use crate::{eval, fit, language, multimodal};

/// A progress report on its way to the coordinator.
#[derive(Debug, Clone)]
pub struct Progress {
    pub metrics: Metrics,
    pub checkpoint: Option<String>,
    pub resumed_from_step: Option<u64>,
}

/// What a finished task hands back.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    pub output: String,
    pub metrics: Metrics,
    /// Evaluation results (caption accuracy, VQA accuracy, their chance levels).
    pub scores: BTreeMap<String, f64>,
}

/// Everything a phase needs while it runs on a blocking thread.
pub struct TaskContext {
    pub assignment: Assignment,
    pub device: Device,
    /// For storage calls from the blocking thread.
    pub runtime: tokio::runtime::Handle,
    /// Set when the lease is revoked or the worker shuts down.
    pub stop: Arc<AtomicBool>,
    pub progress: mpsc::UnboundedSender<Progress>,
}

impl TaskContext {
    pub fn check_stop(&self) -> Result<(), WorkerError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(WorkerError::Stopped(
                "lease revoked or worker stopping".into(),
            ));
        }
        Ok(())
    }

    pub fn report(
        &self,
        metrics: Metrics,
        checkpoint: Option<String>,
        resumed_from_step: Option<u64>,
    ) {
        // The receiver lives as long as the task; a closed channel means we are stopping.
        let _ = self.progress.send(Progress {
            metrics,
            checkpoint,
            resumed_from_step,
        });
    }
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    if ctx.assignment.evaluation {
        return eval::run(ctx);
    }
    match fit::phase(ctx).kind {
        PhaseKind::Language => language::run(ctx),
        PhaseKind::VisionLanguage | PhaseKind::Tasks => multimodal::run(ctx),
        PhaseKind::Noop => Ok(TaskOutput {
            output: String::new(),
            metrics: Metrics::default(),
            scores: BTreeMap::new(),
        }),
        other => Err(WorkerError::Config(format!(
            "this worker cannot run `{other:?}` phases yet"
        ))),
    }
}
