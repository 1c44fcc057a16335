//! Durable coordinator state in an embedded redb database under the state directory.
//!
//! Records are JSON: jobs (without their tasks and history), tasks, history events,
//! workers and the id counters, each in its own table, so one lease rewrites one task
//! and appends one event instead of the whole job.
//!
//! Writes go through a [`Committer`]: calls hand it the records they changed and wait;
//! one thread commits everything that queued up meanwhile in a single fsync'd
//! transaction (group commit), so many workers share the cost of one disk flush.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::scheduler::{Changes, Counters, Job, Phase, RunState, Scheduler, Task, Worker};
use crate::spec::JobSpec;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const COUNTERS_KEY: &str = "counters";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Db(String),
    #[error("state store record {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("state store writer has stopped")]
    WriterGone,
}

fn db_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A job's own fields; its tasks and history are records of their own.
#[derive(Serialize, Deserialize)]
struct JobRecord {
    id: String,
    spec: JobSpec,
    state: RunState,
    submitted_at: u64,
    finished_at: Option<u64>,
    error: Option<String>,
    phases: Vec<PhaseRecord>,
}

/// A phase without its tasks (stored one record each).
#[derive(Debug, Serialize, Deserialize)]
struct PhaseRecord {
    name: String,
    state: RunState,
    shards: u32,
    spec_phase: u32,
    evaluation: bool,
}

/// One record to write.
#[derive(Debug)]
enum Record {
    Job(String, Vec<u8>),
    Task(String, Vec<u8>),
    Event(String, u64, Vec<u8>),
    Worker(String, Vec<u8>),
    Counters(Vec<u8>),
}

/// The records one scheduler call changed, serialized while the scheduler is locked.
#[derive(Debug, Default)]
pub struct Batch(Vec<Record>);

impl Batch {
    pub fn capture(scheduler: &Scheduler, changes: Changes) -> Self {
        let mut records = Vec::new();
        for id in &changes.jobs {
            if let Some(job) = scheduler.job(id) {
                records.push(Record::Job(id.clone(), json(&JobRecord::of(job))));
            }
        }
        for id in &changes.tasks {
            if let Some(task) = scheduler.job(&id.job).and_then(|j| j.task(id)) {
                records.push(Record::Task(id.to_string(), json(task)));
            }
        }
        for (job_id, index) in &changes.events {
            if let Some(event) = scheduler.job(job_id).and_then(|j| j.history.get(*index)) {
                records.push(Record::Event(job_id.clone(), *index as u64, json(event)));
            }
        }
        for id in &changes.workers {
            if let Some(worker) = scheduler.worker(id) {
                records.push(Record::Worker(id.clone(), json(worker)));
            }
        }
        if changes.counters_changed {
            records.push(Record::Counters(json(&scheduler.counters())));
        }
        Self(records)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// serde_json of our own domain types cannot fail: they have no non-string map keys.
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("domain types serialize to JSON")
}

impl JobRecord {
    fn of(job: &Job) -> Self {
        Self {
            id: job.id.clone(),
            spec: job.spec.clone(),
            state: job.state,
            submitted_at: job.submitted_at,
            finished_at: job.finished_at,
            error: job.error.clone(),
            phases: job
                .phases
                .iter()
                .map(|p| PhaseRecord {
                    name: p.name.clone(),
                    state: p.state,
                    shards: p.tasks.len() as u32,
                    spec_phase: p.spec_phase,
                    evaluation: p.evaluation,
                })
                .collect(),
        }
    }

    fn into_job(self) -> Job {
        let id = self.id;
        let phases = self
            .phases
            .into_iter()
            .enumerate()
            .map(|(p, record)| Phase {
                state: record.state,
                spec_phase: record.spec_phase,
                evaluation: record.evaluation,
                ..Phase::new(&id, p as u32, record.name, record.shards)
            })
            .collect();
        Job {
            id,
            spec: self.spec,
            state: self.state,
            submitted_at: self.submitted_at,
            finished_at: self.finished_at,
            error: self.error,
            phases,
            history: Vec::new(),
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.into(),
        source,
    })
}

/// Everything the store holds, ready for [`Scheduler::restore`].
pub struct Snapshot {
    pub jobs: Vec<Job>,
    pub workers: Vec<Worker>,
    pub counters: Counters,
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(db_error)?;
        let db = Database::create(state_dir.join("outloud.redb")).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        for table in [JOBS, TASKS, WORKERS, META] {
            txn.open_table(table).map_err(db_error)?;
        }
        txn.open_table(EVENTS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Self { db })
    }

    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let mut jobs = std::collections::BTreeMap::new();
        for row in txn
            .open_table(JOBS)
            .map_err(db_error)?
            .iter()
            .map_err(db_error)?
        {
            let (key, value) = row.map_err(db_error)?;
            let record: JobRecord = decode(key.value(), value.value())?;
            jobs.insert(key.value().to_string(), record.into_job());
        }
        for row in txn
            .open_table(TASKS)
            .map_err(db_error)?
            .iter()
            .map_err(db_error)?
        {
            let (key, value) = row.map_err(db_error)?;
            let task: Task = decode(key.value(), value.value())?;
            if let Some(slot) = jobs
                .get_mut(&task.id.job)
                .and_then(|j| j.task_mut(&task.id))
            {
                *slot = task;
            }
        }
        let events = txn.open_table(EVENTS).map_err(db_error)?;
        for (id, job) in jobs.iter_mut() {
            for row in events
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(db_error)?
            {
                let (_, value) = row.map_err(db_error)?;
                job.history.push(decode(id, value.value())?);
            }
        }
        let mut workers = Vec::new();
        for row in txn
            .open_table(WORKERS)
            .map_err(db_error)?
            .iter()
            .map_err(db_error)?
        {
            let (key, value) = row.map_err(db_error)?;
            workers.push(decode(key.value(), value.value())?);
        }
        let counters = match txn
            .open_table(META)
            .map_err(db_error)?
            .get(COUNTERS_KEY)
            .map_err(db_error)?
        {
            Some(value) => decode(COUNTERS_KEY, value.value())?,
            None => Counters::default(),
        };
        Ok(Snapshot {
            jobs: jobs.into_values().collect(),
            workers,
            counters,
        })
    }

    /// Writes the batches, in order, in one durable transaction.
    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(db_error)?;
            let mut tasks = txn.open_table(TASKS).map_err(db_error)?;
            let mut events = txn.open_table(EVENTS).map_err(db_error)?;
            let mut workers = txn.open_table(WORKERS).map_err(db_error)?;
            let mut meta = txn.open_table(META).map_err(db_error)?;
            for record in batches.iter().flat_map(|b| &b.0) {
                match record {
                    Record::Job(key, value) => jobs.insert(key.as_str(), value.as_slice()),
                    Record::Task(key, value) => tasks.insert(key.as_str(), value.as_slice()),
                    Record::Event(job, seq, value) => {
                        events.insert((job.as_str(), *seq), value.as_slice())
                    }
                    Record::Worker(key, value) => workers.insert(key.as_str(), value.as_slice()),
                    Record::Counters(value) => meta.insert(COUNTERS_KEY, value.as_slice()),
                }
                .map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }
}

type Pending = (Batch, oneshot::Sender<Result<(), String>>);

/// Group commit: one thread writes whatever batches queued up, in order.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Committer {
    /// Most batches written in one transaction.
    const GROUP_LIMIT: usize = 8192;

    pub fn start(store: Store) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Pending>();
        std::thread::Builder::new()
            .name("outloud-store".into())
            .spawn(move || {
                while let Some(first) = incoming.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < Self::GROUP_LIMIT {
                        match incoming.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let (batches, waiters): (Vec<Batch>, Vec<_>) = group.into_iter().unzip();
                    let result = store.write(&batches).map_err(|e| e.to_string());
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "state store write failed");
                    }
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .expect("spawning the store thread");
        Self { queue }
    }

    /// Queues a batch; call while the scheduler is still locked so batches keep the order
    /// of the changes they describe. Await the answer after unlocking.
    pub fn enqueue(&self, batch: Batch) -> oneshot::Receiver<Result<(), String>> {
        let (done, answer) = oneshot::channel();
        if batch.is_empty() {
            let _ = done.send(Ok(()));
        } else if let Err(mpsc::error::SendError((_, done))) = self.queue.send((batch, done)) {
            let _ = done.send(Err(StoreError::WriterGone.to_string()));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Metrics, SchedulerConfig, WorkerInfo};

    #[tokio::test]
    async fn what_was_committed_comes_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let config = SchedulerConfig {
            lease_timeout_ms: 1000,
        };
        let mut s = Scheduler::new(config);
        let committer = Committer::start(Store::open(dir.path()).unwrap());
        let spec = crate::spec::parse(
            "name: t\nstorage: /x\nphases: [{name: a, kind: noop, shards: 3}]\n",
            "t.yaml",
        )
        .unwrap();
        let job = s.submit(spec, 1);
        let w = s.register(WorkerInfo::for_tests("h"), 1);
        let a = s.lease(&w, 2).unwrap().unwrap();
        let metrics = Metrics {
            step: 5,
            loss: 2.5,
            ..Metrics::default()
        };
        s.report_progress(&w, &a.lease, metrics, Some("c".into()), None, 3)
            .unwrap();
        let changes = s.take_changes();
        committer
            .enqueue(Batch::capture(&s, changes))
            .await
            .unwrap()
            .unwrap();
        drop(committer);
        // The writer thread owns the database; give it a moment to close it.
        let snapshot = loop {
            match Store::open(dir.path()) {
                Ok(store) => break store.load().unwrap(),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let restored = Scheduler::restore(
            config,
            snapshot.jobs,
            snapshot.workers,
            snapshot.counters,
            10,
        );
        assert_eq!(restored.job(&job), s.job(&job));
        assert_eq!(restored.worker(&w).unwrap().leases, vec![a.lease.task]);
        assert_eq!(restored.counters(), s.counters());
    }
}
