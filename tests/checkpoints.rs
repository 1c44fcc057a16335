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
use outloud_core::storage::{Location, MULTIPART_FROM};
use sha2::Digest;
use support::files::*;
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
            && provenance["binary"].as_str().unwrap().contains(" (git ")
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

#[tokio::test(flavor = "multi_thread")]
async fn a_large_object_goes_up_in_parts_and_reads_back_whole() {
    let logs = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(logs.path());
    s3.create_bucket("outloud");
    let location = Location::open_with("s3://outloud/big/model.safetensors", s3.env()).unwrap();
    // Past the multipart threshold, not a whole number of parts, no repeating pattern.
    let bytes: Vec<u8> = (0..MULTIPART_FROM + 5_000_001)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    location.put(bytes.clone()).await.unwrap();
    assert!(location.get().await.unwrap() == bytes);
    // The server saw a multipart upload begin (its request log).
    let log = std::fs::read_to_string(logs.path().join("moto.log")).unwrap();
    assert!(log.contains("?uploads"), "no multipart upload in:\n{log}");

    // A folder deleted whole (as `outloud delete` does), in one batch request.
    let small = Location::open_with("s3://outloud/big/small.json", s3.env()).unwrap();
    small.put(b"{}".to_vec()).await.unwrap();
    let folder = Location::open_with("s3://outloud/big", s3.env()).unwrap();
    assert_eq!(folder.delete_all().await.unwrap(), 2);
    assert!(!folder.exists().await.unwrap());
    let log = std::fs::read_to_string(logs.path().join("moto.log")).unwrap();
    assert!(log.contains("?delete"), "no batch delete in:\n{log}");
}

/// Every committed checkpoint under `root` whose folder name has `marker` verifies: each
/// file its manifest lists is there with the SHA-256 the manifest says. Answers how
/// many there were.
async fn verify_all(root: &Location, marker: &str) -> usize {
    let objects = root.list().await.unwrap();
    let manifests: Vec<&Location> = objects
        .iter()
        .filter(|o| o.url().contains(marker) && o.url().ends_with("/manifest.json"))
        .collect();
    for manifest in &manifests {
        let folder = manifest.url().strip_suffix("/manifest.json").unwrap();
        let listed: serde_json::Value =
            serde_json::from_slice(&manifest.get().await.unwrap()).unwrap();
        for (file, digest) in listed["files"].as_object().unwrap() {
            let relative = format!("{folder}/{file}")[root.url().len() + 1..].to_string();
            let bytes = root.join(&relative).get().await;
            let bytes = bytes.unwrap_or_else(|e| panic!("{relative}: {e}"));
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                digest.as_str().unwrap()
            );
        }
    }
    manifests.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_server_paused_mid_phase_stalls_no_step_and_loses_nothing() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let s3 = S3Server::start(&cluster.logs());
    s3.create_bucket("outloud");
    let url = &cluster.coordinator.url;
    let _worker = start_worker_with_env(url, &cluster.logs(), "w", None, &s3.env());
    let yaml = language_job(std::path::Path::new("/unused"), DATA, 300, 10)
        .replace("storage: /unused", "storage: s3://outloud/runs");
    let id = cluster.submit(&yaml).await;
    let checkpointed = |job: &Job| job.step("language").unwrap().tasks[0].checkpoint.is_some();
    let before = cluster
        .wait(&id, Duration::from_secs(120), checkpointed)
        .await;

    // The server stops answering for 4 s, mid-upload or between uploads.
    s3.process.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = cluster.wait(&id, Duration::from_secs(5), |_| true).await;
    s3.process.signal("-CONT");
    // Training went on meanwhile: checkpoints are written off the training thread.
    assert!(
        trained_step(&during) >= trained_step(&before) + 10,
        "steps {} -> {} while the server was paused",
        trained_step(&before),
        trained_step(&during)
    );

    let job = cluster.wait(&id, Duration::from_secs(180), finished).await;
    assert_succeeded(&job);
    // Checkpoints that fell due while one hung were skipped, and the log says so.
    let log = std::fs::read_to_string(cluster.logs().join("w.log")).unwrap();
    assert!(log.contains("checkpoint skipped"), "{log}");
    let root = Location::open_with("s3://outloud/runs", s3.env()).unwrap();
    let committed = verify_all(&root, "/checkpoints/step-").await;
    assert!(committed >= 3, "{committed} intermediate checkpoints");
    assert_eq!(verify_all(&root, "/final").await, 1);
}

/// The largest difference between two sets of the same tensors.
fn largest_difference(
    a: &std::collections::BTreeMap<String, Vec<f32>>,
    b: &std::collections::BTreeMap<String, Vec<f32>>,
) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phase_starts_from_another_jobs_checkpoint_or_its_export_verified() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(5_000).await;
    let _worker = cluster.worker("only");
    let first = language_job(&cluster.storage(), DATA, 40, 100);
    let first = cluster.submit(&first).await;
    let first = cluster
        .wait(&first, Duration::from_secs(120), finished)
        .await;
    assert_succeeded(&first);
    let trained = committed_path(&first, "language");
    let exported = cluster.dir.path().join("exported");
    let to = exported.display().to_string();
    let url = &cluster.coordinator.url;
    let args = ["export", &first.id, "--phase", "language", "--to", &to];
    let export = cli(&[&args[..], &["--coordinator", url]].concat(), None);
    assert!(export.status.success(), "{export:?}");

    // Two phases of another job, one from each: a step so small that the weights it
    // ends with are those it started from, within a rounding.
    let phase = |name: &str, from: &std::path::Path| {
        format!(
            "  - {{name: {name}, kind: language, data: [corpus], steps: 1, learning_rate: 1e-9, init_from: {}}}\n",
            from.display()
        )
    };
    let yaml = language_job(&cluster.storage(), DATA, 1, 100);
    let yaml = yaml[..yaml.find("  - name: language").unwrap()].to_string()
        + &phase("from-checkpoint", &trained)
        + &phase("from-export", &exported);
    let second = cluster.submit(&yaml).await;
    let second = cluster
        .wait(&second, Duration::from_secs(120), finished)
        .await;
    assert_succeeded(&second);
    let started = parameters(&trained);
    for step in ["from-checkpoint", "from-export"] {
        let ended = committed_path(&second, step);
        let moved = largest_difference(&started, &parameters(&ended));
        assert!(
            moved < 1e-6,
            "{step}: weights {moved} from where they started"
        );
        // The tokenizer and the word ledger carry over; the manifest says from where.
        let same = |file: &str| std::fs::read(ended.join(file)).unwrap();
        assert!(same("tokenizer.json") == std::fs::read(trained.join("tokenizer.json")).unwrap());
        let unique = |job: &Job, step: &str| job.step(step).unwrap().metrics().unique_words;
        assert!(
            unique(&second, step) >= unique(&first, "language"),
            "{step}"
        );
        let manifest: serde_json::Value = serde_json::from_slice(&same("manifest.json")).unwrap();
        let imported = manifest["provenance"]["imported_from"].as_str().unwrap();
        let source = if step == "from-export" {
            &exported
        } else {
            &trained
        };
        assert!(
            imported.ends_with(&format!("{}/", source.display())),
            "{imported}"
        );
    }

    // Refused at submission: a folder that is no checkpoint, a model of another shape.
    let jobs = cluster.connection.jobs();
    let refusal = |yaml: String| {
        let mut jobs = jobs.clone();
        async move {
            let request = outloud_proto::v1::SubmitJobRequest {
                spec_yaml: yaml,
                source_name: "import.yaml".into(),
                working_dir: "/".into(),
            };
            let answer = jobs.submit_job(request).await;
            answer
                .expect_err("the spec was admitted")
                .message()
                .to_string()
        }
    };
    let not_one = refusal(yaml.replace(&to, &cluster.logs().display().to_string())).await;
    assert!(
        not_one.contains("import.yaml:8:")
            && not_one.contains("phases[1].init_from")
            && not_one.contains("no manifest.json"),
        "{not_one}"
    );
    let other_shape = refusal(yaml.replace("preset: tiny", "preset: small")).await;
    assert!(
        other_shape.contains("the checkpoint's model is d_model"),
        "{other_shape}"
    );

    // A changed byte in the export: the phase fails naming the file, loading nothing.
    let model = exported.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    let third = cluster.submit(&yaml).await;
    let third = cluster
        .wait(&third, Duration::from_secs(120), finished)
        .await;
    let error = third.error.clone().unwrap_or_default();
    assert!(error.contains("model.safetensors is corrupt"), "{error}");

    // `outloud delete`: a running job is refused; a finished one goes with its folder,
    // and nothing else does (its export, the shared data, the jobs that imported it).
    let outloud = |args: &[&str]| cli(&[args, &["--coordinator", url]].concat(), None);
    let long = language_job(&cluster.storage(), DATA, 100_000, 100_000);
    let long = cluster.submit(&long).await;
    let running = |job: &Job| trained_step(job) > 0;
    cluster.wait(&long, Duration::from_secs(60), running).await;
    let refused = outloud(&["delete", &long]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("outloud cancel"),
        "{said}"
    );
    assert!(outloud(&["cancel", &long]).status.success());
    let folder = cluster.storage().join("jobs").join(&first.id);
    assert!(folder.join("language").exists());
    // The failed third job may be retried, and one of its phases starts from the first.
    let refused = outloud(&["delete", &first.id]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&format!("of job `{}` (failed)", third.id)),
        "{said}"
    );
    assert!(outloud(&["delete", &third.id]).status.success());
    let deleted = outloud(&["delete", &first.id]);
    let said = String::from_utf8_lossy(&deleted.stdout);
    assert!(
        deleted.status.success() && said.contains("deleted"),
        "{deleted:?}"
    );
    assert!(!folder.exists(), "{} is still there", folder.display());
    let gone = outloud(&["status", &first.id]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("unknown job"),
        "{gone:?}"
    );
    assert!(exported.join("manifest.json").exists());
    assert!(cluster.storage().join("data").exists());
    assert!(
        committed_path(&second, "from-checkpoint")
            .join("manifest.json")
            .exists()
    );
}
