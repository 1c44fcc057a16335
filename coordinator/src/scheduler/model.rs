//! The scheduler's domain types: jobs, their phases and tasks, workers, and the
//! history of events. These are also the documents `outloud status --json` prints.
//!
//! A job's phases are the spec's training phases in order, each followed by its eval
//! step when the spec asks for one. Training phases run one after another; an eval
//! step runs once the phase it evaluates has succeeded, beside the next training phase;
//! a failed eval step is recorded (its phase `failed`) and training goes on.
//!
//! ```text
//! job:   pending ──first lease──▶ running ──every phase done──▶ succeeded
//!           │                       │  └──training task out of attempts──▶ failed
//!           └───────────cancel──────┴───────────────────────────▶ cancelled
//! task:  pending ──lease(epoch+1)──▶ leased ──complete──▶ succeeded
//!           ▲                          │ └──fail(fatal)──▶ failed
//!           └──lease lost / retryable──┘
//! ```

use std::fmt;

use outloud_core::results::TaskResults;
use outloud_core::spec::JobSpec;
pub use outloud_core::task::{Assignment, LeaseRef, Metrics, TaskId};
use outloud_core::task_spec::TaskSpec;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. The scheduler never reads a clock: callers pass it.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    Leased { worker: String, since: Millis },
    Succeeded { output: String },
    Failed { error: String },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    #[serde(flatten)]
    pub state: TaskState,
    /// Bumped by every lease; reports must name the current one.
    pub epoch: u64,
    /// Leases that ended without success.
    pub lost_leases: u32,
    /// The newest checkpoint reported: a new lease resumes from it.
    pub checkpoint: Option<String>,
    pub metrics: Metrics,
    /// The loss of the first report, kept to show how far training came.
    pub first_loss: Option<f64>,
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
            lost_leases: 0,
            checkpoint: None,
            metrics: Metrics::default(),
            first_loss: None,
            results: TaskResults::default(),
        }
    }

    pub fn holder(&self) -> Option<&str> {
        match &self.state {
            TaskState::Leased { worker, .. } => Some(worker),
            _ => None,
        }
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
pub struct Phase {
    pub name: String,
    pub state: RunState,
    pub tasks: Vec<Task>,
    /// The spec phase this trains, or evaluates.
    #[serde(default)]
    pub spec_phase: u32,
    /// An eval step: scores the final checkpoint of training phase `spec_phase`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evaluation: bool,
    /// What each of its tasks is given, resolved when the job was admitted.
    pub work: TaskSpec,
}

/// The name of the eval step after phase `phase` ('.' never appears in phase names).
pub fn eval_step_name(phase: &str) -> String {
    format!("{phase}.eval")
}

/// A job's phases: each spec phase, followed by its eval step when it has one, each with
/// its resolved task spec. Fails only for a spec that was not checked.
pub fn expand(job_id: &str, spec: &JobSpec) -> Result<Vec<Phase>, String> {
    let mut phases = Vec::new();
    for (index, phase) in spec.phases.iter().enumerate() {
        let at = |phases: &Vec<Phase>| phases.len() as u32;
        let work = TaskSpec::train(spec, index)?;
        let training = Phase::new(job_id, at(&phases), phase.name.clone(), phase.shards, work);
        phases.push(Phase {
            spec_phase: index as u32,
            ..training
        });
        if spec.evaluates_after(index) {
            let work = TaskSpec::evaluate(spec)?;
            let step = Phase::new(job_id, at(&phases), eval_step_name(&phase.name), 1, work);
            phases.push(Phase {
                spec_phase: index as u32,
                evaluation: true,
                ..step
            });
        }
    }
    Ok(phases)
}

impl Phase {
    /// Phase `index` of job `job`, with `shards` fresh pending tasks that do `work`.
    pub fn new(job: &str, index: u32, name: String, shards: u32, work: TaskSpec) -> Self {
        let tasks = (0..shards)
            .map(|shard| {
                Task::new(TaskId {
                    job: job.to_string(),
                    phase: index,
                    shard,
                })
            })
            .collect();
        Self {
            name,
            state: RunState::Pending,
            tasks,
            spec_phase: index,
            evaluation: false,
            work,
        }
    }

    /// The phase's metrics: sums over its tasks, the step of the slowest.
    pub fn metrics(&self) -> Metrics {
        let mut total = Metrics {
            step: u64::MAX,
            ..Metrics::default()
        };
        for task in &self.tasks {
            total.step = total.step.min(task.metrics.step);
            total.total_steps = total.total_steps.max(task.metrics.total_steps);
            total.tokens += task.metrics.tokens;
            total.words += task.metrics.words;
            total.items += task.metrics.items;
            total.total_items += task.metrics.total_items;
            total.loss += task.metrics.loss / self.tasks.len() as f64;
        }
        if self.tasks.is_empty() {
            total.step = 0;
        }
        total
    }

    pub fn first_loss(&self) -> Option<f64> {
        self.tasks.iter().find_map(|t| t.first_loss)
    }

    /// What its tasks reported, together.
    pub fn results(&self) -> TaskResults {
        let mut all = TaskResults::default();
        for task in &self.tasks {
            all.absorb(&task.results);
        }
        all
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
    pub phases: Vec<Phase>,
    /// Everything that happened to the job, oldest first.
    pub history: Vec<Event>,
}

impl Job {
    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.phases
            .get(id.phase as usize)?
            .tasks
            .get(id.shard as usize)
    }

    pub fn task_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        self.phases
            .get_mut(id.phase as usize)?
            .tasks
            .get_mut(id.shard as usize)
    }

    /// The job's phase that trains spec phase `spec_phase`.
    fn training(&self, spec_phase: u32) -> Option<&Phase> {
        self.phases
            .iter()
            .find(|p| !p.evaluation && p.spec_phase == spec_phase)
    }

    /// Whether phase `index` may start: a training phase once every training phase
    /// before it has succeeded, an eval step once the phase it evaluates has.
    pub fn is_startable(&self, index: usize) -> bool {
        let Some(phase) = self.phases.get(index) else {
            return false;
        };
        let succeeded = |p: &Phase| p.state == RunState::Succeeded;
        if phase.evaluation {
            return self.training(phase.spec_phase).is_some_and(succeeded);
        }
        self.phases
            .iter()
            .filter(|p| !p.evaluation && p.spec_phase < phase.spec_phase)
            .all(succeeded)
    }

    /// The checkpoint phase `index` reads: for an eval step, the final checkpoint of the
    /// phase it evaluates; for a training phase, the previous training phase's.
    pub fn input_checkpoint(&self, index: usize) -> Option<String> {
        let phase = self.phases.get(index)?;
        let source = if phase.evaluation {
            self.training(phase.spec_phase)?
        } else {
            self.training(phase.spec_phase.checked_sub(1)?)?
        };
        match &source.tasks.first()?.state {
            TaskState::Succeeded { output } if !output.is_empty() => Some(output.clone()),
            _ => None,
        }
    }

    /// Leases a task of phase `index` may lose before the job fails.
    pub fn max_attempts(&self, index: usize) -> u32 {
        let Some(phase) = self.phases.get(index) else {
            return 1;
        };
        match &self.spec.evaluation {
            Some(evaluation) if phase.evaluation => evaluation.max_attempts,
            _ => self.spec.phases[phase.spec_phase as usize].max_attempts,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub hostname: String,
    pub device: String,
    pub memory_bytes: u64,
    pub threads: u32,
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
}

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
    JobSucceeded,
    JobFailed {
        error: String,
    },
    JobCancelled,
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
    #[error("job `{0}` has already finished")]
    JobFinished(String),
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
