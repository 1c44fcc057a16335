//! Jobs as answers may carry them: a job with 20,000 tasks and its whole history would
//! outgrow what any client decodes, so [`Job::summarised`] keeps the tasks worth looking
//! at (running or failed first) and the newest events, and says what it left out. Each
//! step keeps its totals over every task, so its progress and results stay exact.

use std::collections::BTreeMap;

use outloud_core::results::TaskResults;
use serde::{Deserialize, Serialize};

use super::cost::DeviceTime;
use super::model::{Job, Metrics, RunState};
use super::steps::Step;

/// A step's figures over all of its tasks, kept when its task list was cut short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTotals {
    pub tasks: u32,
    /// Tasks per state, all of them.
    pub states: BTreeMap<RunState, u32>,
    pub metrics: Metrics,
    pub first_loss: Option<f64>,
    pub results: TaskResults,
    /// The cost ledger of all of its tasks.
    #[serde(default)]
    pub cost: DeviceTime,
}

impl StepTotals {
    fn of(step: &Step) -> Self {
        let mut states = BTreeMap::new();
        for task in &step.tasks {
            *states.entry(task.run_state()).or_insert(0) += 1;
        }
        Self {
            tasks: step.tasks.len() as u32,
            states,
            metrics: step.metrics(),
            first_loss: step.first_loss(),
            results: step.results(),
            cost: step.cost(),
        }
    }
}

impl Job {
    /// This job with at most `tasks_per_step` tasks a step (those not succeeded first,
    /// then by shard) and its newest `history_tail` events. Steps cut short carry their
    /// [`StepTotals`]; `history_omitted` counts the events left out.
    pub fn summarised(&self, tasks_per_step: usize, history_tail: usize) -> Job {
        let mut job = Job {
            steps: Vec::with_capacity(self.steps.len()),
            history: Vec::new(),
            ..self.shallow()
        };
        for step in &self.steps {
            if step.tasks.len() <= tasks_per_step {
                job.steps.push(step.clone());
                continue;
            }
            let mut kept: Vec<_> = step.tasks.iter().collect();
            kept.sort_by_key(|t| (t.run_state() == RunState::Succeeded, t.id.shard));
            kept.truncate(tasks_per_step);
            kept.sort_by_key(|t| t.id.shard);
            job.steps.push(Step {
                tasks: kept.into_iter().cloned().collect(),
                totals: Some(StepTotals::of(step)),
                ..step.without_tasks()
            });
        }
        let skip = self.history.len().saturating_sub(history_tail);
        job.history = self.history[skip..].to_vec();
        job.history_omitted = self.history_omitted + skip as u64;
        job
    }

    /// Everything but the steps and the history.
    fn shallow(&self) -> Job {
        Job {
            id: self.id.clone(),
            spec: self.spec.clone(),
            state: self.state,
            submitted_at: self.submitted_at,
            finished_at: self.finished_at,
            error: self.error.clone(),
            steps: Vec::new(),
            history: Vec::new(),
            history_omitted: self.history_omitted,
        }
    }
}

impl Step {
    fn without_tasks(&self) -> Step {
        Step {
            name: self.name.clone(),
            kind: self.kind,
            state: self.state,
            inputs: self.inputs.clone(),
            tasks: Vec::new(),
            attempts: self.attempts,
            work: self.work.clone(),
            totals: self.totals.clone(),
            seed: self.seed,
            gang: self.gang,
            placement: self.placement,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn a_huge_job_summarises_to_what_matters_with_exact_totals() {
        let mut s = Scheduler::new(SchedulerConfig {
            lease_timeout_ms: 1_000,
            instance: 0,
        });
        let yaml = "name: big\nstorage: /x\nphases: [{name: a, kind: noop, shards: 5000}]\n";
        let job = s
            .submit(outloud_core::spec::parse(yaml, "b.yaml").unwrap(), 0)
            .unwrap();
        let w = s.register(WorkerInfo::for_tests("h"), 0);
        for _ in 0..3_000 {
            let a = s.lease(&w, 1).unwrap().unwrap();
            let output = format!("{}/out", a.output_root);
            s.complete(
                &w,
                &a.lease,
                Metrics::default(),
                output,
                Default::default(),
                1,
            )
            .unwrap();
        }
        let running = s.lease(&w, 2).unwrap().unwrap();
        let full = s.job(&job).unwrap();
        let small = full.summarised(10, 50);
        let step = &small.steps[0];
        assert_eq!(step.tasks.len(), 10);
        assert!(
            step.tasks.iter().any(|t| t.id == running.lease.task),
            "the running task is among those kept"
        );
        let totals = step.totals.as_ref().unwrap();
        assert_eq!(totals.tasks, 5_000);
        assert_eq!(totals.states[&RunState::Succeeded], 3_000);
        assert_eq!(totals.states[&RunState::Running], 1);
        assert_eq!(step.metrics(), full.steps[0].metrics());
        assert_eq!(small.history.len(), 50);
        assert_eq!(small.history_omitted as usize, full.history.len() - 50);
        assert_eq!(small.history.last(), full.history.last());
        let size = serde_json::to_vec(&small).unwrap().len();
        assert!(size < 64 * 1024, "{size} bytes");
    }
}
