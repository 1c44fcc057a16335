//! How tasks' outcomes move phases and jobs along: a failed task fails its job (or, for
//! an eval step, only its phase), a finished phase starts what may now start, and a job
//! ends when every phase has finished or it is cancelled.

use super::*;

impl Scheduler {
    pub(super) fn fail_task(&mut self, lease: &LeaseRef, error: String, now: Millis) {
        if let Some(task) = self
            .jobs
            .get_mut(&lease.task.job)
            .and_then(|j| j.task_mut(&lease.task))
        {
            task.state = TaskState::Failed {
                error: error.clone(),
            };
            self.changes.tasks.insert(lease.task.clone());
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
        let phase = &mut job.phases[lease.task.phase as usize];
        if phase.evaluation {
            // A failed evaluation is reported, never a reason to stop training.
            phase.state = RunState::Failed;
            self.changes.jobs.insert(lease.task.job.clone());
            self.finish_if_done(&lease.task.job, now);
            return;
        }
        let message = format!("task {} failed: {error}", lease.task);
        self.finish_job(&lease.task.job, RunState::Failed, Some(message), now);
    }

    /// Succeeds the job once every phase has finished (training phases can only have
    /// succeeded by then: a failed one fails the job at once).
    fn finish_if_done(&mut self, job_id: &str, now: Millis) -> bool {
        let done = self
            .jobs
            .get(job_id)
            .is_some_and(|job| job.phases.iter().all(|p| p.state.is_finished()));
        if done {
            self.finish_job(job_id, RunState::Succeeded, None, now);
        }
        done
    }

    /// After a task succeeded: finish its phase when all its tasks have, then start every
    /// phase that may now start, or finish the job when every phase has finished.
    pub(super) fn advance(&mut self, task: &TaskId, now: Millis) {
        let Some(job) = self.jobs.get_mut(&task.job) else {
            return;
        };
        let phase = &mut job.phases[task.phase as usize];
        if !phase
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Succeeded { .. }))
        {
            return;
        }
        phase.state = RunState::Succeeded;
        let name = phase.name.clone();
        self.changes.jobs.insert(task.job.clone());
        self.record(&task.job, now, EventKind::PhaseSucceeded { phase: name });
        if self.finish_if_done(&task.job, now) {
            return;
        }
        let Some(job) = self.jobs.get(&task.job) else {
            return;
        };
        let startable: Vec<usize> = (0..job.phases.len())
            .filter(|&p| job.phases[p].state == RunState::Pending && job.is_startable(p))
            .collect();
        for phase in startable {
            self.start_phase(&task.job, phase, now);
        }
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
        for phase in &mut job.phases {
            if !phase.state.is_finished() {
                phase.state = if state == RunState::Failed {
                    RunState::Failed
                } else {
                    RunState::Cancelled
                };
            }
            for task in &mut phase.tasks {
                if let TaskState::Leased { worker, .. } = &task.state {
                    released.push((worker.clone(), task.id.clone()));
                }
                if matches!(task.state, TaskState::Pending | TaskState::Leased { .. }) {
                    task.state = TaskState::Cancelled;
                    self.changes.tasks.insert(task.id.clone());
                }
            }
        }
        self.changes.jobs.insert(job_id.into());
        for (worker, task) in released {
            self.release(&worker, &task);
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
}
