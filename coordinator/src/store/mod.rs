//! Durable coordinator state in an embedded redb database under the state directory.
//!
//! Records are JSON: jobs (without their tasks and history), tasks, history events,
//! workers and the id counters, each in its own table, so one lease rewrites one task
//! and appends one event instead of the whole job.
//!
//! The `meta` table records the schema version ([`migrate::SCHEMA_VERSION`]). A state
//! directory of an older version is migrated when it is opened, in one transaction; one
//! of a newer version is refused, before anything is written, with what to do.
//!
//! Writes go through a [`Committer`]: calls hand it the records they changed and wait;
//! one thread commits everything that queued up meanwhile in a single fsync'd
//! transaction (group commit), so many workers share the cost of one disk flush.

use std::path::Path;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

mod migrate;

use std::collections::BTreeMap;

use outloud_core::spec::{GangSize, JobSpec, Placement};
use outloud_core::task_spec::TaskSpec;

use crate::scheduler::{
    Changes, Counters, Deleted, Input, Job, RunState, Scheduler, Step, StepKind, Task, Worker,
};
pub use migrate::SCHEMA_VERSION;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const COUNTERS_KEY: &str = "counters";
const SCHEMA_KEY: &str = "schema";

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
    #[error(
        "{dir} holds state of schema version {found}, written by a newer Outloud; this build \
         reads versions up to {SCHEMA_VERSION}: run the newer build, or start this one with \
         another --state-dir"
    )]
    NewerSchema { dir: String, found: u64 },
    #[error("migrating {dir} from schema version {from}: record {key}: {reason}")]
    Migration {
        dir: String,
        from: u64,
        key: String,
        reason: String,
    },
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
    steps: Vec<StepRecord>,
}

/// A step without its tasks (stored one record each).
#[derive(Debug, Serialize, Deserialize)]
struct StepRecord {
    name: String,
    kind: StepKind,
    state: RunState,
    inputs: Vec<Input>,
    shards: u32,
    attempts: u32,
    work: TaskSpec,
    /// The run (`seeds`) the step belongs to, when the job has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gang: Option<GangSize>,
    #[serde(default, flatten)]
    placement: Placement,
}

/// One record to write.
#[derive(Debug)]
enum Record {
    Job(String, Vec<u8>),
    Task(String, Vec<u8>),
    Event(String, u64, Vec<u8>),
    Worker(String, Vec<u8>),
    /// A worker the scheduler forgot.
    ForgottenWorker(String),
    /// A job deleted: its record, its tasks' and its history's.
    DeletedJob(Deleted),
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
            match scheduler.worker(id) {
                Some(worker) => records.push(Record::Worker(id.clone(), json(worker))),
                None => records.push(Record::ForgottenWorker(id.clone())),
            }
        }
        if changes.counters_changed {
            records.push(Record::Counters(json(&scheduler.counters())));
        }
        records.extend(changes.deleted.into_iter().map(Record::DeletedJob));
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
            steps: job
                .steps
                .iter()
                .map(|step| StepRecord {
                    name: step.name.clone(),
                    kind: step.kind,
                    state: step.state,
                    inputs: step.inputs.clone(),
                    shards: step.tasks.len() as u32,
                    attempts: step.attempts,
                    work: step.work.clone(),
                    seed: step.seed,
                    gang: step.gang,
                    placement: step.placement,
                })
                .collect(),
        }
    }

    fn into_job(self) -> Job {
        let id = self.id;
        let steps = self
            .steps
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let step = Step::new(&id, i as u32, &r.name, r.kind, r.shards, r.work);
                Step {
                    state: r.state,
                    inputs: r.inputs,
                    attempts: r.attempts,
                    seed: r.seed,
                    gang: r.gang,
                    placement: r.placement,
                    ..step
                }
            })
            .collect();
        Job {
            id,
            spec: self.spec,
            state: self.state,
            submitted_at: self.submitted_at,
            finished_at: self.finished_at,
            error: self.error,
            steps,
            history: Vec::new(),
            history_omitted: 0,
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
    /// Test seam: writes fail once this many have succeeded (`--fail-store-writes-after`).
    fail_after: Option<u64>,
    written: std::cell::Cell<u64>,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(db_error)?;
        let db = Database::create(state_dir.join("outloud.redb")).map_err(db_error)?;
        let dir = state_dir.display().to_string();
        // Read before anything is written, so state of a newer build is left as it was.
        let recorded = recorded_schema(&db)?;
        if let Some(found) = recorded.filter(|&v| v > SCHEMA_VERSION) {
            return Err(StoreError::NewerSchema { dir, found });
        }
        let txn = db.begin_write().map_err(db_error)?;
        for table in [JOBS, TASKS, WORKERS, META] {
            txn.open_table(table).map_err(db_error)?;
        }
        txn.open_table(EVENTS).map_err(db_error)?;
        upgrade(&txn, recorded, &dir)?;
        txn.commit().map_err(db_error)?;
        Ok(Self {
            db,
            fail_after: None,
            written: std::cell::Cell::new(0),
        })
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
    /// Makes every write after the first `writes` fail (a fault-injection seam for tests).
    pub fn failing_after(mut self, writes: Option<u64>) -> Self {
        self.fail_after = writes;
        self
    }

    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        if self.fail_after.is_some_and(|n| self.written.get() >= n) {
            return Err(StoreError::Db("injected write failure".into()));
        }
        self.written.set(self.written.get() + 1);
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
                    Record::ForgottenWorker(key) => workers.remove(key.as_str()),
                    Record::Counters(value) => meta.insert(COUNTERS_KEY, value.as_slice()),
                    Record::DeletedJob(deleted) => {
                        forget_job(deleted, &mut jobs, &mut tasks, &mut events)?;
                        continue;
                    }
                }
                .map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }
}

/// Removes a deleted job's record, its tasks' and every event of its history.
fn forget_job(
    deleted: &Deleted,
    jobs: &mut redb::Table<&str, &[u8]>,
    tasks: &mut redb::Table<&str, &[u8]>,
    events: &mut redb::Table<(&str, u64), &[u8]>,
) -> Result<(), StoreError> {
    let job = deleted.job.as_str();
    jobs.remove(job).map_err(db_error)?;
    for task in &deleted.tasks {
        tasks.remove(task.to_string().as_str()).map_err(db_error)?;
    }
    events
        .retain_in((job, 0)..=(job, u64::MAX), |_, _| false)
        .map_err(db_error)?;
    Ok(())
}

/// The schema version recorded in `db`, if any, read without writing anything.
fn recorded_schema(db: &Database) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_read().map_err(db_error)?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_error(e)),
    };
    let recorded = meta.get(SCHEMA_KEY).map_err(db_error)?;
    recorded
        .map(|v| decode::<u64>(SCHEMA_KEY, v.value()))
        .transpose()
}

/// Brings state of schema `recorded` (not newer than this build's) to
/// [`SCHEMA_VERSION`] inside `txn`: a new directory is stamped, an older one migrated,
/// all or nothing with the rest of the transaction.
fn upgrade(
    txn: &redb::WriteTransaction,
    recorded: Option<u64>,
    dir: &str,
) -> Result<(), StoreError> {
    if recorded == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let empty = txn
        .open_table(JOBS)
        .map_err(db_error)?
        .is_empty()
        .map_err(db_error)?;
    // No record: schema 0, the only version before versions were recorded.
    if !empty {
        migrate_from_v0(txn, dir)?;
        tracing::info!(state_dir = %dir, to = SCHEMA_VERSION, "state migrated from schema version 0");
    }
    txn.open_table(META)
        .map_err(db_error)?
        .insert(SCHEMA_KEY, json(&SCHEMA_VERSION).as_slice())
        .map_err(db_error)?;
    Ok(())
}

/// Rewrites every job and task record of schema 0 (see [`migrate`]).
fn migrate_from_v0(txn: &redb::WriteTransaction, dir: &str) -> Result<(), StoreError> {
    let failed = |key: &str, reason: String| StoreError::Migration {
        dir: dir.into(),
        from: 0,
        key: key.into(),
        reason,
    };
    // Which phases of each job are eval steps: their tasks' results migrate differently.
    let mut evaluation: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    rewrite(
        &mut txn.open_table(JOBS).map_err(db_error)?,
        |key, value| {
            let (record, evals) = migrate::job_from_v0(value).map_err(|e| failed(key, e))?;
            evaluation.insert(key.to_string(), evals);
            Ok(record)
        },
    )?;
    rewrite(
        &mut txn.open_table(TASKS).map_err(db_error)?,
        |key, value| {
            let id: crate::scheduler::TaskId = key.parse().map_err(|e| failed(key, e))?;
            let phases = evaluation.get(&id.job);
            let is_eval = phases.and_then(|p| p.get(id.step as usize)).copied();
            migrate::task_from_v0(value, is_eval.unwrap_or(false)).map_err(|e| failed(key, e))
        },
    )
}

/// Replaces every record of `table` with what `new` makes of it.
fn rewrite(
    table: &mut redb::Table<&str, &[u8]>,
    mut new: impl FnMut(&str, &[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    let mut rewritten = Vec::new();
    for row in table.iter().map_err(db_error)? {
        let (key, value) = row.map_err(db_error)?;
        let key = key.value().to_string();
        let record = new(&key, value.value())?;
        rewritten.push((key, record));
    }
    for (key, record) in rewritten {
        table
            .insert(key.as_str(), record.as_slice())
            .map_err(db_error)?;
    }
    Ok(())
}

type Pending = (Batch, oneshot::Sender<Result<(), String>>);

/// Group commit: one thread writes whatever batches queued up, in order.
///
/// After one failed write it writes nothing more: later batches describe changes made on
/// top of the lost one, and writing them would leave disk in a state memory never had.
/// The server stops instead and a restart recovers from disk.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Committer {
    /// Most batches written in one transaction.
    const GROUP_LIMIT: usize = 8192;

    pub fn start(store: Store) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Pending>();
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = broken.clone();
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
                    let result = if failed.load(std::sync::atomic::Ordering::SeqCst) {
                        Err("an earlier state write failed".to_string())
                    } else {
                        store.write(&batches).map_err(|e| e.to_string())
                    };
                    if let Err(e) = &result {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        tracing::error!(error = %e, "state store write failed");
                    }
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .expect("spawning the store thread");
        Self { queue, broken }
    }

    /// Whether a write has failed: from then on nothing is written, or should be changed.
    pub fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::SeqCst)
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
    use crate::scheduler::{CheckpointRef, Metrics, SchedulerConfig, WorkerInfo};

    #[tokio::test]
    async fn what_was_committed_comes_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let config = SchedulerConfig {
            lease_timeout_ms: 1000,
            instance: 0,
        };
        let mut s = Scheduler::new(config);
        let committer = Committer::start(Store::open(dir.path()).unwrap());
        let spec = outloud_core::spec::parse(
            // Two runs: each step records which it belongs to.
            "name: t\nstorage: /x\nseeds: [1, 2]\nphases: [{name: a, kind: noop, shards: 3}]\n",
            "t.yaml",
        )
        .unwrap();
        let job = s.submit(spec, 1).unwrap();
        let w = s.register(WorkerInfo::for_tests("h"), 1);
        let a = s.lease(&w, 2).unwrap().unwrap();
        let metrics = Metrics {
            step: 5,
            loss: 2.5,
            ..Metrics::default()
        };
        let checkpoint = CheckpointRef {
            url: format!("{}/checkpoints/step-000005", a.output_root),
            step: 5,
        };
        s.report_progress(&w, &a.lease, metrics, Some(checkpoint), None, 3)
            .unwrap();
        // A job cancelled and deleted leaves nothing behind.
        let gone = s
            .submit(
                outloud_core::spec::parse(
                    "name: gone\nstorage: /x\nphases: [{name: a, kind: noop, shards: 2}]\n",
                    "g.yaml",
                )
                .unwrap(),
                4,
            )
            .unwrap();
        s.cancel(&gone, 5).unwrap();
        s.delete(&gone).unwrap();
        let changes = s.take_changes();
        committer
            .enqueue(Batch::capture(&s, changes))
            .await
            .unwrap()
            .unwrap();
        drop(committer);
        // The writer thread owns the database; give it a moment to close it.
        let store = loop {
            match Store::open(dir.path()) {
                Ok(store) => break store,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let snapshot = store.load().unwrap();
        let txn = store.db.begin_read().unwrap();
        let events = txn.open_table(EVENTS).unwrap();
        let own = (gone.as_str(), 0)..=(gone.as_str(), u64::MAX);
        let left = events.range(own).unwrap().count();
        assert_eq!(left, 0, "events of the deleted job are left");
        let tasks = txn.open_table(TASKS).unwrap();
        assert!(
            tasks
                .iter()
                .unwrap()
                .all(|r| !r.unwrap().0.value().starts_with(&gone))
        );
        assert!(snapshot.jobs.iter().all(|j| j.id != gone));
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
