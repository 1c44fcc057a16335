//! The context a task runs in: its assignment, the device, the stop flag and the
//! progress channel; and what a finished task hands back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outloud_core::results::TaskResults;
use outloud_core::storage::Location;
use outloud_core::task::{Assignment, Metrics};
use outloud_core::task_spec::TrainSpec;
use tch::Device;
use tokio::sync::mpsc;

use crate::error::WorkerError;

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
    /// Where the task's output lives (a checkpoint folder, a results file).
    pub output: String,
    pub metrics: Metrics,
    pub results: TaskResults,
}

/// Everything a task needs while it runs on a blocking thread.
pub struct TaskContext {
    pub assignment: Assignment,
    pub device: Device,
    /// For storage calls from the blocking thread.
    pub runtime: tokio::runtime::Handle,
    /// Set when the lease is revoked or the worker shuts down.
    pub stop: Arc<AtomicBool>,
    pub progress: mpsc::UnboundedSender<Progress>,
    /// How a gang rank meets the others through the coordinator.
    pub rendezvous: crate::gang::Rendezvous,
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

    /// The training settings of a training task.
    pub fn train(&self) -> Result<&TrainSpec, WorkerError> {
        self.assignment.spec.train_spec().ok_or_else(|| {
            WorkerError::Config(format!(
                "step `{}` is not a training step",
                self.assignment.step
            ))
        })
    }

    /// The job's storage root URL.
    pub fn storage(&self) -> &str {
        &self.assignment.spec.storage
    }

    /// Where this lease writes everything it makes: its attempt's own folder,
    /// `<storage>/jobs/<job>/<step>/[shard-<k>/]attempt-<epoch>`, which the coordinator
    /// chose. What it commits must lie inside.
    pub fn output_root(&self) -> Result<Location, WorkerError> {
        Ok(Location::open(&self.assignment.output_root)?)
    }
}
