//! The scheduler's domain types: jobs, their tasks, workers, and the history of
//! events. These are also the documents `outloud status --json` prints. A job's steps
//! and how they depend on each other are in [`super::steps`].
//!
//! A failed eval step is recorded (its state `failed`) and training goes on; a failed
//! prepare or training step fails the job, and what had not finished is cancelled.
//! `outloud retry` runs failed steps again (and what reads from them).
//!
//! ```text
//! job:   pending ──first lease──▶ running ──every step done──▶ succeeded
//!           │                       │  └──a training step fails──▶ failed ──retry──▶ running
//!           └───────────cancel──────┴───────────────────────────▶ cancelled
//! task:  pending ──lease(epoch+1)──▶ leased ──complete──▶ succeeded
//!           ▲                          │ └──fail(fatal)──▶ failed
//!           └──lease lost / retryable──┘
//! ```
//!
//! A leased synthesize shard that straggles may get a duplicate attempt on an idle
//! worker, under an epoch of its own ([`super::speculation`]): the first to commit wins,
//! the other is told to stop, and losing one of the two leaves the other running.

use std::fmt;

use outloud_core::results::TaskResults;
use outloud_core::spec::JobSpec;
pub use outloud_core::task::{Assignment, CheckpointRef, LeaseRef, Metrics, TaskId};
use outloud_core::task_spec::{TaskSpec, Work};
use outloud_core::traces;
use serde::{Deserialize, Serialize};

use super::cost::DeviceTime;
use super::curve::LossCurve;
pub use super::history::{Event, EventKind};
use super::steps::{Input, Step, StepKind};

/// Milliseconds since the Unix epoch. The scheduler never reads a clock: callers pass it.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        };
        f.write_str(text)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Leased {
        worker: String,
        since: Millis,
        /// A duplicate attempt of a straggler, on another worker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duplicate: Option<Duplicate>,
        /// A gang's other ranks (1, 2, ...); `worker` is rank 0. Granted together,
        /// revoked together ([`super::gangs`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ranks: Vec<Rank>,
    },
    Succeeded {
        output: String,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

/// A rank of a gang past rank 0, and whether its worker has been handed its assignment
/// (it is, at its next lease call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rank {
    pub worker: String,
    pub handed: bool,
}

/// A second attempt at a leased task, on another worker, under its own epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub worker: String,
    pub epoch: u64,
    pub since: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    #[serde(flatten)]
    pub state: TaskState,
    /// The epoch of the task's (first) lease, bumped by every lease; reports must name
    /// a current one.
    pub epoch: u64,
    /// The highest epoch handed out, duplicates' included (0: `epoch` is).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_epoch: u64,
    /// How long the attempt that succeeded ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<Millis>,
    /// Why a gang task waits for workers, and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Millis>,
    /// Leases that ended without success.
    pub lost_leases: u32,
    /// The newest checkpoint reported: a new lease resumes from it.
    pub checkpoint: Option<String>,
    pub metrics: Metrics,
    /// The loss of the first report, kept to show how far training came.
    pub first_loss: Option<f64>,
    /// The loss at the steps reported, bounded (training tasks).
    #[serde(default, skip_serializing_if = "LossCurve::is_empty")]
    pub curve: LossCurve,
    /// The device time its leases took.
    #[serde(default, skip_serializing_if = "DeviceTime::is_empty")]
    pub cost: DeviceTime,
    /// Results reported with the task's completion (benchmark scores, probes, counts).
    #[serde(default, skip_serializing_if = "TaskResults::is_empty")]
    pub results: TaskResults,
}

impl Task {
    pub fn new(id: TaskId) -> Self {
        Self {
            id,
            state: TaskState::Pending,
            epoch: 0,
            last_epoch: 0,
            took_ms: None,
            waiting: None,
            waiting_since: None,
            lost_leases: 0,
            checkpoint: None,
            metrics: Metrics::default(),
            first_loss: None,
            curve: LossCurve::default(),
            cost: DeviceTime::default(),
            results: TaskResults::default(),
        }
    }

    /// What the task committed, once it succeeded with an output.
    pub fn output(&self) -> Option<&str> {
        match &self.state {
            TaskState::Succeeded { output } if !output.is_empty() => Some(output),
            _ => None,
        }
    }

    pub fn holder(&self) -> Option<&str> {
        match &self.state {
            TaskState::Leased { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// Every worker holding a lease on the task: its holder, and a duplicate's.
    pub fn holders(&self) -> Vec<String> {
        match &self.state {
            TaskState::Leased {
                worker,
                duplicate,
                ranks,
                ..
            } => std::iter::once(worker)
                .chain(duplicate.iter().map(|d| &d.worker))
                .chain(ranks.iter().map(|r| &r.worker))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The workers of the current gang's ranks past 0 (none without a gang).
    pub fn gang_ranks(&self) -> Vec<String> {
        match &self.state {
            TaskState::Leased { ranks, .. } => ranks.iter().map(|r| r.worker.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// The epoch of `worker`'s lease on the task, if it holds one.
    pub fn lease_of(&self, worker: &str) -> Option<u64> {
        match &self.state {
            TaskState::Leased { worker: w, .. } if w == worker => Some(self.epoch),
            TaskState::Leased { ranks, .. } if ranks.iter().any(|r| r.worker == worker) => {
                Some(self.epoch)
            }
            TaskState::Leased {
                duplicate: Some(d), ..
            } if d.worker == worker => Some(d.epoch),
            _ => None,
        }
    }

    /// Refuses a commit or checkpoint from a rank past 0.
    pub fn rank_zero(&self, worker: &str) -> Result<(), SchedulerError> {
        match self.rank_of(worker) {
            Some(rank) if rank > 0 => Err(SchedulerError::NotRankZero {
                task: self.id.to_string(),
                rank,
            }),
            _ => Ok(()),
        }
    }

    /// `worker`'s rank in the task's gang (0 also when there is no gang).
    pub fn rank_of(&self, worker: &str) -> Option<u32> {
        match &self.state {
            TaskState::Leased { worker: w, .. } if w == worker => Some(0),
            TaskState::Leased { ranks, .. } => ranks
                .iter()
                .position(|r| r.worker == worker)
                .map(|i| i as u32 + 1),
            _ => None,
        }
    }

    /// Ranks of the task's current lease (1 without a gang).
    pub fn world_size(&self) -> u32 {
        match &self.state {
            TaskState::Leased { ranks, .. } => ranks.len() as u32 + 1,
            _ => 1,
        }
    }

    /// Whether a duplicate attempt runs beside the first.
    pub fn has_duplicate(&self) -> bool {
        matches!(
            self.state,
            TaskState::Leased {
                duplicate: Some(_),
                ..
            }
        )
    }

    /// An epoch never handed out before.
    pub fn next_epoch(&mut self) -> u64 {
        self.last_epoch = self.last_epoch.max(self.epoch) + 1;
        self.last_epoch
    }

    /// Ends the attempt of `epoch` while another goes on: a lost duplicate is dropped,
    /// a lost holder's duplicate takes its place. False when no other attempt runs.
    pub fn end_one_of_two(&mut self, epoch: u64) -> bool {
        let TaskState::Leased {
            duplicate: Some(d), ..
        } = &self.state
        else {
            return false;
        };
        let d = d.clone();
        if d.epoch == epoch {
            if let TaskState::Leased { duplicate, .. } = &mut self.state {
                *duplicate = None;
            }
        } else {
            self.epoch = d.epoch;
            self.state = TaskState::Leased {
                worker: d.worker,
                since: d.since,
                duplicate: None,
                ranks: Vec::new(),
            };
        }
        true
    }

    pub fn run_state(&self) -> RunState {
        match self.state {
            TaskState::Pending => RunState::Pending,
            TaskState::Leased { .. } => RunState::Running,
            TaskState::Succeeded { .. } => RunState::Succeeded,
            TaskState::Failed { .. } => RunState::Failed,
            TaskState::Cancelled => RunState::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    pub state: RunState,
    pub submitted_at: Millis,
    pub finished_at: Option<Millis>,
    pub error: Option<String>,
    pub steps: Vec<Step>,
    /// Everything that happened to the job, oldest first (in a summary, the newest).
    pub history: Vec<Event>,
    /// Events a summary left out ([`Job::summarised`]); 0 in the scheduler's own jobs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub history_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Job {
    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.steps
            .get(id.step as usize)?
            .tasks
            .get(id.shard as usize)
    }

    pub fn task_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        self.steps
            .get_mut(id.step as usize)?
            .tasks
            .get_mut(id.shard as usize)
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Whether step `index` may start: once every step it reads from has succeeded.
    pub fn is_startable(&self, index: usize) -> bool {
        self.steps.get(index).is_some_and(|step| {
            step.inputs.iter().all(|input| {
                self.steps
                    .get(input.step())
                    .is_some_and(|s| s.state == RunState::Succeeded)
            })
        })
    }

    /// The training step whose final checkpoint step `index` reads, if any.
    pub fn checkpoint_source(&self, index: usize) -> Option<&Step> {
        self.steps
            .get(index)?
            .inputs
            .iter()
            .find_map(|input| match input {
                Input::Checkpoint(source) => self.steps.get(*source as usize),
                Input::Outputs(_) => None,
            })
    }

    /// The checkpoint step `index` starts from (training) or scores (evaluation): the
    /// final output of the training step it names as its checkpoint input, else the
    /// checkpoint its phase imports from outside the job.
    pub fn input_checkpoint(&self, index: usize) -> Option<String> {
        match self.checkpoint_source(index) {
            Some(source) => source.tasks.first()?.output().map(str::to_string),
            None => self.imported_checkpoint(index).map(str::to_string),
        }
    }

    /// The phase's `init_from`, for the steps of the phase that start from it: its
    /// training step, or the first round's synthesize and training steps (later rounds
    /// start from the round before, an input of their own).
    pub fn imported_checkpoint(&self, index: usize) -> Option<&str> {
        let step = self.steps.get(index)?;
        let phase = match step.kind {
            StepKind::Train { phase } | StepKind::Synthesize { phase, .. } => phase,
            StepKind::Prepare | StepKind::Evaluate { .. } | StepKind::Finetune { .. } => {
                return None;
            }
        };
        if self.checkpoint_source(index).is_some() {
            return None;
        }
        self.spec.phases.get(phase as usize)?.init_from.as_deref()
    }

    /// What the lease of task `id` under `epoch` is given, as `rank` of `world_size`.
    pub fn assignment(&self, id: &TaskId, epoch: u64, rank: u32, world_size: u32) -> Assignment {
        let step = &self.steps[id.step as usize];
        let trace = self.trace_id();
        Assignment {
            lease: LeaseRef {
                task: id.clone(),
                epoch,
            },
            job_id: self.id.clone(),
            step: step.name.clone(),
            shards: step.tasks.len() as u32,
            spec: self.task_spec(step),
            output_root: step.attempt_root(id, epoch),
            resume_checkpoint: self.task(id).and_then(|t| t.checkpoint.clone()),
            input_checkpoint: self.input_checkpoint(id.step as usize),
            input_step: self
                .checkpoint_source(id.step as usize)
                .map(|s| s.name.clone()),
            rank,
            world_size,
            traceparent: traces::traceparent(
                trace,
                traces::lease_span(trace, &id.to_string(), epoch),
            ),
        }
    }

    /// The job's trace (see [`traces`]): a function of its id and submission time.
    pub fn trace_id(&self) -> opentelemetry::trace::TraceId {
        traces::job_trace(&self.id, self.submitted_at)
    }

    /// What a task of step `index` is given: the step's resolved spec, with the captions
    /// that the synthesize steps it reads have committed, by now, filled in.
    pub fn task_spec(&self, step: &Step) -> TaskSpec {
        let mut spec = step.work.clone();
        let Work::Train(train) = &mut spec.work else {
            return spec;
        };
        for input in &step.inputs {
            let Some(source) = self.steps.get(input.step()) else {
                continue;
            };
            let (Input::Outputs(_), StepKind::Synthesize { phase, .. }) = (input, source.kind)
            else {
                continue;
            };
            let name = &self.spec.phases[phase as usize].name;
            let parts: Vec<String> = source
                .tasks
                .iter()
                .filter_map(|t| t.output().map(str::to_string))
                .collect();
            for data in train.data.iter_mut().filter(|d| &d.name == name) {
                data.parts = parts.clone();
            }
        }
        spec
    }

    /// Leases a task of step `index` may lose before the job fails.
    pub fn max_attempts(&self, index: usize) -> u32 {
        let Some(step) = self.steps.get(index) else {
            return 1;
        };
        match (step.kind, &self.spec.evaluation) {
            (StepKind::Evaluate { .. }, Some(evaluation)) => evaluation.max_attempts,
            (StepKind::Finetune { .. }, Some(evaluation)) => evaluation
                .glue
                .as_ref()
                .map_or(PREPARE_ATTEMPTS, |g| g.max_attempts),
            (StepKind::Train { phase } | StepKind::Synthesize { phase, .. }, _) => {
                self.spec.phases[phase as usize].max_attempts
            }
            _ => PREPARE_ATTEMPTS,
        }
    }

    /// Steps that read, directly or not, from step `index`.
    pub fn dependants(&self, index: usize) -> Vec<usize> {
        let mut found = vec![index];
        let mut grew = true;
        while grew {
            grew = false;
            for (i, step) in self.steps.iter().enumerate() {
                let reads = step
                    .inputs
                    .iter()
                    .any(|input| found.contains(&input.step()));
                if reads && !found.contains(&i) {
                    found.push(i);
                    grew = true;
                }
            }
        }
        found.remove(0);
        found
    }
}

/// Leases a prepare task may lose before the job fails.
const PREPARE_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub hostname: String,
    pub device: String,
    pub memory_bytes: u64,
    pub threads: u32,
    /// The device's model (a GPU's name, the CPU's model) and its memory (GPU memory
    /// on CUDA, host memory on CPU).
    #[serde(default)]
    pub device_name: String,
    #[serde(default)]
    pub device_memory_bytes: u64,
}

#[cfg(test)]
impl WorkerInfo {
    /// A one-thread CPU worker on `hostname`, for unit tests.
    pub fn for_tests(hostname: &str) -> Self {
        Self {
            hostname: hostname.into(),
            device: "cpu".into(),
            memory_bytes: 0,
            threads: 1,
            device_name: "test cpu".into(),
            device_memory_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub info: WorkerInfo,
    pub registered_at: Millis,
    pub last_seen: Millis,
    /// False once the worker missed its lease timeout; a heartbeat brings it back.
    pub alive: bool,
    /// Tasks this worker holds now.
    pub leases: Vec<TaskId>,
    /// When it last asked for work holding nothing, since it last held a lease: what
    /// makes it idle for a gang. A worker released from a revoked gang is not idle
    /// until it asks again, so a dead rank is never picked for the next gang.
    #[serde(skip)]
    pub asked_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown worker `{0}`: register first")]
    UnknownWorker(String),
    #[error("unknown job `{0}`")]
    UnknownJob(String),
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    #[error("stale lease on task {task}: epoch {epoch} from {worker} is not the current lease")]
    StaleLease {
        task: String,
        epoch: u64,
        worker: String,
    },
    /// A commit or checkpoint outside the folder of the lease that reports it.
    #[error("task {task}: `{url}` is not inside this lease's folder `{root}`")]
    OutsideAttempt {
        task: String,
        url: String,
        root: String,
    },
    /// A gang's rank past 0 tried to commit or checkpoint.
    #[error("task {task}: rank {rank} of its gang does not commit or checkpoint; rank 0 does")]
    NotRankZero { task: String, rank: u32 },
    #[error("job `{0}` has already finished")]
    JobFinished(String),
    #[error("unknown step `{0}`")]
    UnknownStep(String),
    #[error("{0}")]
    NotRetryable(String),
    /// A job that runs, or that another job may still start from, is not deleted.
    #[error("{0}")]
    InUse(String),
    /// Admission checks specs first; this is a spec that skipped them.
    #[error("the spec cannot be planned: {0}")]
    Unplannable(String),
}

/// Why a worker gave a task up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It would fail again anywhere (bad data, bad config): the job fails.
    Fatal,
    /// It might succeed on another try: counts against the phase's `max_attempts`.
    Retryable,
    /// The worker is shutting down: leased again without counting an attempt.
    HandedBack,
}
