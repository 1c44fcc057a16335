//! A gang of real worker processes survives a rank that dies (SIGKILL) or hangs
//! (SIGSTOP): the others give up within the collective timeout instead of waiting,
//! the coordinator revokes the gang, forms it again from the workers that are there,
//! and training resumes from the last checkpoint with the same global batch.

mod support;

use std::time::{Duration, Instant};

use outloud_coordinator::scheduler::{EventKind, Job, TaskState};
use support::*;

/// The training task's epoch and its gang's size while it is leased.
fn gang_of(job: &Job) -> Option<(u64, usize)> {
    let task = &job.step("language")?.tasks[0];
    match &task.state {
        TaskState::Leased { ranks, .. } => Some((task.epoch, ranks.len() + 1)),
        _ => None,
    }
}

/// Waits until the gang of `world` trains and has written a checkpoint.
async fn training_with_checkpoint(cluster: &Cluster, id: &str, world: usize) -> Job {
    let job = cluster
        .wait(id, Duration::from_secs(180), |job| {
            let checkpointed = job
                .step("language")
                .is_some_and(|s| s.tasks[0].checkpoint.is_some());
            finished(job) || (checkpointed && gang_of(job).is_some_and(|g| g.1 == world))
        })
        .await;
    assert!(!finished(&job), "finished before a rank could be lost");
    job
}

/// `workers` workers training a 300-step phase on a gang of `min`..`max` ranks whose
/// collectives give up after `timeout_ms`, once the largest gang trains and has written
/// a checkpoint: the cluster, its workers, the job and the gang's epoch. Leases outlast
/// the test: the gang is revoked by its ranks, not by silence.
async fn gang_training(
    workers: usize,
    (min, max): (u32, u32),
    timeout_ms: u64,
) -> (Cluster, Vec<Process>, String, u64) {
    let cluster = Cluster::start(120_000).await;
    let processes = cluster.workers(workers);
    let gang = format!(
        "min_world_size: {min}\nmax_world_size: {max}\ngang_grace_ms: 500\n\
         collective_timeout_ms: {timeout_ms}"
    );
    let id = cluster
        .submit(&gang_job(&cluster.storage(), 300, &gang))
        .await;
    let job = training_with_checkpoint(&cluster, &id, max as usize).await;
    let (epoch, _) = gang_of(&job).unwrap();
    (cluster, processes, id, epoch)
}

/// Waits until the gang trains under an epoch past `epoch`; answers how long that took.
async fn revoked_after(cluster: &Cluster, id: &str, epoch: u64) -> Duration {
    let started = Instant::now();
    cluster
        .wait(id, Duration::from_secs(120), |job| {
            finished(job)
                || job
                    .step("language")
                    .is_some_and(|s| s.tasks[0].epoch > epoch)
        })
        .await;
    started.elapsed()
}

/// Training after the loss: resumed from a checkpoint, loss down, ranks of the new
/// gang as expected.
fn assert_resumed(job: &Job, gangs: &[usize]) {
    assert_succeeded(job);
    let formed: Vec<usize> = job
        .history
        .iter()
        .filter_map(|e| match &e.what {
            EventKind::GangLeased { workers, .. } => Some(workers.len()),
            _ => None,
        })
        .collect();
    assert_eq!(formed, gangs, "{:?}", job.history);
    let resumed = job.history.iter().find_map(|e| match &e.what {
        EventKind::Resumed { step, .. } => Some(*step),
        _ => None,
    });
    assert!(resumed.is_some_and(|s| s >= 10), "{:?}", job.history);
    let revoked = job.history.iter().any(|e| {
        matches!(&e.what, EventKind::LeaseLost { reason, .. } if reason.contains("gang was revoked"))
    });
    assert!(revoked, "{:?}", job.history);
    let step = job.step("language").unwrap();
    assert!(step.metrics().loss < step.first_loss().unwrap() - 0.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_rank_revokes_the_gang_which_resumes_smaller_from_its_checkpoint() {
    let _one_at_a_time = exclusive().await;
    let (cluster, mut workers, id, epoch) = gang_training(2, (1, 2), 5_000).await;
    workers[1].sigkill();
    let took = revoked_after(&cluster, &id, epoch).await;
    assert!(took < Duration::from_secs(5 + 3), "revoked after {took:?}");
    // The survivor trains alone, accumulating two micro-batches a step.
    let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
    assert_resumed(&job, &[2, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_rank_is_given_up_within_the_timeout_and_the_others_go_on() {
    let _one_at_a_time = exclusive().await;
    let (cluster, workers, id, epoch) = gang_training(3, (2, 3), 3_000).await;
    // A hang: the process lives, holds its sockets open, and never answers.
    workers[2].signal("-STOP");
    let took = revoked_after(&cluster, &id, epoch).await;
    assert!(took < Duration::from_secs(3 + 3), "revoked after {took:?}");
    let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
    assert_resumed(&job, &[3, 2]);
    // The hung worker wakes: its stale rank is refused, and nothing changes.
    workers[2].signal("-CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = support::job(&cluster.connection, &id).await;
    assert_eq!(after.state, job.state);
    assert_eq!(
        after.step("language").unwrap().tasks[0].epoch,
        job.step("language").unwrap().tasks[0].epoch
    );
}
