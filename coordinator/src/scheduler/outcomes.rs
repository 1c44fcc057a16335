//! How tasks' outcomes move steps and jobs along: a failed task fails its job (or, for
//! an eval step, only its step), a finished step starts what may now start, and a job
//! ends when every step has finished or it is cancelled. `retry` runs failed steps
//! again, with what reads from them.

use super::*;

impl Scheduler {
    pub(super) fn fail_task(&mut self, lease: &LeaseRef, error: String, now: Millis) {
        let mut holders = Vec::new();
        if let Some(task) = self
            .jobs
            .get_mut(&lease.task.job)
            .and_then(|j| j.task_mut(&lease.task))
        {
            holders = task.holders();
            task.state = TaskState::Failed {
                error: error.clone(),
            };
            self.changes.tasks.insert(lease.task.clone());
        }
        // A failed task is held by nobody: left in its worker's leases, a later expiry
        // would revive it (found by the property tests).
        for worker in holders {
            self.release(&worker, &lease.task, now);
        }
        let what = EventKind::TaskFailed {
            task: lease.task.clone(),
            epoch: lease.epoch,
            error: error.clone(),
        };
        self.record(&lease.task.job, now, what);
        let Some(job) = self.jobs.get_mut(&lease.task.job) else {
            return;
        };
        let step = &mut job.steps[lease.task.step as usize];
        if step.only_measures() {
            // A failed evaluation is reported, never a reason to stop training.
            step.state = RunState::Failed;
            self.changes.jobs.insert(lease.task.job.clone());
            self.finish_if_done(&lease.task.job, now);
            return;
        }
        step.state = RunState::Failed;
        let message = format!("task {} failed: {error}", lease.task);
        self.finish_job(&lease.task.job, RunState::Failed, Some(message), now);
    }

    /// Succeeds the job once every step has finished (training steps can only have
    /// succeeded by then: a failed one fails the job at once).
    fn finish_if_done(&mut self, job_id: &str, now: Millis) -> bool {
        let done = self
            .jobs
            .get(job_id)
            .is_some_and(|job| job.steps.iter().all(|p| p.state.is_finished()));
        if done {
            self.finish_job(job_id, RunState::Succeeded, None, now);
        }
        done
    }

    /// After a task succeeded: finish its step when all its tasks have, then start every
    /// step that may now start, or finish the job when every step has finished.
    pub(super) fn advance(&mut self, task: &TaskId, now: Millis) {
        let Some(job) = self.jobs.get_mut(&task.job) else {
            return;
        };
        let step = &mut job.steps[task.step as usize];
        if !step
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Succeeded { .. }))
        {
            return;
        }
        step.state = RunState::Succeeded;
        let name = step.name.clone();
        self.changes.jobs.insert(task.job.clone());
        self.record(&task.job, now, EventKind::PhaseSucceeded { phase: name });
        if self.finish_if_done(&task.job, now) {
            return;
        }
        self.start_ready(&task.job, now);
    }

    /// Ends the job; tasks still pending or leased are cancelled, and their workers are
    /// told to stop at their next heartbeat.
    pub(super) fn finish_job(
        &mut self,
        job_id: &str,
        state: RunState,
        error: Option<String>,
        now: Millis,
    ) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        job.state = state;
        job.finished_at = Some(now);
        job.error = error.clone();
        let mut released = Vec::new();
        for step in &mut job.steps {
            if !step.state.is_finished() {
                step.state = RunState::Cancelled;
            }
            for task in &mut step.tasks {
                for worker in task.holders() {
                    released.push((worker, task.id.clone()));
                }
                if matches!(task.state, TaskState::Pending | TaskState::Leased { .. }) {
                    task.state = TaskState::Cancelled;
                    self.changes.tasks.insert(task.id.clone());
                }
            }
        }
        self.changes.jobs.insert(job_id.into());
        for (worker, task) in released {
            self.release(&worker, &task, now);
        }
        let what = match state {
            RunState::Succeeded => EventKind::JobSucceeded,
            RunState::Cancelled => EventKind::JobCancelled,
            _ => EventKind::JobFailed {
                error: error.unwrap_or_default(),
            },
        };
        self.record(job_id, now, what);
    }

    pub fn cancel(&mut self, job_id: &str, now: Millis) -> Result<(), SchedulerError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        if job.state.is_finished() {
            return Err(SchedulerError::JobFinished(job_id.into()));
        }
        self.finish_job(job_id, RunState::Cancelled, None, now);
        Ok(())
    }

    /// Runs step `step` again (every failed step when none is named), with every step
    /// that reads from it and what the failure cancelled; what succeeded is kept, shards
    /// of a retried step included. Answers the steps that will run again.
    pub fn retry(
        &mut self,
        job_id: &str,
        step: Option<&str>,
        now: Millis,
    ) -> Result<Vec<String>, SchedulerError> {
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        let roots: Vec<usize> = match step {
            Some(name) => {
                let index = job
                    .steps
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or_else(|| SchedulerError::UnknownStep(name.into()))?;
                let state = job.steps[index].state;
                if !matches!(state, RunState::Failed | RunState::Cancelled) {
                    return Err(SchedulerError::NotRetryable(format!(
                        "step `{name}` is {state}; only failed or cancelled steps run again"
                    )));
                }
                vec![index]
            }
            None => (0..job.steps.len())
                .filter(|&s| job.steps[s].state == RunState::Failed)
                .collect(),
        };
        if roots.is_empty() {
            return Err(SchedulerError::NotRetryable(format!(
                "job `{job_id}` has no failed step"
            )));
        }
        let mut again: Vec<usize> = roots.clone();
        for &root in &roots {
            again.extend(job.dependants(root));
        }
        if job.state == RunState::Failed {
            // What the failure cancelled runs on as well.
            again.extend(
                (0..job.steps.len()).filter(|&s| job.steps[s].state == RunState::Cancelled),
            );
        }
        again.sort_unstable();
        again.dedup();
        for &index in &again {
            let reset = job.steps[index].reset();
            self.changes.tasks.extend(reset);
        }
        if job.state.is_finished() {
            job.state = RunState::Running;
            job.finished_at = None;
            job.error = None;
        }
        self.changes.jobs.insert(job_id.into());
        let names: Vec<String> = again.iter().map(|&s| job.steps[s].name.clone()).collect();
        let what = EventKind::Retried {
            steps: names.clone(),
        };
        self.record(job_id, now, what);
        self.start_ready(job_id, now);
        Ok(names)
    }
}
