//! Checkpoints change nothing and resume to the bit: a phase that checkpoints in the
//! background every few steps, whose worker is killed at a random step and which
//! another worker resumes from its last checkpoint, ends with the same parameters and
//! optimizer state, byte for byte, as the same phase run without interruption and
//! without intermediate checkpoints (on CPU, same seed, same thread count: data order,
//! initialisation, optimizer steps and moments are all restored or derived from the
//! step).

mod support;

use std::time::{Duration, SystemTime};

use outloud_coordinator::scheduler::{EventKind, Job};
use sha2::Digest;
use support::*;

const DATA: &str = "  - {name: corpus, kind: generated_text, seed: 11, words: 60000}";
const STEPS: u64 = 150;
const EVERY: u64 = 7;

fn trained_step(job: &Job) -> u64 {
    job.step("language").unwrap().metrics().step
}

/// The final checkpoint's weights, optimizer state and manifest.
fn final_checkpoint(job: &Job) -> [Vec<u8>; 3] {
    let dir = committed_path(job, "language");
    [
        "model.safetensors",
        "optimizer.safetensors",
        "manifest.json",
    ]
    .map(|file| std::fs::read(dir.join(file)).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_change_nothing_and_a_phase_killed_at_a_random_step_resumes_to_the_same_bits() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(1_500).await;
    let spec = language_job(&cluster.storage(), DATA, STEPS, EVERY);
    let without_checkpoints = language_job(&cluster.storage(), DATA, STEPS, 10 * STEPS);

    let whole = {
        let _worker = cluster.worker("whole");
        let id = cluster.submit(&without_checkpoints).await;
        cluster.wait(&id, Duration::from_secs(180), finished).await
    };
    assert_succeeded(&whole);

    // A step after the first checkpoint and well before the end, different each run
    // (printed, to replay a failure).
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_at = EVERY + 1 + u64::from(nanos) % (STEPS - EVERY - 30);
    println!("killing the worker once it reports step {kill_at} or later");
    let mut first = cluster.worker("first");
    let id = cluster.submit(&spec).await;
    let before = cluster
        .wait(&id, Duration::from_secs(120), |job| {
            trained_step(job) >= kill_at
        })
        .await;
    first.sigkill();
    let killed_after = trained_step(&before);
    let _second = cluster.worker("second");
    let resumed = cluster.wait(&id, Duration::from_secs(180), finished).await;
    assert_succeeded(&resumed);
    let resumed_from = resumed.history.iter().find_map(|e| match &e.what {
        EventKind::Resumed { step, .. } => Some(*step),
        _ => None,
    });
    let resumed_from = resumed_from.expect("the second worker resumed from a checkpoint");
    assert!(
        resumed_from >= EVERY && resumed_from <= killed_after,
        "resumed from step {resumed_from}, killed after {killed_after}"
    );

    let [whole_model, whole_optimizer, whole_manifest] = final_checkpoint(&whole);
    let [model, optimizer, manifest] = final_checkpoint(&resumed);
    assert!(
        model == whole_model,
        "the weights differ after resuming at {resumed_from}"
    );
    assert!(
        optimizer == whole_optimizer,
        "the optimizer state differs after resuming at {resumed_from}"
    );
    let fields = |bytes: &[u8]| -> serde_json::Value {
        let mut manifest: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let fields = manifest.as_object_mut().unwrap();
        fields.remove("job");
        // The mean loss since the last progress report: reports follow the clock.
        fields.remove("loss");
        // The specs differ in how often they checkpoint, and say so.
        let spec = fields["provenance"]
            .as_object_mut()
            .unwrap()
            .remove("spec_sha256");
        assert_eq!(spec.unwrap().as_str().unwrap().len(), 64);
        manifest
    };
    // Same step, tokens, words, file checksums and data read.
    let (ours, theirs) = (fields(&manifest), fields(&whole_manifest));
    assert_eq!(ours, theirs);

    // Provenance: the program, and the checksum of exactly the text it read.
    let provenance = &ours["provenance"];
    assert!(
        provenance["binary"]
            .as_str()
            .unwrap()
            .starts_with("outloud-worker ")
    );
    let corpus = std::fs::read_dir(cluster.storage().join("data"))
        .unwrap()
        .next()
        .unwrap();
    let bytes = std::fs::read(corpus.unwrap().path()).unwrap();
    let digest = sha2::Sha256::digest(&bytes);
    assert_eq!(provenance["data"]["corpus"], hex::encode(digest));
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_checkpoints_and_the_final_one() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let _worker = cluster.worker("only");
    let spec = language_job(&cluster.storage(), DATA, 60, 5) + "    keep_checkpoints: 2\n";
    let id = cluster.submit(&spec).await;
    let job = cluster.wait(&id, Duration::from_secs(120), finished).await;
    assert_succeeded(&job);
    let attempt = committed_path(&job, "language")
        .parent()
        .unwrap()
        .to_path_buf();
    let mut kept: Vec<String> = std::fs::read_dir(attempt.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|dir| dir.join("manifest.json").exists())
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    // Checkpoints at 5, 10, ... 55 were written; the newest two are left (the one at 60
    // is the final one).
    assert_eq!(kept, ["step-000050", "step-000055"]);
    assert!(attempt.join("final/manifest.json").exists());
    // What was reported stays true of the newest: the task's checkpoint is one kept.
    let reported = job.step("language").unwrap().tasks[0]
        .checkpoint
        .clone()
        .unwrap();
    assert!(reported.ends_with("step-000055"), "{reported}");
}
