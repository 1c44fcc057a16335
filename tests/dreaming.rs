//! Self-synthesis with real processes: a synthesize step of 8 shards on 2 workers, one
//! of them SIGKILLed mid-step, commits exactly one caption file per shard, with every
//! unlabeled picture captioned once (none lost, none doubled); a corrupt picture is
//! counted and skipped; a stale commit is refused; training on the captions mixed with
//! the world's text follows, and the model it makes still sees. A worker that stalls
//! mid-shard (SIGSTOP) gets its shard duplicated on the idle one; the first commit wins.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use outloud_coordinator::scheduler::{EventKind, Job, RunState, TaskState};
use outloud_proto::v1 as pb;
use serde_json::Value;
use support::*;

const PER_PICTURE: usize = 4;

fn spec(storage: &std::path::Path) -> String {
    spec_of(storage, 8)
}

fn spec_of(storage: &std::path::Path, shards: u32) -> String {
    format!(
        "\
name: dream
storage: {}
data:
  - {{name: book, kind: picture_book, seed: 3, pictures: 600}}
model: {{preset: tiny, vision: {{encoder: vit, image_size: 16, patch_size: 8, d_model: 32, n_layers: 1, n_heads: 2}}}}
phases:
  - {{name: language, kind: language, data: [book], steps: 40, batch_size: 8}}
  - {{name: captions, kind: vision_language, data: [book], steps: 60, batch_size: 16}}
  - name: dreaming
    kind: self_synthesis
    synthesis:
      images: book
      shards: {shards}
      decoding: {{strategy: top_p, top_p: 0.9, temperature: 1.0, max_tokens: 24, captions_per_image: {PER_PICTURE}}}
    data: [{{source: dreaming, weight: 0.5}}, {{source: book, weight: 0.5}}]
    steps: 20
    batch_size: 8
",
        storage.display()
    )
}

/// Waits, polling often (a shard takes about a second here), until two workers hold
/// synthesize shards at once, or the job ends.
async fn both_holding_shards(cluster: &Cluster, id: &str) -> Job {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let job = job(&cluster.connection, id).await;
        let holders = synthesize_step(&job)
            .tasks
            .iter()
            .filter_map(|t| t.holder())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if holders == 2 || job.state.is_finished() || std::time::Instant::now() > deadline {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn synthesize_step(job: &Job) -> &outloud_coordinator::scheduler::Step {
    job.step("dreaming.synthesize").expect("a synthesize step")
}

/// How often the step's committed files caption each picture, checking that each
/// shard committed one file in the folder of the lease that committed it.
fn captions_per_picture(step: &outloud_coordinator::scheduler::Step) -> BTreeMap<String, usize> {
    let mut per_picture: BTreeMap<String, usize> = BTreeMap::new();
    for task in &step.tasks {
        let TaskState::Succeeded { output } = &task.state else {
            panic!("{:?}", task.state)
        };
        let folder = format!(
            "/shard-{}/attempt-{}/captions.jsonl",
            task.id.shard, task.epoch
        );
        assert!(output.ends_with(&folder), "{output}");
        let path = url::Url::parse(output).unwrap().to_file_path().unwrap();
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            assert!(row["logprob"].as_f64().unwrap() <= 0.0);
            assert!(
                row["checkpoint"]
                    .as_str()
                    .unwrap()
                    .contains("/captions/attempt-")
            );
            *per_picture
                .entry(row["image"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    per_picture
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_commit_exactly_once_through_a_kill_and_training_follows() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(2_000).await;
    let mut workers = cluster.workers(2);
    let id = cluster.submit(&spec(&cluster.storage())).await;

    // Once the world is written, break one unlabeled picture: it is counted, not fatal.
    let ready = cluster
        .wait(&id, Duration::from_secs(120), |job| {
            job.step("prepare").unwrap().state == RunState::Succeeded
        })
        .await;
    assert_eq!(ready.state, RunState::Running);
    let world = std::fs::read_dir(cluster.storage().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let unlabeled: Vec<_> = std::fs::read_dir(world.join("unlabeled/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::write(&unlabeled[0], b"not a png").unwrap();

    // Both workers mid-step, each holding a shard: kill one, start another.
    let busy = both_holding_shards(&cluster, &id).await;
    assert_eq!(busy.state, RunState::Running, "{:?}", busy.error);
    workers[0].sigkill();
    let _third = cluster.worker("w2");

    let job = cluster.wait(&id, Duration::from_secs(300), finished).await;
    assert_succeeded(&job);
    let step = synthesize_step(&job);
    assert_eq!(step.tasks.len(), 8);
    let lost = job
        .history
        .iter()
        .filter(|e| matches!(&e.what, EventKind::LeaseLost { task, .. } if task.step == step.tasks[0].id.step))
        .count();
    assert!(lost >= 1, "the killed worker lost a shard's lease");

    // One committed file per shard, in the folder of the lease that committed it; all
    // rows together caption every readable picture exactly PER_PICTURE times.
    let per_picture = captions_per_picture(step);
    let results = step.results();
    let made = results.counts.synthesis;
    assert_eq!(
        results.counts.images_skipped, 1,
        "the corrupt picture is counted"
    );
    assert_eq!(made.pictures as usize, unlabeled.len() - 1);
    assert_eq!(made.captions as usize, made.pictures as usize * PER_PICTURE);
    assert_eq!(made.kept as usize, per_picture.values().sum::<usize>());
    assert_eq!(
        made.kept + made.too_short,
        made.captions,
        "only empty captions go"
    );
    assert!(
        per_picture.values().all(|&n| n <= PER_PICTURE),
        "no caption doubled"
    );
    assert!(
        per_picture.len() as u64 >= made.pictures / 2,
        "{per_picture:?}"
    );
    let accuracy = results
        .probes
        .iter()
        .find(|p| p.name == "dream_caption_accuracy")
        .unwrap();
    assert!(accuracy.chance.is_some() && accuracy.items == made.kept);
    // Distinct captions are counted before the filters (after `dedupe` all would be).
    let distinct = results.probe("distinct_captions").unwrap();
    assert_eq!(distinct.items, made.captions);

    // The killed worker's lease is stale: its commit of its own attempt is refused.
    let stale_epoch = step
        .tasks
        .iter()
        .find(|t| t.epoch >= 2)
        .map(|t| (t.id.clone(), t.epoch - 1));
    if let Some((task, epoch)) = stale_epoch {
        let workers_json = cli(
            &[
                "workers",
                "--json",
                "--coordinator",
                &cluster.coordinator.url,
            ],
            None,
        );
        let all: Value = serde_json::from_slice(&workers_json.stdout).unwrap();
        let dead = all
            .as_array()
            .unwrap()
            .iter()
            .find(|w| !w["alive"].as_bool().unwrap_or(true));
        let worker_id = dead.map_or("w-unknown".to_string(), |w| {
            w["id"].as_str().unwrap().to_string()
        });
        let lease = pb::LeaseRef {
            task_id: task.to_string(),
            epoch,
        };
        let output = format!("whatever/attempt-{epoch}/captions.jsonl");
        let refused = cluster.refused_commit(worker_id, lease, output).await;
        assert!(
            matches!(
                refused.code(),
                tonic::Code::FailedPrecondition | tonic::Code::NotFound
            ),
            "{refused:?}"
        );
    }

    // Training on the captions and the world's text: the loss fell and the checkpoint
    // still carries the vision path.
    let train = job.step("dreaming").unwrap();
    assert!(train.metrics().loss < train.first_loss().unwrap());
    // The word ledger counts the dreamed words apart: about half, at weight 0.5.
    let m = train.metrics();
    let share = m.synthetic_words as f64 / m.words as f64;
    assert!(
        m.synthetic_words > 0 && share > 0.15 && share < 0.85,
        "{m:?}"
    );
    let manifest = committed_path(&job, "dreaming").join("manifest.json");
    let manifest: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(manifest["vision"]["image_size"], 16);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_shard_is_duplicated_and_the_first_commit_wins() {
    let _one_at_a_time = exclusive().await;
    // Leases outlast the test: the stalled worker never loses its lease by silence.
    let cluster = Cluster::start(120_000).await;
    let workers = cluster.workers(2);
    let id = cluster.submit(&spec_of(&cluster.storage(), 4)).await;
    let busy = both_holding_shards(&cluster, &id).await;
    assert_eq!(busy.state, RunState::Running, "{:?}", busy.error);
    // Stall one worker mid-shard: the other finishes the rest, then, idle, gets a
    // duplicate of the stalled shard, commits it, and the job goes on without waiting.
    workers[0].signal("-STOP");
    let job = cluster.wait(&id, Duration::from_secs(300), finished).await;
    assert_succeeded(&job);
    let step = synthesize_step(&job);
    let duplicated: Vec<_> = job
        .history
        .iter()
        .filter_map(|e| match &e.what {
            EventKind::Duplicated { task, epoch, .. } => Some((task.clone(), *epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(duplicated.len(), 1, "{duplicated:?}");
    let stalled = duplicated[0].0.clone();
    let task = step.tasks.iter().find(|t| t.id == stalled).unwrap();
    assert_eq!(task.epoch, duplicated[0].1, "the duplicate committed");
    // One file a shard; every picture captioned exactly as often as asked.
    let per_picture = captions_per_picture(step);
    let made = step.results().counts.synthesis;
    assert_eq!(made.kept as usize, per_picture.values().sum::<usize>());
    assert!(per_picture.values().all(|&n| n <= PER_PICTURE));
    // The stalled worker wakes up: it is told to stop, and what was committed stays.
    workers[0].signal("-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = job_of(&cluster, &id).await;
    let again = synthesize_step(&after)
        .tasks
        .iter()
        .find(|t| t.id == stalled)
        .unwrap();
    assert_eq!(again.state, task.state);
    assert_eq!(after.state, RunState::Succeeded);
}

async fn job_of(cluster: &Cluster, id: &str) -> Job {
    job(&cluster.connection, id).await
}
