//! A task as both sides name it: its id, the lease a worker holds on it, the metrics it
//! reports, and the assignment a worker receives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::task_spec::TaskSpec;

/// The version of the assignment a coordinator sends. A worker refuses an assignment of
/// any other version with a message that says which side to upgrade, instead of failing
/// somewhere inside the task. Bump it when a worker of the previous version would
/// misread an assignment.
pub const PROTOCOL_VERSION: u32 = 6;

/// `<job id>/<step index>/<shard>`: every task of every job, unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TaskId {
    pub job: String,
    pub step: u32,
    pub shard: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.job, self.step, self.shard)
    }
}

impl FromStr for TaskId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.rsplitn(3, '/');
        let bad = || format!("`{text}` is not a task id (job/step/shard)");
        let shard = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let step = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let job = parts.next().filter(|j| !j.is_empty()).ok_or_else(bad)?;
        Ok(Self {
            job: job.into(),
            step,
            shard,
        })
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for TaskId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// A worker's right to work on a task, as handed out and as named in reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub task: TaskId,
    pub epoch: u64,
}

/// A checkpoint a worker has committed (its manifest written), and the optimizer step
/// it holds: written in the background, it is reported some steps after it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef {
    pub url: String,
    pub step: u64,
}

/// What a worker last said about its task: optimizer steps for training, items for
/// evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub tokens: u64,
    pub words: u64,
    /// Benchmark items scored so far (eval steps).
    #[serde(default)]
    pub items: u64,
    /// Benchmark items the step will score.
    #[serde(default)]
    pub total_items: u64,
    /// Of `words`, those read in captions the model synthesized itself (phase 3b).
    #[serde(default)]
    pub synthetic_words: u64,
    /// Distinct real words the model's lineage has read: this phase's and its
    /// ancestors' text, each word once however often it was read (the word ledger).
    #[serde(default)]
    pub unique_words: u64,
    /// Seconds a gang rank spent in gradient all-reduces, and the bytes it reduced.
    #[serde(default)]
    pub allreduce_seconds: f64,
    #[serde(default)]
    pub allreduce_bytes: u64,
    /// On a GPU: the most device memory in use seen at any report of this attempt, and
    /// the energy the GPU drew since the attempt started (NVML; 0 where it cannot say).
    #[serde(default)]
    pub peak_gpu_memory_bytes: u64,
    #[serde(default)]
    pub gpu_energy_joules: f64,
}

/// What a worker gets when it leases a task: the lease, and exactly what the task needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub lease: LeaseRef,
    pub job_id: String,
    /// The step's name.
    pub step: String,
    pub shards: u32,
    pub spec: TaskSpec,
    /// The folder this lease writes everything into (see [`attempt_folder`]). Nothing
    /// in it is read by anyone until the coordinator accepts the commit that names it.
    pub output_root: String,
    /// The newest checkpoint this task reported: a new lease resumes from it.
    pub resume_checkpoint: Option<String>,
    /// The checkpoint the task starts from (training) or scores (evaluation).
    pub input_checkpoint: Option<String>,
    /// The step of this job that wrote `input_checkpoint`: a checkpoint whose manifest
    /// names another job or step is refused. None with an input checkpoint: the phase
    /// imports it from outside the job (`init_from`), vouched for by its manifest alone.
    pub input_step: Option<String>,
    /// This worker's rank in the task's gang, and the gang's size (1: no gang).
    pub rank: u32,
    pub world_size: u32,
    /// The lease's span in the job's trace (`traces::traceparent`).
    pub traceparent: String,
}

impl Assignment {
    /// The checkpoint the phase imports from outside the job (`init_from`), if it does.
    pub fn imported_checkpoint(&self) -> Option<&str> {
        match self.input_step {
            None => self.input_checkpoint.as_deref(),
            Some(_) => None,
        }
    }
}

/// Everything a job's tasks write, in the job's storage: `jobs/<job>` (the data its
/// prepare step makes lies beside it, under `data/`, shared with other jobs).
pub fn job_folder(job: &str) -> String {
    format!("jobs/{job}")
}

/// Where one attempt at a task writes: `jobs/<job>/<step>/[shard-<k>/]attempt-<epoch>`
/// in the job's storage. Every lease writes under its own epoch, so a worker that lost
/// its lease (a zombie behind a partition) can never overwrite what a newer lease wrote;
/// its files stay in a folder that no accepted commit names.
pub fn attempt_folder(task: &TaskId, step: &str, shards: u32, epoch: u64) -> String {
    let shard = shard_folder(step, shards, task.shard);
    format!("{}/{shard}/attempt-{epoch}", job_folder(&task.job))
}

/// `<step>`, or `<step>/shard-<k>` for a step of several shards: where shard `shard`'s
/// attempts (and their logs) are, below the job's folder (or its logs' folder).
pub fn shard_folder(step: &str, shards: u32, shard: u32) -> String {
    if shards > 1 {
        format!("{step}/shard-{shard}")
    } else {
        step.to_string()
    }
}

/// Where one rank of one attempt at a task ships its log, in chunks `<seq>.jsonl`:
/// `jobs/<job>/_logs/<step>/[shard-<k>/]attempt-<epoch>/rank-<r>`. Apart from the
/// attempt's outputs, because logs are read while the task runs, and whether it
/// succeeds or not.
pub fn log_folder(task: &TaskId, step: &str, shards: u32, epoch: u64, rank: u32) -> String {
    let shard = shard_folder(step, shards, task.shard);
    format!(
        "{}/{LOGS}/{shard}/attempt-{epoch}/rank-{rank}",
        job_folder(&task.job)
    )
}

/// The folder of a job's logs, under [`job_folder`]: no step can be named so (a step
/// name is a slug, perhaps with a `.suffix`), so it never meets a step's folder.
pub const LOGS: &str = "_logs";

/// A log chunk's name: its sequence number, zero-padded so names sort in order.
pub fn log_chunk_name(seq: u64) -> String {
    format!("{seq:08}.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_even_with_slashes_in_the_job() {
        let id = TaskId {
            job: "a/b".into(),
            step: 2,
            shard: 7,
        };
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("nojob".parse::<TaskId>().is_err());
    }

    #[test]
    fn attempts_write_apart() {
        use crate::storage::is_within;
        let id = TaskId {
            job: "j".into(),
            step: 1,
            shard: 3,
        };
        assert_eq!(attempt_folder(&id, "lang", 1, 2), "jobs/j/lang/attempt-2");
        assert_eq!(
            attempt_folder(&id, "syn", 8, 2),
            "jobs/j/syn/shard-3/attempt-2"
        );
        let root = "file:///s/jobs/j/lang/attempt-2";
        assert!(is_within(root, root));
        assert!(is_within(&format!("{root}/final"), root));
        assert!(!is_within("file:///s/jobs/j/lang/attempt-20/final", root));
        assert!(!is_within(&format!("{root}/../attempt-3/final"), root));
    }
}
