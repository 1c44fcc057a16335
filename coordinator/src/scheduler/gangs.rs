//! Gangs and placement. A step whose phase trains on several ranks (`world_size`, or
//! `min_world_size`..`max_world_size`) has its task leased to a gang: every rank at once,
//! to workers that are idle (alive, seen within a lease timeout, holding nothing) and of
//! the same device kind, under one epoch, or to nobody: never half a gang holding
//! devices. The worker whose poll formed the gang is rank 0; the others are handed their
//! rank at their next poll. Losing any rank revokes the whole gang (see `expiry`), and
//! the next grant is under a new epoch. Below its largest size a gang waits
//! `gang_grace_ms` for more workers, then starts with what it has if that is at least its
//! smallest; while it waits it holds nothing and its task says why.
//!
//! Placement: a step may need a device kind (`device: cpu | cuda`); a worker of another
//! kind is never given its tasks.
//!
//! Rendezvous: each rank of a granted gang publishes a payload (its listener's address,
//! or NCCL's unique id from rank 0) and hears every rank's once all have published. No
//! extra service and no fixed ports: the coordinator every worker already reaches relays
//! them, under the lease's epoch, so a revoked gang's ranks can never meet a new one's.

use outloud_core::spec::{DeviceKind, GangSize, Placement};

use super::*;

/// How recently a worker must have polled to be counted idle for a gang.
pub const IDLE_WITHIN_MS: u64 = 2_000;

/// A gang's rendezvous: each rank's payload once published, under the lease's epoch.
#[derive(Debug, Clone)]
pub(super) struct Meeting {
    epoch: u64,
    payloads: Vec<Option<Vec<u8>>>,
}

impl Scheduler {
    /// Records `payload` as `worker_id`'s for its gang's current lease; every rank's
    /// payload, in rank order, once all have published, else `None`. A stale lease is
    /// refused: its gang was revoked.
    pub fn rendezvous(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        payload: Vec<u8>,
        now: Millis,
    ) -> Result<Option<Vec<Vec<u8>>>, SchedulerError> {
        let task = self.check_lease(worker_id, lease)?;
        let (rank, world) = (task.rank_of(worker_id), task.world_size() as usize);
        let rank = rank.ok_or_else(|| SchedulerError::StaleLease {
            task: lease.task.to_string(),
            epoch: lease.epoch,
            worker: worker_id.into(),
        })? as usize;
        self.touch(worker_id, now)?;
        // Meetings of leases that ended meanwhile go: they can never complete.
        let jobs = &self.jobs;
        self.meetings.retain(|id, meeting| {
            jobs.get(&id.job)
                .and_then(|job| job.task(id))
                .is_some_and(|t| t.epoch == meeting.epoch && t.world_size() > 1)
        });
        // What is left is this lease's meeting, if any rank has published yet.
        let meeting = self.meetings.entry(lease.task.clone()).or_insert(Meeting {
            epoch: lease.epoch,
            payloads: vec![None; world],
        });
        meeting.payloads[rank] = Some(payload);
        Ok(meeting.payloads.iter().cloned().collect())
    }

    /// What task `id`'s step needs of a worker.
    fn placement_of(&self, id: &TaskId) -> Placement {
        self.jobs
            .get(&id.job)
            .and_then(|job| job.steps.get(id.step as usize))
            .map(|step| step.placement)
            .unwrap_or_default()
    }

    /// Whether `worker_id` may take task `id`: the device its step needs.
    pub(super) fn placeable(&self, worker_id: &str, id: &TaskId) -> bool {
        let placement = self.placement_of(id);
        self.workers
            .get(worker_id)
            .is_some_and(|w| placement.admits(&w.info.device, w.info.device_memory_bytes))
    }

    /// Says on a task that no worker its step admits has asked for it, until one does.
    pub(super) fn note_unplaced(&mut self, id: &TaskId) {
        let placement = self.placement_of(id);
        let Some(task) = self.jobs.get_mut(&id.job).and_then(|job| job.task_mut(id)) else {
            return;
        };
        if task.waiting.is_none() {
            task.waiting = Some(format!(
                "waiting for {}: only other workers have asked",
                placement.wanted()
            ));
            self.changes.tasks.insert(id.clone());
        }
    }

    /// The gang task `id` trains on, when its step has one.
    pub(super) fn gang_of(&self, id: &TaskId) -> Option<GangSize> {
        self.jobs.get(&id.job)?.steps.get(id.step as usize)?.gang
    }

    /// Idle workers of `kind` that `placement` admits besides `requester`, in id order:
    /// holding nothing and asking for work within [`IDLE_WITHIN_MS`] (an idle worker
    /// polls several times a second; one silent longer, or that has not asked since its
    /// last lease ended, is busy elsewhere, stopped or dead, and would leave the gang
    /// waiting on it).
    fn idle_workers(
        &self,
        requester: &str,
        kind: DeviceKind,
        placement: Placement,
        now: Millis,
    ) -> Vec<String> {
        let within = IDLE_WITHIN_MS.min(self.config.lease_timeout_ms);
        self.workers
            .values()
            .filter(|w| w.id != requester && w.alive && w.leases.is_empty())
            .filter(|w| {
                w.asked_at
                    .is_some_and(|at| now.saturating_sub(at) <= within)
            })
            .filter(|w| DeviceKind::of(&w.info.device) == kind)
            .filter(|w| placement.admits(&w.info.device, w.info.device_memory_bytes))
            .map(|w| w.id.clone())
            .collect()
    }

    /// Grants task `id` to a gang with `requester` as rank 0, if enough idle workers
    /// of its kind are there; otherwise records why it waits and grants nothing.
    pub(super) fn form_gang(
        &mut self,
        requester: &str,
        id: &TaskId,
        gang: GangSize,
        now: Millis,
    ) -> Option<Assignment> {
        let requester_idle = self.workers.get(requester)?.leases.is_empty();
        let kind = DeviceKind::of(&self.workers.get(requester)?.info.device);
        let placement = self.placement_of(id);
        let mut others = self.idle_workers(requester, kind, placement, now);
        let task = self.jobs.get_mut(&id.job)?.task_mut(id)?;
        let since = *task.waiting_since.get_or_insert(now);
        let wanted = gang.max as usize - 1;
        let waited = now.saturating_sub(since) >= gang.grace_ms;
        let enough = others.len() >= wanted || (waited && others.len() + 1 >= gang.min as usize);
        if !(enough && requester_idle) {
            let why = format!(
                "waiting for a gang of {}{} {kind:?} workers: {} idle now",
                gang.min,
                if gang.max > gang.min {
                    format!("-{}", gang.max)
                } else {
                    String::new()
                },
                others.len() + usize::from(requester_idle),
            );
            if task.waiting.as_deref() != Some(why.as_str()) {
                task.waiting = Some(why);
                self.changes.tasks.insert(id.clone());
            }
            return None;
        }
        others.truncate(wanted);
        task.epoch = task.next_epoch();
        task.state = TaskState::Leased {
            worker: requester.into(),
            since: now,
            duplicate: None,
            ranks: others
                .iter()
                .map(|w| Rank {
                    worker: w.clone(),
                    handed: false,
                })
                .collect(),
        };
        (task.waiting, task.waiting_since) = (None, None);
        let epoch = task.epoch;
        let world = others.len() as u32 + 1;
        let assignment = self.jobs.get(&id.job)?.assignment(id, epoch, 0, world);
        self.started(id, now);
        let workers: Vec<String> = std::iter::once(requester.to_string())
            .chain(others)
            .collect();
        for worker in &workers {
            self.hold(worker, id, now);
        }
        let event = EventKind::GangLeased {
            task: id.clone(),
            epoch,
            workers,
        };
        self.record(&id.job, now, event);
        Some(assignment)
    }

    /// The assignment of a gang rank `worker_id` was granted and not yet handed.
    pub(super) fn hand_rank(&mut self, worker_id: &str) -> Option<Assignment> {
        let held = self.workers.get(worker_id)?.leases.clone();
        for id in held {
            let Some(job) = self.jobs.get_mut(&id.job) else {
                continue;
            };
            let Some(task) = job.task_mut(&id) else {
                continue;
            };
            let TaskState::Leased { ranks, .. } = &mut task.state else {
                continue;
            };
            let world = ranks.len() as u32 + 1;
            let Some(at) = ranks
                .iter()
                .position(|r| r.worker == worker_id && !r.handed)
            else {
                continue;
            };
            ranks[at].handed = true;
            let epoch = task.epoch;
            self.changes.tasks.insert(id.clone());
            return Some(job.assignment(&id, epoch, at as u32 + 1, world));
        }
        None
    }
}
