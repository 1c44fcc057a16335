//! `ReadLogs`: the task logs workers shipped to a job's storage
//! (`core::task::log_folder`), read chunk by chunk. A client keeps, per stream (one
//! rank of one attempt at one task), how many chunks it has read, and sends that back
//! to get only what is new: following a running task is asking again.

use std::collections::HashMap;

use outloud_core::storage::{Location, join_url};
use outloud_core::task::{LOGS, job_folder, shard_folder};
use outloud_proto::v1 as pb;
use tonic::Status;

use crate::scheduler::{Job, SchedulerError};

/// The folder holding the logs asked for: the job's, one step's, or one shard's.
pub fn folder(job: &Job, step: &str, shard: Option<u32>) -> Result<String, Status> {
    let logs = join_url(
        &job.spec.storage,
        &format!("{}/{LOGS}", job_folder(&job.id)),
    );
    if step.is_empty() {
        return match shard {
            None => Ok(logs),
            Some(_) => Err(Status::invalid_argument("a shard needs its step")),
        };
    }
    let found = job
        .step(step)
        .ok_or_else(|| super::status_of(SchedulerError::UnknownStep(step.to_string())))?;
    let shards = found.tasks.len() as u32;
    match shard {
        None => Ok(join_url(&logs, step)),
        Some(k) if k >= shards => Err(Status::not_found(format!(
            "step {step} has {shards} task(s): 0 to {}",
            shards - 1
        ))),
        Some(k) => Ok(join_url(&logs, &shard_folder(step, shards, k))),
    }
}

/// The chunks below `folder` not counted in `read`, oldest first in each stream, in
/// at most `budget` bytes; the counts after them; and whether more are left.
pub async fn read(
    folder: &str,
    logs_root: &str,
    mut read: HashMap<String, u64>,
    budget: usize,
) -> Result<pb::ReadLogsResponse, Status> {
    let unreadable = |e: outloud_core::storage::StorageError| {
        Status::unavailable(format!("reading the logs in {folder}: {e}"))
    };
    let location = Location::open(folder).map_err(unreadable)?;
    let mut unread: Vec<(String, u64, Location)> = Vec::new();
    for chunk in location.list().await.map_err(unreadable)? {
        let Some((stream, seq)) = chunk_of(chunk.url(), logs_root) else {
            continue;
        };
        if seq >= read.get(&stream).copied().unwrap_or(0) {
            unread.push((stream, seq, chunk));
        }
    }
    unread.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let (mut chunks, mut size, mut more) = (Vec::new(), 0, false);
    for (stream, seq, chunk) in unread {
        // Chunks of a stream are read in order: one that is missing or out of the
        // budget stops its stream (and, past the budget, the answer).
        if seq != read.get(&stream).copied().unwrap_or(0) {
            continue;
        }
        let bytes = chunk.get().await.map_err(unreadable)?;
        if size + bytes.len() > budget && !chunks.is_empty() {
            more = true;
            break;
        }
        size += bytes.len();
        read.insert(stream.clone(), seq + 1);
        chunks.push(pb::LogChunk {
            stream,
            seq,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(pb::ReadLogsResponse {
        chunks,
        read,
        more,
        finished: false,
    })
}

/// `<logs_root>/<stream>/<seq>.jsonl` as (stream, seq).
fn chunk_of(url: &str, logs_root: &str) -> Option<(String, u64)> {
    let relative = url.strip_prefix(logs_root)?.trim_start_matches('/');
    let (stream, name) = relative.rsplit_once('/')?;
    let seq = name.strip_suffix(".jsonl")?.parse().ok()?;
    Some((stream.to_string(), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_give_their_stream_and_number() {
        let root = "file:///s/jobs/j-1/_logs";
        let url = "file:///s/jobs/j-1/_logs/gen/shard-2/attempt-3/rank-0/00000012.jsonl";
        assert_eq!(
            chunk_of(url, root),
            Some(("gen/shard-2/attempt-3/rank-0".to_string(), 12))
        );
        assert_eq!(chunk_of("file:///s/jobs/j-1/_logs/x/notes.txt", root), None);
        assert_eq!(chunk_of("file:///elsewhere/a/1.jsonl", root), None);
    }
}
