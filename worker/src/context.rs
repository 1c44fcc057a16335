//! The context a task runs in: its assignment, the device, the stop flag, the progress
//! channel and the way to its gang's rendezvous; and what a finished task hands back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outloud_core::client::Workers;
use outloud_proto::v1 as pb;
use tonic::Code;

use outloud_core::results::TaskResults;
use outloud_core::storage::Location;
use outloud_core::task::{Assignment, CheckpointRef, Metrics};
use outloud_core::task_spec::TrainSpec;
use tch::Device;
use tokio::sync::mpsc;

use crate::collective::CollectiveError;
use crate::error::WorkerError;

/// A progress report on its way to the coordinator.
#[derive(Debug, Clone)]
pub struct Progress {
    pub metrics: Metrics,
    /// A checkpoint committed since the last report.
    pub checkpoint: Option<CheckpointRef>,
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
    pub rendezvous: Rendezvous,
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
        checkpoint: Option<CheckpointRef>,
        resumed_from_step: Option<u64>,
    ) {
        let a = &self.assignment;
        crate::metrics::progress(&a.job_id, &a.step, &metrics, self.device.is_cuda());
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

    /// The task's folder, holding every attempt's: `<storage>/jobs/<job>/<step>/[shard-<k>/]`.
    pub fn task_folder(&self) -> Result<Location, WorkerError> {
        let root = &self.assignment.output_root;
        let folder = root
            .rsplit_once('/')
            .map_or(root.as_str(), |(folder, _)| folder);
        Ok(Location::open(folder)?)
    }

    /// Where this lease writes everything it makes: its attempt's own folder,
    /// `<storage>/jobs/<job>/<step>/[shard-<k>/]attempt-<epoch>`, which the coordinator
    /// chose. What it commits must lie inside.
    pub fn output_root(&self) -> Result<Location, WorkerError> {
        Ok(Location::open(&self.assignment.output_root)?)
    }
}

/// How often a rank asks whether the others have published.
const MEET_POLL: Duration = Duration::from_millis(50);

/// A rank's way to the coordinator's rendezvous for the lease it holds.
#[derive(Clone)]
pub struct Rendezvous {
    pub client: Workers,
    pub worker_id: String,
    pub lease: pb::LeaseRef,
    /// The address other ranks reach this worker's ring listener at.
    pub host: String,
}

impl TaskContext {
    /// Publishes `payload` at the rendezvous of this task's gang and waits until every
    /// rank has: their payloads in rank order. Ends with an error once `timeout`
    /// passes, the lease is revoked, or the task is told to stop.
    pub fn meet(&self, payload: Vec<u8>, timeout: Duration) -> Result<Vec<Vec<u8>>, WorkerError> {
        let deadline = Instant::now() + timeout;
        let request = pb::RendezvousRequest {
            worker_id: self.rendezvous.worker_id.clone(),
            lease: Some(self.rendezvous.lease.clone()),
            payload,
        };
        loop {
            self.check_stop()?;
            let mut client = self.rendezvous.client.clone();
            let answer = self.runtime.block_on(client.rendezvous(request.clone()));
            match answer {
                Ok(answer) => {
                    let payloads = answer.into_inner().payloads;
                    if !payloads.is_empty() {
                        return Ok(payloads);
                    }
                }
                Err(status)
                    if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) =>
                {
                    return Err(WorkerError::Stopped(format!(
                        "the gang was revoked before it met: {}",
                        status.message()
                    )));
                }
                Err(status) => tracing::debug!(error = %status.message(), "rendezvous call failed"),
            }
            if Instant::now() >= deadline {
                return Err(CollectiveError::Timeout {
                    rank: self.assignment.rank as usize,
                    peer: "the other ranks".into(),
                    after: timeout,
                    during: "the rendezvous",
                }
                .into());
            }
            std::thread::sleep(MEET_POLL);
        }
    }
}
