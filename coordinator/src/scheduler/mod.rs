//! The scheduling state machine: jobs expand into a graph of steps ([`steps`]) made of
//! tasks, workers lease tasks, leases expire, and a step starts once every step it reads
//! from has succeeded, so branches and eval steps run beside each other.
//!
//! It is pure: no clock (every call takes `now`), no network, no disk. Each call records
//! what it changed in [`Changes`], which the server makes durable before it answers, so
//! tests drive it directly in a loop and the store never has to diff anything.
//!
//! Here: submitting, registering, leasing and reporting. [`model`]: the domain types;
//! `outcomes`: how task outcomes move steps and jobs along, and retries; `changes`: what
//! a call changed; `history`: the events a job records; `tallies`: event counts for
//! metrics; `summary`: jobs cut to a size answers can carry; `speculation`: duplicate
//! attempts for straggling synthesize shards; `gangs`: tasks trained by several ranks,
//! granted and revoked together, their rendezvous, and placement; `expiry`: leases that
//! end without success, silent workers, departed workers forgotten; `deletion`:
//! finished jobs forgotten; `curve`: training tasks' loss curves, bounded; `cost`: the
//! device time tasks' leases took.

mod changes;
mod cost;
mod curve;
mod deletion;
mod expiry;
mod gangs;
mod history;
pub mod model;
mod outcomes;
mod speculation;
pub mod steps;
mod summary;
mod tallies;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use outloud_core::results::TaskResults;
use outloud_core::spec::JobSpec;
use outloud_core::storage::is_within;

pub use changes::{Changes, Counters};
pub use cost::{DeviceTime, GPU_SECONDS};
pub use curve::{CurvePoint, LossCurve};
pub use deletion::Deleted;
pub use model::*;
pub use steps::{Input, Step, StepKind, eval_step_name, expand};
pub use summary::StepTotals;
pub use tallies::Tallies;

/// Lease timeouts a dead worker holding nothing is kept before it is forgotten.
pub const FORGET_AFTER_TIMEOUTS: u64 = 720;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// A worker silent for this long loses its leases.
    pub lease_timeout_ms: u64,
    /// Differs between coordinator processes (the server draws it at start): job ids
    /// mix it in, so coordinators that share a storage root, such as two `outloud local`
    /// runs started in the same millisecond, never give two jobs one id (and one output
    /// folder).
    pub instance: u64,
}

pub struct Scheduler {
    config: SchedulerConfig,
    jobs: BTreeMap<String, Job>,
    workers: BTreeMap<String, Worker>,
    /// Tasks ready to lease, oldest first. Entries whose task is no longer pending
    /// (cancelled meanwhile) are skipped when popped.
    ready: VecDeque<TaskId>,
    counters: Counters,
    changes: Changes,
    /// Event counts since this process started, for metrics.
    tallies: Tallies,
    /// Gangs' rendezvous in progress ([`gangs`]): kept in memory only, since ranks
    /// publish again until every rank has, a restarted coordinator hears them anew.
    meetings: BTreeMap<TaskId, gangs::Meeting>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self::restore(config, Vec::new(), Vec::new(), Counters::default(), 0)
    }

    /// Rebuilds the scheduler from stored state. Workers get a fresh lease timeout from
    /// `now`, so a restarted coordinator does not take work away from live workers.
    pub fn restore(
        config: SchedulerConfig,
        jobs: Vec<Job>,
        workers: Vec<Worker>,
        counters: Counters,
        now: Millis,
    ) -> Self {
        let mut scheduler = Self {
            config,
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            workers: workers
                .into_iter()
                .map(|mut w| {
                    w.last_seen = now;
                    (w.id.clone(), w)
                })
                .collect(),
            ready: VecDeque::new(),
            counters,
            changes: Changes::default(),
            tallies: Tallies::default(),
            meetings: BTreeMap::new(),
        };
        let pending: Vec<TaskId> = scheduler
            .jobs
            .values()
            .flat_map(|job| {
                job.steps
                    .iter()
                    .filter(|p| p.state == RunState::Running || p.state == RunState::Pending)
            })
            .flat_map(|phase| phase.tasks.iter())
            .filter(|task| task.state == TaskState::Pending)
            .map(|task| task.id.clone())
            .collect();
        for id in pending {
            if scheduler.is_startable(&id) {
                scheduler.ready.push_back(id);
            }
        }
        scheduler
    }

    /// A pending task may be leased when its step may start.
    fn is_startable(&self, id: &TaskId) -> bool {
        self.jobs
            .get(&id.job)
            .is_some_and(|job| !job.state.is_finished() && job.is_startable(id.step as usize))
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn tallies(&self) -> Tallies {
        self.tallies
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Jobs in id order, from just after `after` ("" for the first).
    pub fn jobs_after<'a>(&'a self, after: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        after_key(&self.jobs, after)
    }

    /// Workers in id order, from just after `after` ("" for the first).
    pub fn workers_after<'a>(&'a self, after: &'a str) -> impl Iterator<Item = &'a Worker> + 'a {
        after_key(&self.workers, after)
    }

    pub fn worker(&self, id: &str) -> Option<&Worker> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    fn record(&mut self, job_id: &str, at: Millis, what: EventKind) {
        self.tallies.count(&what);
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.history.push(Event { at, what });
            self.changes
                .events
                .push((job_id.to_string(), job.history.len() - 1));
        }
    }

    /// Accepts a checked, resolved spec; the steps that read from no other are ready at once.
    pub fn submit(&mut self, spec: JobSpec, now: Millis) -> Result<String, SchedulerError> {
        let next_job = self.counters.next_job + 1;
        // The time suffix keeps ids unique across coordinators that share a storage root
        // (each `outloud local` run starts a fresh state directory).
        let suffix = (now ^ self.config.instance) & 0xff_ffff;
        let id = format!("{}-{next_job}-{suffix:06x}", spec.name);
        let steps = expand(&id, &spec).map_err(SchedulerError::Unplannable)?;
        self.counters.next_job = next_job;
        self.changes.counters_changed = true;
        let job = Job {
            id: id.clone(),
            spec,
            state: RunState::Pending,
            submitted_at: now,
            finished_at: None,
            error: None,
            steps,
            history: Vec::new(),
            history_omitted: 0,
        };
        self.jobs.insert(id.clone(), job);
        self.changes.jobs.insert(id.clone());
        self.record(&id, now, EventKind::Submitted);
        self.start_ready(&id, now);
        Ok(id)
    }

    /// Starts every pending step whose inputs have all succeeded.
    fn start_ready(&mut self, job_id: &str, now: Millis) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let ready: Vec<usize> = (0..job.steps.len())
            .filter(|&s| job.steps[s].state == RunState::Pending && job.is_startable(s))
            .collect();
        for step in ready {
            self.start_step(job_id, step, now);
        }
    }

    fn start_step(&mut self, job_id: &str, step: usize, now: Millis) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let name = job.steps[step].name.clone();
        job.steps[step].state = RunState::Running;
        let ids: Vec<TaskId> = job.steps[step].tasks.iter().map(|t| t.id.clone()).collect();
        self.changes.jobs.insert(job_id.to_string());
        self.ready.extend(ids);
        self.record(job_id, now, EventKind::PhaseStarted { phase: name });
    }

    pub fn register(&mut self, info: WorkerInfo, now: Millis) -> String {
        self.counters.next_worker += 1;
        self.changes.counters_changed = true;
        let id = format!("w{}-{}", self.counters.next_worker, info.hostname);
        let worker = Worker {
            id: id.clone(),
            info,
            registered_at: now,
            last_seen: now,
            alive: true,
            leases: Vec::new(),
            // It asks for work next.
            asked_at: Some(now),
        };
        self.workers.insert(id.clone(), worker);
        self.changes.workers.insert(id.clone());
        id
    }

    fn touch(&mut self, worker_id: &str, now: Millis) -> Result<&mut Worker, SchedulerError> {
        let worker = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| SchedulerError::UnknownWorker(worker_id.into()))?;
        worker.last_seen = now;
        if !worker.alive {
            worker.alive = true;
            self.changes.workers.insert(worker_id.to_string());
        }
        Ok(worker)
    }

    /// Keeps the worker alive; answers the leases it named that it must drop.
    pub fn heartbeat(
        &mut self,
        worker_id: &str,
        held: &[LeaseRef],
        now: Millis,
    ) -> Result<Vec<LeaseRef>, SchedulerError> {
        self.touch(worker_id, now)?;
        Ok(held
            .iter()
            .filter(|lease| self.check_lease(worker_id, lease).is_err())
            .cloned()
            .collect())
    }

    /// Hands the worker its rank of a gang granted meanwhile, else the oldest ready task
    /// it may take (placement: its device kind), under a new epoch; a gang task only when
    /// the whole gang can be granted at once ([`gangs`]). With none, a duplicate attempt
    /// of a straggler ([`speculation`]) to a worker holding nothing.
    pub fn lease(
        &mut self,
        worker_id: &str,
        now: Millis,
    ) -> Result<Option<Assignment>, SchedulerError> {
        let worker = self.touch(worker_id, now)?;
        if worker.leases.is_empty() {
            worker.asked_at = Some(now);
        }
        if let Some(rank) = self.hand_rank(worker_id) {
            return Ok(Some(rank));
        }
        let mut deferred = Vec::new();
        let mut granted = None;
        while let Some(id) = self.ready.pop_front() {
            let startable = self.is_startable(&id);
            let Some(task) = self.jobs.get(&id.job).and_then(|job| job.task(&id)) else {
                continue;
            };
            if task.state != TaskState::Pending || !startable {
                continue;
            }
            if !self.placeable(worker_id, &id) {
                self.note_unplaced(&id);
                deferred.push(id);
                continue;
            }
            granted = match self.gang_of(&id) {
                Some(gang) => self.form_gang(worker_id, &id, gang, now),
                None => Some(self.grant(worker_id, &id, now)),
            };
            if granted.is_some() {
                break;
            }
            deferred.push(id);
        }
        for id in deferred.into_iter().rev() {
            self.ready.push_front(id);
        }
        if granted.is_some() {
            return Ok(granted);
        }
        Ok(self.lease_duplicate(worker_id, now))
    }

    /// Leases pending task `id` to `worker_id` alone.
    fn grant(&mut self, worker_id: &str, id: &TaskId, now: Millis) -> Assignment {
        let job = self
            .jobs
            .get_mut(&id.job)
            .expect("the caller found the job");
        let task = job.task_mut(id).expect("the caller found the task");
        task.epoch = task.next_epoch();
        task.state = TaskState::Leased {
            worker: worker_id.into(),
            since: now,
            duplicate: None,
            ranks: Vec::new(),
        };
        (task.waiting, task.waiting_since) = (None, None);
        let epoch = task.epoch;
        let resume_from = task.checkpoint.clone();
        let assignment = job.assignment(id, epoch, 0, 1);
        self.started(id, now);
        self.hold(worker_id, id, now);
        let event = EventKind::Leased {
            task: id.clone(),
            worker: worker_id.into(),
            epoch,
            resume_from,
        };
        self.record(&id.job, now, event);
        assignment
    }

    /// A job whose first task was just leased is running.
    fn started(&mut self, id: &TaskId, _now: Millis) {
        if let Some(job) = self.jobs.get_mut(&id.job)
            && job.state == RunState::Pending
        {
            job.state = RunState::Running;
            self.changes.jobs.insert(job.id.clone());
        }
    }

    /// The task behind `lease`, if the lease is current and held by `worker_id`.
    fn check_lease(&self, worker_id: &str, lease: &LeaseRef) -> Result<&Task, SchedulerError> {
        let job = self
            .jobs
            .get(&lease.task.job)
            .ok_or_else(|| SchedulerError::UnknownJob(lease.task.job.clone()))?;
        let task = job
            .task(&lease.task)
            .ok_or_else(|| SchedulerError::UnknownTask(lease.task.to_string()))?;
        if task.lease_of(worker_id) != Some(lease.epoch) {
            return Err(SchedulerError::StaleLease {
                task: lease.task.to_string(),
                epoch: lease.epoch,
                worker: worker_id.into(),
            });
        }
        Ok(task)
    }

    /// Refuses `url` unless it lies in the folder of the lease that names it: what a
    /// lease commits or reports as a checkpoint is its own attempt's, never another's.
    /// An empty output (a no-op task) commits nothing.
    fn check_fenced(&self, lease: &LeaseRef, url: &str) -> Result<(), SchedulerError> {
        let Some(step) = self
            .jobs
            .get(&lease.task.job)
            .and_then(|job| job.steps.get(lease.task.step as usize))
        else {
            return Err(SchedulerError::UnknownTask(lease.task.to_string()));
        };
        let root = step.attempt_root(&lease.task, lease.epoch);
        if step.fences_outputs() && !url.is_empty() && !is_within(url, &root) {
            return Err(SchedulerError::OutsideAttempt {
                task: lease.task.to_string(),
                url: url.into(),
                root,
            });
        }
        Ok(())
    }

    fn held_task(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        now: Millis,
    ) -> Result<&mut Task, SchedulerError> {
        self.check_lease(worker_id, lease)?;
        self.touch(worker_id, now)?;
        self.changes.tasks.insert(lease.task.clone());
        // check_lease found the job and task above.
        Ok(self
            .jobs
            .get_mut(&lease.task.job)
            .and_then(|job| job.task_mut(&lease.task))
            .expect("task checked above"))
    }

    pub fn report_progress(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        metrics: Metrics,
        checkpoint: Option<CheckpointRef>,
        resumed_from_step: Option<u64>,
        now: Millis,
    ) -> Result<(), SchedulerError> {
        let task = self.check_lease(worker_id, lease)?;
        if task.rank_of(worker_id) != Some(0) {
            // Ranks past 0 train the same model: their figures are rank 0's, and they
            // never checkpoint.
            if checkpoint.is_some() {
                task.rank_zero(worker_id)?;
            }
            self.touch(worker_id, now)?;
            return Ok(());
        }
        if let Some(checkpoint) = &checkpoint {
            self.check_fenced(lease, &checkpoint.url)?;
        }
        let task = self.held_task(worker_id, lease, now)?;
        task.metrics = metrics;
        task.cost.measured(lease.epoch, &metrics);
        task.first_loss.get_or_insert(metrics.loss);
        task.curve.record(metrics.step, metrics.loss);
        if let Some(checkpoint) = &checkpoint {
            task.checkpoint = Some(checkpoint.url.clone());
        }
        let task_id = lease.task.clone();
        if let Some(step) = resumed_from_step {
            let what = EventKind::Resumed {
                task: task_id.clone(),
                epoch: lease.epoch,
                step,
            };
            self.record(&task_id.job, now, what);
        }
        if let Some(CheckpointRef { url, step }) = checkpoint {
            let what = EventKind::Checkpointed {
                task: task_id.clone(),
                epoch: lease.epoch,
                step,
                checkpoint: url,
            };
            self.record(&task_id.job, now, what);
        }
        Ok(())
    }

    pub fn complete(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        metrics: Metrics,
        output: String,
        results: TaskResults,
        now: Millis,
    ) -> Result<(), SchedulerError> {
        // The lease first: a stale epoch hears that it is stale, whatever it names.
        self.check_lease(worker_id, lease)?.rank_zero(worker_id)?;
        self.check_fenced(lease, &output)?;
        let task = self.held_task(worker_id, lease, now)?;
        task.metrics = metrics;
        task.cost.measured(lease.epoch, &metrics);
        task.results = results;
        task.first_loss.get_or_insert(metrics.loss);
        let since = match &task.state {
            TaskState::Leased {
                duplicate: Some(d), ..
            } if d.epoch == lease.epoch => d.since,
            TaskState::Leased { since, .. } => *since,
            _ => now,
        };
        // A gang's other ranks are done with rank 0's commit.
        let ranks = task.gang_ranks();
        // The first commit wins: a duplicate attempt still running is ended.
        let others: Vec<(String, u64)> = task
            .holders()
            .into_iter()
            .filter(|w| w != worker_id && !ranks.contains(w))
            .filter_map(|w| Some((w.clone(), task.lease_of(&w)?)))
            .collect();
        task.epoch = lease.epoch;
        task.took_ms = Some(now.saturating_sub(since));
        task.state = TaskState::Succeeded { output };
        for (other, epoch) in others {
            self.release(&other, &lease.task, now);
            let what = EventKind::LeaseLost {
                task: lease.task.clone(),
                worker: other,
                epoch,
                reason: format!("{worker_id} committed the task first"),
            };
            self.record(&lease.task.job, now, what);
        }
        for rank in ranks.iter().chain([&worker_id.to_string()]) {
            self.release(rank, &lease.task, now);
        }
        let what = EventKind::TaskSucceeded {
            task: lease.task.clone(),
            epoch: lease.epoch,
            loss: metrics.loss,
        };
        self.record(&lease.task.job, now, what);
        self.advance(&lease.task, now);
        Ok(())
    }

    /// A worker gave up on a task.
    pub fn fail(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        error: String,
        failure: Failure,
        now: Millis,
    ) -> Result<(), SchedulerError> {
        let duplicated = self.held_task(worker_id, lease, now)?.has_duplicate();
        match failure {
            // One of two attempts: the other goes on, and says for itself how it ends.
            _ if duplicated => self.lose_lease(worker_id, lease, error, false, now),
            Failure::Fatal => self.fail_task(lease, error, now),
            Failure::Retryable => self.lose_lease(worker_id, lease, error, true, now),
            Failure::HandedBack => self.lose_lease(worker_id, lease, error, false, now),
        }
        Ok(())
    }

    /// Records that `worker_id` now holds a lease on `task`.
    fn hold(&mut self, worker_id: &str, task: &TaskId, now: Millis) {
        self.changes.tasks.insert(task.clone());
        let info = self.workers.get(worker_id).map(|w| &w.info);
        if let Some(held) = self.jobs.get_mut(&task.job).and_then(|j| j.task_mut(task)) {
            held.cost.start(worker_id, info, now);
        }
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.leases.push(task.clone());
            worker.asked_at = None;
            self.changes.workers.insert(worker_id.into());
        }
    }

    fn release(&mut self, worker_id: &str, task: &TaskId, now: Millis) {
        if let Some(held) = self.jobs.get_mut(&task.job).and_then(|j| j.task_mut(task)) {
            held.cost.end(worker_id, now);
            self.changes.tasks.insert(task.clone());
        }
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.leases.retain(|t| t != task);
            self.changes.workers.insert(worker_id.into());
        }
    }
}

/// The values of `map` whose keys sort after `after`: where a page starts.
fn after_key<'a, V>(
    map: &'a BTreeMap<String, V>,
    after: &'a str,
) -> impl Iterator<Item = &'a V> + 'a {
    let from = (Bound::Excluded(after), Bound::Unbounded);
    map.range::<str, _>(from).map(|(_, value)| value)
}

#[cfg(test)]
mod gang_tests;
#[cfg(test)]
mod graph_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod synthesis_tests;
#[cfg(test)]
pub(crate) mod tests;
