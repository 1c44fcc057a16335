//! A job as a graph of steps. Each step has a kind, explicit inputs (which step's
//! committed outputs or final checkpoint it reads) and one task per shard:
//!
//! ```text
//!                    ┌─▶ train language ─┬─▶ evaluate language
//! prepare (a shard ──┤                   └─▶ train vision-language ─┬─▶ train tasks ──▶ ...
//!  per data source)  │                                              └─▶ train tasks-long (from:)
//!                    └─▶ (every step that reads data or benchmarks)
//! ```
//!
//! A step starts once every step it reads from has succeeded (all of its shards); the
//! steps of different branches run at the same time when workers are free.

use std::collections::BTreeMap;

use outloud_core::results::TaskResults;
use outloud_core::spec::{GangSize, JobSpec, PhaseKind, Placement};
use outloud_core::storage::join_url;
use outloud_core::task::attempt_folder;
use outloud_core::task_spec::TaskSpec;
use serde::{Deserialize, Serialize};

use super::cost::DeviceTime;
use super::model::{Metrics, RunState, Task, TaskId};
use super::summary::StepTotals;

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// Materializes generated data sources and checks real ones: a shard per source.
    Prepare,
    /// Trains spec phase `phase` (phases 1, 2 and 4 alike).
    Train { phase: u32 },
    /// Scores the final checkpoint of spec phase `phase` on the job's benchmarks.
    Evaluate { phase: u32 },
    /// Captions unlabeled pictures for round `round` (1-based) of self-synthesis phase
    /// `phase`: a shard per slice of the pictures, each committing one JSONL file.
    Synthesize { phase: u32, round: u32 },
    /// Fine-tunes the final checkpoint of spec phase `phase` on GLUE: a task a shard.
    Finetune { phase: u32 },
}

/// What a step reads from another step (by index in the job's steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Every shard's committed output (prepared data).
    Outputs(u32),
    /// The final checkpoint of a training step: its tasks start from it (training) or
    /// score it (evaluation).
    Checkpoint(u32),
}

impl Input {
    pub fn step(self) -> usize {
        match self {
            Input::Outputs(step) | Input::Checkpoint(step) => step as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub kind: StepKind,
    pub state: RunState,
    pub inputs: Vec<Input>,
    pub tasks: Vec<Task>,
    /// Times the step was run: 1, plus one per `outloud retry`.
    pub attempts: u32,
    /// What each of its tasks is given, resolved when the job was admitted.
    pub work: TaskSpec,
    /// Figures over all of its tasks, in a summary that lists only some of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<StepTotals>,
    /// The run (`seeds`) the step belongs to, when the job has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Ranks its task trains on at once, when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangSize>,
    /// What its tasks need of a worker's device.
    #[serde(default, flatten)]
    pub placement: Placement,
}

impl Step {
    /// The folder the lease of `task` under `epoch` writes into (see
    /// [`outloud_core::task::attempt_folder`]).
    pub fn attempt_root(&self, task: &TaskId, epoch: u64) -> String {
        let folder = attempt_folder(task, &self.name, self.tasks.len() as u32, epoch);
        join_url(&self.work.storage, &folder)
    }

    /// Whether what the step's tasks commit must lie in their attempt's folder. Prepare
    /// tasks are the exception: they write data sources to shared, content-named places
    /// (`data/<source>-seed<n>...`) with atomic puts of the same bytes whoever writes.
    pub fn fences_outputs(&self) -> bool {
        !matches!(self.kind, StepKind::Prepare)
    }
}

/// The name of the eval step after phase `phase` ('.' never appears in phase names).
pub fn eval_step_name(phase: &str) -> String {
    format!("{phase}.eval")
}

/// The GLUE step after a phase.
pub fn glue_step_name(phase: &str) -> String {
    format!("{phase}.glue")
}

/// The names of round `round` of `rounds` of a self-synthesis phase: its synthesize
/// step and its training step. The last round's training step has the phase's name.
pub fn round_names(phase: &str, round: u32, rounds: u32) -> (String, String) {
    if rounds == 1 {
        return (format!("{phase}.synthesize"), phase.to_string());
    }
    let train = if round == rounds {
        phase.to_string()
    } else {
        format!("{phase}.r{round}")
    };
    (format!("{phase}.r{round}.synthesize"), train)
}

/// The name of the data preparation step.
pub const PREPARE: &str = "prepare";

/// A job's steps: `prepare` when it has data sources, then, for each run (one per
/// listed seed), each spec phase followed by its eval step when it has one. Fails only
/// for a spec that was not checked.
pub fn expand(job_id: &str, spec: &JobSpec) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let prepared = (!spec.data.is_empty()).then(|| {
        let work = TaskSpec::prepare(spec);
        let shards = spec.data.len() as u32;
        steps.push(Step::new(
            job_id,
            0,
            PREPARE,
            StepKind::Prepare,
            shards,
            work,
        ));
        Input::Outputs(0)
    });
    let runs = spec.runs();
    for seed in runs.iter().copied() {
        let first = steps.len();
        expand_run(job_id, &spec.seeded(seed), prepared, &mut steps)?;
        if runs.len() > 1 {
            for step in &mut steps[first..] {
                step.name = run_step_name(seed, &step.name);
                step.seed = seed;
            }
        }
    }
    Ok(steps)
}

/// A step's name in the run of `seed`, when a job has several runs: `seed3/tasks.eval`.
pub fn run_step_name(seed: Option<u64>, name: &str) -> String {
    match seed {
        Some(seed) => format!("seed{seed}/{name}"),
        None => name.to_string(),
    }
}

/// The steps of one run of the phases, appended to `steps`.
fn expand_run(
    job_id: &str,
    spec: &JobSpec,
    prepared: Option<Input>,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    // Where each phase's (last) training step will be: `from` may name a later phase.
    let mut at = BTreeMap::new();
    let mut next = steps.len() as u32;
    for (index, phase) in spec.phases.iter().enumerate() {
        // A self-synthesis phase: a synthesize and a training step per round.
        let own = match synthesis_rounds(spec, index) {
            0 => 1,
            rounds => 2 * rounds,
        };
        at.insert(phase.name.as_str(), next + own - 1);
        next += own + u32::from(spec.evaluates_after(index));
    }
    for (index, phase) in spec.phases.iter().enumerate() {
        let mut from = spec.starts_from(index).map(|name| at[name]);
        let rounds = synthesis_rounds(spec, index);
        for round in 1..=rounds {
            from = Some(expand_round(
                job_id, spec, index, round, from, prepared, steps,
            )?);
        }
        if rounds > 0 {
            continue; // the last round's training step is the phase's
        }
        let train = at[phase.name.as_str()];
        let mut inputs: Vec<Input> = prepared.into_iter().collect();
        inputs.extend(from.map(Input::Checkpoint));
        let kind = StepKind::Train {
            phase: index as u32,
        };
        let work = TaskSpec::train(spec, index)?;
        let step = Step::new(job_id, train, &phase.name, kind, phase.shards, work);
        steps.push(Step {
            inputs,
            gang: phase.gang(),
            placement: phase.placement(),
            ..step
        });
        push_evaluation(job_id, spec, index, train, prepared, steps)?;
        push_glue(job_id, spec, index, train, steps)?;
    }
    Ok(())
}

/// Rounds of synthesize-then-train phase `index` expands into (0: not self-synthesis,
/// or its control, which is one plain training step).
fn synthesis_rounds(spec: &JobSpec, index: usize) -> u32 {
    let phase = &spec.phases[index];
    match phase.synthesis {
        Some(_) if phase.kind == PhaseKind::SelfSynthesis => phase.rounds,
        _ => 0,
    }
}

/// Round `round` of self-synthesis phase `index`: a synthesize step captioning with
/// checkpoint `from`, then a training step from the same checkpoint on those captions
/// mixed with the phase's other data. Answers the training step's index; the last round
/// also gets the phase's eval step.
fn expand_round(
    job_id: &str,
    spec: &JobSpec,
    index: usize,
    round: u32,
    from: Option<u32>,
    prepared: Option<Input>,
    steps: &mut Vec<Step>,
) -> Result<u32, String> {
    let phase = &spec.phases[index];
    let synthesis = phase.synthesis.as_ref().ok_or("no synthesis block")?;
    let (synthesize_name, train_name) = round_names(&phase.name, round, phase.rounds);
    let mut inputs: Vec<Input> = prepared.into_iter().collect();
    inputs.extend(from.map(Input::Checkpoint));
    let synthesize = steps.len() as u32;
    let kind = StepKind::Synthesize {
        phase: index as u32,
        round,
    };
    let work = TaskSpec::synthesize(spec, index, round)?;
    let step = Step::new(
        job_id,
        synthesize,
        &synthesize_name,
        kind,
        synthesis.shards,
        work,
    );
    steps.push(Step {
        inputs: inputs.clone(),
        placement: phase.placement(),
        ..step
    });
    let train = steps.len() as u32;
    inputs.push(Input::Outputs(synthesize));
    let kind = StepKind::Train {
        phase: index as u32,
    };
    let work = TaskSpec::train(spec, index)?;
    let step = Step::new(job_id, train, &train_name, kind, 1, work);
    steps.push(Step {
        inputs,
        gang: phase.gang(),
        placement: phase.placement(),
        ..step
    });
    if round == phase.rounds {
        push_evaluation(job_id, spec, index, train, prepared, steps)?;
        push_glue(job_id, spec, index, train, steps)?;
    }
    Ok(train)
}

/// The GLUE step after training step `train` of phase `index`, when the spec has one
/// there: a shard per task, each from the phase's final checkpoint.
fn push_glue(
    job_id: &str,
    spec: &JobSpec,
    index: usize,
    train: u32,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    if !spec.glue_after(index) {
        return Ok(());
    }
    let kind = StepKind::Finetune {
        phase: index as u32,
    };
    let work = TaskSpec::finetune(spec)?;
    let shards = match &work.work {
        outloud_core::task_spec::Work::Finetune(f) => f.tasks.len() as u32,
        _ => 1,
    };
    let name = glue_step_name(&spec.phases[index].name);
    let step = Step::new(job_id, steps.len() as u32, &name, kind, shards, work);
    steps.push(Step {
        inputs: vec![Input::Checkpoint(train)],
        ..step
    });
    Ok(())
}

/// The eval step after training step `train` of phase `index`, when the spec has one.
fn push_evaluation(
    job_id: &str,
    spec: &JobSpec,
    index: usize,
    train: u32,
    prepared: Option<Input>,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    if !spec.evaluates_after(index) {
        return Ok(());
    }
    let kind = StepKind::Evaluate {
        phase: index as u32,
    };
    let work = TaskSpec::evaluate(spec)?;
    let name = eval_step_name(&spec.phases[index].name);
    let step = Step::new(job_id, train + 1, &name, kind, 1, work);
    let mut inputs: Vec<Input> = prepared.into_iter().collect();
    inputs.push(Input::Checkpoint(train));
    steps.push(Step { inputs, ..step });
    Ok(())
}

impl Step {
    /// Step `index` of job `job`, with `shards` fresh pending tasks that do `work`.
    pub fn new(
        job: &str,
        index: u32,
        name: &str,
        kind: StepKind,
        shards: u32,
        work: TaskSpec,
    ) -> Self {
        let tasks = (0..shards)
            .map(|shard| {
                Task::new(TaskId {
                    job: job.to_string(),
                    step: index,
                    shard,
                })
            })
            .collect();
        Self {
            name: name.into(),
            kind,
            state: RunState::Pending,
            inputs: Vec::new(),
            tasks,
            attempts: 1,
            work,
            totals: None,
            seed: None,
            gang: None,
            placement: Placement::default(),
        }
    }

    pub fn is_evaluation(&self) -> bool {
        matches!(self.kind, StepKind::Evaluate { .. })
    }

    /// An eval or GLUE step: it measures a checkpoint, and nothing trains from it.
    pub fn only_measures(&self) -> bool {
        matches!(
            self.kind,
            StepKind::Evaluate { .. } | StepKind::Finetune { .. }
        )
    }

    /// The step's metrics: sums over its tasks, the step of the slowest.
    pub fn metrics(&self) -> Metrics {
        if let Some(totals) = &self.totals {
            return totals.metrics;
        }
        let mut total = Metrics {
            step: u64::MAX,
            ..Metrics::default()
        };
        for task in &self.tasks {
            total.step = total.step.min(task.metrics.step);
            total.total_steps = total.total_steps.max(task.metrics.total_steps);
            total.tokens += task.metrics.tokens;
            total.words += task.metrics.words;
            total.synthetic_words += task.metrics.synthetic_words;
            // Shards of one step share a lineage: its distinct words are the most any read.
            total.unique_words = total.unique_words.max(task.metrics.unique_words);
            total.items += task.metrics.items;
            total.total_items += task.metrics.total_items;
            total.allreduce_seconds += task.metrics.allreduce_seconds;
            total.allreduce_bytes += task.metrics.allreduce_bytes;
            total.loss += task.metrics.loss / self.tasks.len() as f64;
        }
        if self.tasks.is_empty() {
            total.step = 0;
        }
        total
    }

    /// The cost ledger of all of its tasks (every lease of each).
    pub fn cost(&self) -> DeviceTime {
        if let Some(totals) = &self.totals {
            return totals.cost.clone();
        }
        let mut time = DeviceTime::default();
        for task in &self.tasks {
            time.add(&task.cost);
        }
        time
    }

    pub fn first_loss(&self) -> Option<f64> {
        if let Some(totals) = &self.totals {
            return totals.first_loss;
        }
        self.tasks.iter().find_map(|t| t.first_loss)
    }

    /// What its tasks reported, together.
    pub fn results(&self) -> TaskResults {
        if let Some(totals) = &self.totals {
            return totals.results.clone();
        }
        let mut all = TaskResults::default();
        for task in &self.tasks {
            all.absorb(&task.results);
        }
        all
    }

    /// Back to pending for another run. Shards that succeeded keep their output; the
    /// others start afresh under the epochs they had, so reports from the run before
    /// stay refused. Answers the tasks that will run again.
    pub(super) fn reset(&mut self) -> Vec<TaskId> {
        self.state = RunState::Pending;
        self.attempts += 1;
        let mut again = Vec::new();
        for task in &mut self.tasks {
            if task.run_state() == RunState::Succeeded {
                continue;
            }
            let (epoch, last_epoch) = (task.epoch, task.last_epoch);
            *task = Task::new(task.id.clone());
            // Epochs never come back, a dropped duplicate's included.
            (task.epoch, task.last_epoch) = (epoch, last_epoch);
            again.push(task.id.clone());
        }
        again
    }
}
