//! A real coordinator and real workers on loopback train phase 1, survive a killed
//! worker and a killed coordinator, and leave verified checkpoints in storage.

mod support;

use std::path::Path;
use std::time::Duration;

use outloud_coordinator::scheduler::{EventKind, Job, RunState, TaskState};
use outloud_proto::v1 as pb;
use support::*;

const GENERATED: &str = "  - {name: corpus, kind: generated_text, seed: 11, words: 60000}";

/// The final loss is clearly below the first, and the final checkpoint is complete.
fn assert_trained(job: &Job, storage: &Path, margin: f64) {
    assert_succeeded(job);
    let phase = &job.step("language").unwrap();
    let first = phase.first_loss().expect("a first loss was reported");
    let last = phase.metrics().loss;
    assert!(
        last < first - margin,
        "loss went from {first:.3} to {last:.3}: not down by {margin}"
    );
    let dir = committed_path(job, "language");
    assert!(
        dir.starts_with(storage) && dir.ends_with("final"),
        "{dir:?}"
    );
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "manifest.json",
    ] {
        let path = dir.join(file);
        assert!(
            path.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{} missing",
            path.display()
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["step"], phase.metrics().total_steps);
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tokenizer["model"]["type"], "BPE");
}

fn events(job: &Job) -> Vec<&EventKind> {
    job.history.iter().map(|e| &e.what).collect()
}

/// The step the task resumed from, if a lease resumed from a checkpoint.
fn resumed_step(job: &Job) -> Option<u64> {
    job.history.iter().find_map(|e| match &e.what {
        EventKind::Resumed { step, .. } => Some(*step),
        _ => None,
    })
}

/// A cluster whose one worker, `first`, trains a generated-text job that checkpoints
/// every 40 steps.
async fn one_worker_training(lease_timeout_ms: u64, steps: u64) -> (Cluster, Process, String) {
    let cluster = Cluster::start(lease_timeout_ms).await;
    let first = cluster.worker("first");
    let id = cluster
        .submit(&language_job(&cluster.storage(), GENERATED, steps, 40))
        .await;
    (cluster, first, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_train_phase_one_on_generated_text() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let _workers = cluster.workers(2);
    let storage = cluster.storage();
    let id = cluster
        .submit(&language_job(&storage, GENERATED, 200, 50))
        .await;
    let job = cluster.wait(&id, Duration::from_secs(180), finished).await;
    assert_trained(&job, &storage, 2.0);
    // The generated corpus was written into the job's storage and read from there.
    assert_eq!(std::fs::read_dir(storage.join("data")).unwrap().count(), 1);
    // Intermediate checkpoints exist and were reported.
    assert!(
        storage
            .join(format!(
                "jobs/{id}/language/attempt-1/checkpoints/step-000150/manifest.json"
            ))
            .exists()
    );
    assert!(
        events(&job)
            .iter()
            .any(|e| matches!(e, EventKind::Checkpointed { step: 150, .. }))
    );
    // Both workers registered; the CLI's JSON views show them and the job.
    let url = &cluster.coordinator.url;
    let workers: serde_json::Value =
        serde_json::from_slice(&cli(&["workers", "--json", "--coordinator", url], None).stdout)
            .unwrap();
    assert_eq!(workers.as_array().unwrap().len(), 2);
    let status: serde_json::Value =
        serde_json::from_slice(&cli(&["status", &id, "--json", "--coordinator", url], None).stdout)
            .unwrap();
    let steps = status["steps"].as_array().unwrap();
    let phase = steps.iter().find(|s| s["name"] == "language").unwrap();
    assert_eq!(steps[0]["kind"]["kind"], "prepare");
    assert_eq!(
        (&status["state"], &phase["state"]),
        (&"succeeded".into(), &"succeeded".into())
    );
    assert_eq!(phase["metrics"]["step"], 200);
    assert!(phase["metrics"]["words"].as_u64().unwrap() > 0);
    assert!(phase["metrics"]["loss"].as_f64().unwrap() < phase["first_loss"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn phase_one_learns_from_real_babylm_text() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let _workers = cluster.workers(2);
    let text = shared_data().join("babylm-text/train");
    let data = format!("  - {{name: corpus, kind: text, path: {}}}", text.display());
    let id = cluster
        .submit(&language_job(&cluster.storage(), &data, 200, 100))
        .await;
    let job = cluster.wait(&id, Duration::from_secs(300), finished).await;
    assert_trained(&job, &cluster.storage(), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_task_resumes_elsewhere_and_its_late_reports_are_refused() {
    let _one_at_a_time = exclusive().await;
    let (cluster, mut first, id) = one_worker_training(1_500, 600).await;
    let before = cluster
        .wait(&id, Duration::from_secs(120), |job| {
            job.step("language").unwrap().tasks[0].checkpoint.is_some()
        })
        .await;
    let task = &before.step("language").unwrap().tasks[0];
    let (victim, old_epoch) = match &task.state {
        TaskState::Leased { worker, .. } => (worker.clone(), task.epoch),
        other => panic!("expected a leased task, got {other:?}"),
    };
    let _second = cluster.worker("second");
    first.sigkill();

    let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
    assert_succeeded(&job);
    let history = events(&job);
    let lost = history.iter().any(|e| matches!(e, EventKind::LeaseLost { worker, epoch, .. } if *worker == victim && *epoch == old_epoch));
    assert!(lost, "{history:#?}");
    let (new_worker, resume_from) = history
        .iter()
        .find_map(|e| match e {
            EventKind::Leased {
                worker,
                epoch,
                resume_from,
                ..
            } if *epoch == old_epoch + 1 => Some((worker.clone(), resume_from.clone())),
            _ => None,
        })
        .expect("the task was leased again");
    assert_ne!(new_worker, victim);
    assert!(
        resume_from.is_some(),
        "the new lease resumes from the last checkpoint"
    );
    let resumed_step = resumed_step(&job);
    assert!(
        resumed_step.unwrap_or(0) >= 40,
        "training resumed from a checkpoint, not from scratch: {resumed_step:?}"
    );

    // The dead worker's lease is stale: a late report under the old epoch is refused.
    let stale = pb::LeaseRef {
        task_id: task.id.to_string(),
        epoch: old_epoch,
    };
    let late = pb::ReportProgressRequest {
        worker_id: victim.clone(),
        lease: Some(stale.clone()),
        ..Default::default()
    };
    let refused = cluster
        .connection
        .workers()
        .report_progress(late)
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    // Its commit of what it wrote in its own attempt's folder is refused too, and what
    // the job committed is the new lease's, in the new attempt's folder.
    let zombie_output = committed(&job, "language").replace(
        &format!("/attempt-{}/", old_epoch + 1),
        &format!("/attempt-{old_epoch}/"),
    );
    let refused = cluster
        .refused_commit(victim, stale, zombie_output.clone())
        .await;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let after = cluster.wait(&id, Duration::from_secs(5), finished).await;
    assert_ne!(committed(&after, "language"), zombie_output);
    assert_eq!(
        after.step("language").unwrap().tasks[0].epoch,
        old_epoch + 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_sigterm_hands_its_task_back_at_once() {
    let _one_at_a_time = exclusive().await;
    // A lease timeout far longer than the test: only a handed-back task can move on.
    let (cluster, mut first, id) = one_worker_training(600_000, 300).await;
    cluster
        .wait(&id, Duration::from_secs(120), |job| {
            job.step("language").unwrap().tasks[0].checkpoint.is_some()
        })
        .await;
    let _second = cluster.worker("second");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let job = cluster.wait(&id, Duration::from_secs(120), finished).await;
    assert_succeeded(&job);
    first.sigkill();
    let handed_back = job.history.iter().any(
        |e| matches!(&e.what, EventKind::LeaseLost { reason, .. } if reason.contains("stopped")),
    );
    assert!(handed_back, "{:#?}", events(&job));
    assert_eq!(job.step("language").unwrap().tasks[0].epoch, 2);
    assert_eq!(
        job.step("language").unwrap().tasks[0].lost_leases,
        0,
        "a hand-back is not a failed attempt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_coordinator_restarts_and_the_job_completes_with_its_history() {
    let _one_at_a_time = exclusive().await;
    let mut cluster = Cluster::start(5_000).await;
    let _workers = cluster.workers(2);
    let id = cluster
        .submit(&language_job(&cluster.storage(), GENERATED, 500, 50))
        .await;
    let before = cluster
        .wait(&id, Duration::from_secs(120), |job| {
            job.step("language").unwrap().metrics().step >= 60
        })
        .await;
    assert_eq!(before.state, RunState::Running);

    cluster.coordinator.process.sigkill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let state = cluster.dir.path().join("state");
    cluster.coordinator = Coordinator::start(&state, cluster.coordinator.port, 5_000, None);
    let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
    assert_succeeded(&job);
    // Nothing acknowledged before the kill was lost: the old history is a prefix of the new.
    assert!(job.history.len() > before.history.len());
    assert_eq!(&job.history[..before.history.len()], &before.history[..]);
    assert_eq!(job.submitted_at, before.submitted_at);
    assert_trained(&job, &cluster.storage(), 2.0);
    let listed = cli(
        &["jobs", "--json", "--coordinator", &cluster.coordinator.url],
        None,
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn phase_one_reads_and_checkpoints_through_s3() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let s3 = S3Server::start(&cluster.logs());
    s3.create_bucket("outloud");
    let _workers: Vec<_> = (0..2)
        .map(|i| {
            start_worker_with_env(
                &cluster.coordinator.url,
                &cluster.logs(),
                &format!("w{i}"),
                None,
                &s3.env(),
            )
        })
        .collect();
    let yaml = language_job(Path::new("/unused"), GENERATED, 100, 50)
        .replace("storage: /unused", "storage: s3://outloud/runs");
    let id = cluster.submit(&yaml).await;
    let job = cluster.wait(&id, Duration::from_secs(180), finished).await;
    assert_succeeded(&job);
    let output = committed(&job, "language");
    assert!(output.starts_with("s3://outloud/runs/jobs/"), "{output}");
    let attempt = output.strip_suffix("/final").unwrap();

    // The checkpoint and the generated corpus are objects in the S3 server.
    let root = outloud_core::storage::Location::open_with("s3://outloud/runs", s3.env()).unwrap();
    let names: Vec<String> = root
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.url().to_string())
        .collect();
    for expected in [
        "final/model.safetensors",
        "final/manifest.json",
        "final/tokenizer.json",
        "checkpoints/step-000050/manifest.json",
    ] {
        let wanted = format!("{attempt}/{expected}");
        assert!(names.contains(&wanted), "{wanted} not in {names:#?}");
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("s3://outloud/runs/data/corpus-seed11")),
        "{names:#?}"
    );
    let manifest = outloud_core::storage::Location::open_with(&output, s3.env())
        .unwrap()
        .join("manifest.json")
        .get()
        .await
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["step"], 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_checkpoint_is_refused_and_the_one_before_it_is_used() {
    let _one_at_a_time = exclusive().await;
    let (cluster, mut first, id) = one_worker_training(1_500, 600).await;
    let has_two = |job: &Job| {
        job.step("language").unwrap().tasks[0]
            .checkpoint
            .as_deref()
            .is_some_and(|c| !c.ends_with("step-000040"))
    };
    cluster.wait(&id, Duration::from_secs(120), has_two).await;
    first.sigkill();
    // The newest checkpoint the coordinator knows is the one a new lease would resume from.
    let newest = job(&cluster.connection, &id)
        .await
        .step("language")
        .unwrap()
        .tasks[0]
        .checkpoint
        .clone()
        .unwrap();
    let step: u64 = newest.rsplit("step-").next().unwrap().parse().unwrap();
    let weights =
        std::path::PathBuf::from(newest.strip_prefix("file://").unwrap()).join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&weights, bytes).unwrap();

    let _second = cluster.worker("second");
    let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
    assert_succeeded(&job);
    let resumed = resumed_step(&job);
    assert_eq!(
        resumed,
        Some(step - 40),
        "the corrupt step-{step} checkpoint must be skipped, not loaded"
    );
    let log = std::fs::read_to_string(cluster.logs().join("second.log")).unwrap();
    assert!(log.contains("model.safetensors is corrupt"), "{log}");
}

/// A loss that becomes NaN stops the phase at once, for good (another try would diverge
/// the same way), and nothing is saved after it: no final checkpoint of NaN weights.
#[tokio::test(flavor = "multi_thread")]
async fn a_loss_that_becomes_nan_fails_the_phase_and_saves_nothing_after_it() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let _worker = cluster.worker("w");
    let yaml = language_job(&cluster.storage(), GENERATED, 60, 10)
        .replace("learning_rate: 0.003", "learning_rate: 1.0e+30")
        .replace("warmup_steps: 10", "warmup_steps: 0");
    let id = cluster.submit(&yaml).await;
    let job = cluster.wait(&id, Duration::from_secs(60), finished).await;
    assert_eq!(job.state, RunState::Failed);
    let error = job.error.clone().unwrap_or_default();
    assert!(error.contains("diverged: the loss became"), "{error}");
    let task = &job.step("language").unwrap().tasks[0];
    assert_eq!((task.epoch, task.lost_leases), (1, 0), "not retried");
    let last = cluster
        .storage()
        .join(format!("jobs/{id}/language/attempt-1/final"));
    assert!(!last.exists(), "no final checkpoint after a NaN loss");
}
