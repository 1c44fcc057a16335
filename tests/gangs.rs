//! Data-parallel gangs of real worker processes on loopback (the CPU backend): ranks
//! train as one process would on the same global batch and hold the same parameters
//! after every step; a gang that cannot be filled waits, holding nothing, and says why.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use outloud_coordinator::scheduler::{EventKind, Job};
use support::files::*;
use support::*;

/// The norm of the difference of two models over the norm of `reference`.
fn relative_difference(
    model: &BTreeMap<String, Vec<f32>>,
    reference: &BTreeMap<String, Vec<f32>>,
) -> f64 {
    assert_eq!(
        model.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    let (mut diff, mut norm) = (0.0, 0.0);
    for (name, values) in reference {
        for (a, b) in model[name].iter().zip(values) {
            diff += f64::from(a - b).powi(2);
            norm += f64::from(*b).powi(2);
        }
    }
    (diff / norm).sqrt()
}

fn gangs_leased(job: &Job) -> Vec<(u64, usize)> {
    job.history
        .iter()
        .filter_map(|e| match &e.what {
            EventKind::GangLeased { epoch, workers, .. } => Some((*epoch, workers.len())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_and_three_ranks_train_as_one_process_and_agree_after_every_step() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(30_000).await;
    let _workers = cluster.workers(3);
    let storage = cluster.storage();
    let steps = 8;
    // No warm-up, and a checkpoint half way: how far training moves the parameters in
    // 4 steps is the scale the gangs' distance from one process is measured against.
    let spec = |gang: &str| {
        gang_job(&storage, steps, gang)
            .replace("warmup_steps: 10", "warmup_steps: 0")
            .replace("checkpoint_every: 10", "checkpoint_every: 4")
    };
    let alone = cluster.submit(&spec("")).await;
    let alone = cluster
        .wait(&alone, Duration::from_secs(240), finished)
        .await;
    assert_succeeded(&alone);
    let last = committed_path(&alone, "language");
    let reference = parameters(&last);
    let halfway = parameters(&last.parent().unwrap().join("checkpoints/step-000004"));
    let moved = relative_difference(&halfway, &reference);
    for world in [2, 3] {
        // Every step the ranks compare parameter checksums: any difference fails the job.
        let gang = format!("world_size: {world}\ncheck_ranks_every: 1");
        let id = cluster.submit(&spec(&gang)).await;
        let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
        assert_succeeded(&job);
        assert_eq!(gangs_leased(&job).len(), 1, "{:?}", job.history);
        assert_eq!(gangs_leased(&job)[0].1, world);
        // AdamW moves each parameter by about the learning rate times the sign of its
        // gradient's running mean, so where a gradient is nearly zero the summation
        // order's last bits can flip a move: the stated tolerance after 8 steps is 1e-3
        // relative, and a hundredth of what 4 steps move them (the exact-gradient and
        // SGD checks are `parallel`'s unit tests).
        let trained = parameters(&committed_path(&job, "language"));
        let apart = relative_difference(&trained, &reference);
        eprintln!("{world} ranks: {apart:e} apart from one process; 4 steps move {moved:e}");
        assert!(apart < 1e-3, "{world} ranks: parameters {apart:e} apart");
        assert!(apart * 100.0 < moved, "{world} ranks: {apart:e} apart");
        let step = job.step("language").unwrap();
        let m = step.metrics();
        assert_eq!(m.step, steps);
        assert_eq!(m.tokens, alone.step("language").unwrap().metrics().tokens);
        assert!(m.allreduce_bytes > 0 && m.allreduce_seconds > 0.0, "{m:?}");
        let loss_gap = (m.loss - alone.step("language").unwrap().metrics().loss).abs();
        assert!(loss_gap < 1e-3, "{world} ranks: loss {loss_gap} apart");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gang_that_cannot_be_filled_waits_holding_nothing_and_says_why() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(30_000).await;
    let _worker = cluster.worker("only");
    let storage = cluster.storage();
    let two = cluster
        .submit(&gang_job(&storage, 4, "world_size: 2"))
        .await;
    let cuda = cluster.submit(&gang_job(&storage, 4, "device: cuda")).await;
    // Both prepare steps run; then neither training step can be placed.
    for id in [&two, &cuda] {
        cluster
            .wait(id, Duration::from_secs(120), |job| {
                job.step("language")
                    .is_some_and(|s| s.tasks.iter().any(|t| t.waiting.is_some()))
            })
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = cluster.coordinator.url.clone();
    let status = |id: &str| {
        let out = cli(&["--coordinator", &url, "status", id], None);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let said = status(&two);
    assert!(
        said.contains("language waiting for a gang of 2 Cpu workers: 1 idle now"),
        "{said}"
    );
    let said = status(&cuda);
    assert!(
        said.contains("language waiting for a Cuda worker"),
        "{said}"
    );
    let workers = cli(&["--coordinator", &url, "workers", "--json"], None);
    let workers: serde_json::Value = serde_json::from_slice(&workers.stdout).unwrap();
    let held = &workers[0]["leases"];
    assert_eq!(held.as_array().map(Vec::len), Some(0), "{workers}");
    // It advertises what placement matches on: its device's model and memory.
    let info = &workers[0]["info"];
    assert!(info["device_memory_bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(!info["device_name"].as_str().unwrap().is_empty(), "{info}");
}

#[test]
fn one_worker_per_gpu_is_refused_where_there_is_no_gpu() {
    let out = std::process::Command::new(bin("outloud-worker"))
        .args(["--gpus", "all", "--coordinator", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("no CUDA device that torch can use"), "{said}");
}
