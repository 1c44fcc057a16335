//! Duplicate attempts for stragglers (MapReduce's backup tasks, Spark's speculation).
//! Once a synthesize step has no shard left to hand out, a shard that has run much
//! longer than its step's finished shards took may get a second attempt on an idle
//! worker, under an epoch of its own and so in a folder of its own. Both attempts
//! decode the same captions (sampling is seeded by shard), the first commit wins, and
//! the other lease is ended: its commit is refused and its worker is told to stop at its
//! next heartbeat. Losing either attempt leaves the other running.
//!
//! Only synthesize shards get duplicates: they are short, independent and checkpoint
//! nothing, so a second attempt costs one idle worker for a while and nothing else.

use super::*;

/// A shard straggles once it has run this many times the median of its step's
/// finished shards...
pub const STRAGGLER_FACTOR: u64 = 2;
/// ...and at least this long: a short shard is not worth a second worker.
pub const STRAGGLER_MIN_MS: Millis = 2_000;

impl Scheduler {
    /// A duplicate attempt of the longest-running straggler, for `worker_id` when it
    /// holds nothing.
    pub(super) fn lease_duplicate(&mut self, worker_id: &str, now: Millis) -> Option<Assignment> {
        if !self.workers.get(worker_id)?.leases.is_empty() {
            return None;
        }
        let id = self.straggler(worker_id, now)?;
        let job = self.jobs.get_mut(&id.job)?;
        let task = job.task_mut(&id)?;
        let epoch = task.next_epoch();
        let TaskState::Leased {
            worker: straggler,
            duplicate,
            ..
        } = &mut task.state
        else {
            return None;
        };
        *duplicate = Some(Duplicate {
            worker: worker_id.into(),
            epoch,
            since: now,
        });
        let straggler = straggler.clone();
        let assignment = job.assignment(&id, epoch, 0, 1);
        self.hold(worker_id, &id, now);
        let event = EventKind::Duplicated {
            task: id.clone(),
            worker: worker_id.into(),
            epoch,
            straggler,
        };
        self.record(&id.job, now, event);
        Some(assignment)
    }

    /// The synthesize shard, not held by `worker_id`, that has straggled longest: its
    /// step has nothing left to hand out and it has run past the step's threshold.
    fn straggler(&self, worker_id: &str, now: Millis) -> Option<TaskId> {
        let steps = self
            .jobs
            .values()
            .filter(|job| job.state == RunState::Running)
            .flat_map(|job| job.steps.iter())
            .filter(|step| step.state == RunState::Running)
            .filter(|step| matches!(step.kind, StepKind::Synthesize { .. }));
        steps
            .filter_map(|step| {
                let threshold = straggling_after(step)?;
                step.tasks
                    .iter()
                    .filter_map(|task| match &task.state {
                        TaskState::Leased {
                            worker,
                            since,
                            duplicate: None,
                            ..
                        } if worker != worker_id && now.saturating_sub(*since) > threshold => {
                            Some((*since, task.id.clone()))
                        }
                        _ => None,
                    })
                    .min()
            })
            .min()
            .map(|(_, id)| id)
    }
}

/// How long a shard of `step` may run before it straggles: `None` while some shard
/// is still pending or none has finished to compare with.
fn straggling_after(step: &Step) -> Option<Millis> {
    if step.tasks.iter().any(|t| t.state == TaskState::Pending) {
        return None;
    }
    let mut took: Vec<Millis> = step.tasks.iter().filter_map(|t| t.took_ms).collect();
    if took.is_empty() {
        return None;
    }
    took.sort_unstable();
    let median = took[took.len() / 2];
    Some(
        median
            .saturating_mul(STRAGGLER_FACTOR)
            .max(STRAGGLER_MIN_MS),
    )
}
