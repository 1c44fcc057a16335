//! Leases that end without success: given back, failed as retryable, or taken from a
//! worker silent past the lease timeout; and workers long departed, forgotten.

use super::*;

impl Scheduler {
    /// The lease ends without success: the task is leased again unless the loss
    /// `counts` and the task is out of attempts, in which case the job fails.
    pub(super) fn lose_lease(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        reason: String,
        counts: bool,
        now: Millis,
    ) {
        self.release(worker_id, &lease.task, now);
        let what = EventKind::LeaseLost {
            task: lease.task.clone(),
            worker: worker_id.into(),
            epoch: lease.epoch,
            reason: reason.clone(),
        };
        self.record(&lease.task.job, now, what);
        let Some(job) = self.jobs.get_mut(&lease.task.job) else {
            return;
        };
        let max_attempts = job.max_attempts(lease.task.step as usize);
        let Some(task) = job.task_mut(&lease.task) else {
            return;
        };
        self.changes.tasks.insert(lease.task.clone());
        if task.end_one_of_two(lease.epoch) {
            return; // the other attempt goes on
        }
        // A gang is revoked whole: every other rank's lease ends with this one.
        let others: Vec<String> = task
            .holders()
            .into_iter()
            .filter(|w| w != worker_id)
            .collect();
        for other in others {
            self.release(&other, &lease.task, now);
            let what = EventKind::LeaseLost {
                task: lease.task.clone(),
                worker: other,
                epoch: lease.epoch,
                reason: format!("its gang was revoked: {worker_id} lost its rank"),
            };
            self.record(&lease.task.job, now, what);
        }
        let Some(task) = self
            .jobs
            .get_mut(&lease.task.job)
            .and_then(|job| job.task_mut(&lease.task))
        else {
            return;
        };
        task.lost_leases += u32::from(counts);
        if task.lost_leases >= max_attempts {
            let error = format!("lost {} leases, the last: {reason}", task.lost_leases);
            self.fail_task(lease, error, now);
        } else {
            task.state = TaskState::Pending;
            self.ready.push_back(lease.task.clone());
        }
    }

    /// Takes the leases of every worker silent for longer than the lease timeout.
    pub fn expire(&mut self, now: Millis) -> Vec<LeaseRef> {
        let timeout = self.config.lease_timeout_ms;
        let silent: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.alive && now.saturating_sub(w.last_seen) > timeout)
            .map(|w| w.id.clone())
            .collect();
        let mut lost = Vec::new();
        for worker_id in silent {
            let Some(worker) = self.workers.get_mut(&worker_id) else {
                continue;
            };
            worker.alive = false;
            let tasks = worker.leases.clone();
            self.changes.workers.insert(worker_id.clone());
            for task in tasks {
                let Some(epoch) = self
                    .jobs
                    .get(&task.job)
                    .and_then(|j| j.task(&task))
                    .and_then(|t| t.lease_of(&worker_id))
                else {
                    continue;
                };
                let lease = LeaseRef { task, epoch };
                let reason = format!("worker {worker_id} stopped heartbeating");
                self.lose_lease(&worker_id, &lease, reason, true, now);
                lost.push(lease);
            }
        }
        self.forget_departed(now);
        lost
    }

    /// Forgets workers silent for [`FORGET_AFTER_TIMEOUTS`] lease timeouts that hold
    /// nothing, so the worker table does not grow with every pod that ever ran. One that
    /// comes back is told it is unknown, and registers anew when restarted.
    fn forget_departed(&mut self, now: Millis) {
        let after = self
            .config
            .lease_timeout_ms
            .saturating_mul(FORGET_AFTER_TIMEOUTS);
        let departed: Vec<String> = self
            .workers
            .values()
            .filter(|w| !w.alive && w.leases.is_empty() && now.saturating_sub(w.last_seen) > after)
            .map(|w| w.id.clone())
            .collect();
        for id in departed {
            self.workers.remove(&id);
            // A changed worker that is no longer there is deleted from the store.
            self.changes.workers.insert(id);
        }
    }
}
