//! A job's history: every lease, checkpoint, loss of a lease, commit and failure, in
//! order, as `outloud status --json` prints it and the report reads it.

use serde::{Deserialize, Serialize};

use super::model::{Millis, TaskId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: Millis,
    #[serde(flatten)]
    pub what: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    PhaseStarted {
        phase: String,
    },
    Leased {
        task: TaskId,
        worker: String,
        epoch: u64,
        resume_from: Option<String>,
    },
    /// A gang was granted: `workers[r]` is rank r.
    GangLeased {
        task: TaskId,
        epoch: u64,
        workers: Vec<String>,
    },
    /// A straggler got a duplicate attempt on an idle worker.
    Duplicated {
        task: TaskId,
        worker: String,
        epoch: u64,
        /// The worker still on the first attempt.
        straggler: String,
    },
    Resumed {
        task: TaskId,
        epoch: u64,
        step: u64,
    },
    Checkpointed {
        task: TaskId,
        epoch: u64,
        step: u64,
        checkpoint: String,
    },
    LeaseLost {
        task: TaskId,
        worker: String,
        epoch: u64,
        reason: String,
    },
    TaskSucceeded {
        task: TaskId,
        epoch: u64,
        loss: f64,
    },
    TaskFailed {
        task: TaskId,
        epoch: u64,
        error: String,
    },
    PhaseSucceeded {
        phase: String,
    },
    /// `outloud retry`: these steps run again.
    Retried {
        steps: Vec<String>,
    },
    JobSucceeded,
    JobFailed {
        error: String,
    },
    JobCancelled,
}
