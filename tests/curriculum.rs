//! The curriculum end to end on the picture-book world, through real processes:
//! phase 1 (language), phase 2 (captioning), phase 4 (question answering), each starting
//! from the one before, each followed by an eval step on the world's held-out
//! benchmarks, each better than chance on them.

mod support;

use std::time::Duration;

use outloud_coordinator::scheduler::StepKind;
use outloud_core::results::{ScoreMode, TaskResults};

use sha2::Digest;
use support::*;

/// A 1x1 PNG, for a user-supplied caption folder.
const ONE_PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

#[tokio::test(flavor = "multi_thread")]
async fn phases_one_two_and_four_beat_chance_on_held_out_pictures() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(10_000).await;
    let _workers = cluster.workers(2);

    // A user's own captions beside the generated world: two good pictures, a corrupt
    // one and a missing one, which must be skipped and counted.
    let own = cluster.dir.path().join("own");
    std::fs::create_dir_all(own.join("images")).unwrap();
    std::fs::write(own.join("images/a.png"), ONE_PIXEL_PNG).unwrap();
    std::fs::write(own.join("images/b.png"), ONE_PIXEL_PNG).unwrap();
    std::fs::write(own.join("images/broken.png"), b"not a picture").unwrap();
    let rows = ["a.png", "b.png", "broken.png", "missing.png"]
        .map(|f| format!("{{\"image\": \"images/{f}\", \"caption\": \"a red circle.\"}}\n"))
        .concat();
    std::fs::write(own.join("captions.jsonl"), rows).unwrap();

    let yaml = format!(
        "name: curriculum
storage: {storage}
word_budget: 2000000
data:
  - {{name: book, kind: picture_book, seed: 5, pictures: 600}}
  - {{name: own, kind: image_captions, path: {own}/captions.jsonl}}
model:
  preset: tiny
  vision: {{image_size: 32, patch_size: 8, d_model: 64, n_layers: 2, n_heads: 4}}
evaluation: {{benchmarks: [{{data: book}}]}}
phases:
  - {{name: language, kind: language, data: [book], steps: 200, batch_size: 16, words: 1000000}}
  - {{name: captions, kind: vision_language, data: [book, own], steps: 700, batch_size: 32, learning_rate: 0.002}}
  - {{name: questions, kind: tasks, data: [book], steps: 500, batch_size: 32, learning_rate: 0.002}}
",
        storage = cluster.storage().display(),
        own = own.display()
    );
    let id = cluster.submit(&yaml).await;
    let job = cluster.wait(&id, Duration::from_secs(600), finished).await;
    assert_succeeded(&job);

    let names: Vec<&str> = job.steps.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prepare",
            "language",
            "language.eval",
            "captions",
            "captions.eval",
            "questions",
            "questions.eval"
        ]
    );
    let captions = job.step("captions").unwrap().results();
    assert_eq!(captions.counts.images_skipped, 2, "{captions:?}");
    let probe = captions
        .probe("caption_accuracy")
        .expect("the caption probe ran");
    assert!(
        probe.value > probe.chance.unwrap() + 0.05 && probe.items > 0,
        "{captions:?}"
    );

    // Every phase's effect shows in its eval step.
    let (after_language, after_captions, after_questions) = (
        job.step("language.eval").unwrap().results(),
        job.step("captions.eval").unwrap().results(),
        job.step("questions.eval").unwrap().results(),
    );
    eprintln!(
        "after language: {after_language:?}\nafter captions: {after_captions:?}\nafter questions: {after_questions:?}"
    );
    let beats = |results: &TaskResults, name: &str, margin: f64| {
        let score = results.benchmark(name).expect("the benchmark was scored");
        assert!(
            score.accuracy > score.chance + margin,
            "{name}: {} vs chance {}",
            score.accuracy,
            score.chance
        );
    };
    beats(&after_language, "world_grammar", 0.2);
    // Without a vision path, questions about pictures are not scored at all.
    assert!(after_language.benchmark("world_vqa").is_none());
    assert_eq!(
        after_captions
            .benchmark("world_picture_choice")
            .unwrap()
            .mode,
        Some(ScoreMode::WithPictures)
    );
    beats(&after_captions, "world_picture_choice", 0.1);
    beats(&after_questions, "world_vqa", 0.1);
    assert!(after_questions.benchmark("world_winoground").is_some());

    // Words are counted per phase and the planned ones stay within the budget.
    let trained = job
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Train { .. }));
    for step in trained {
        assert!(step.metrics().words > 0, "{} counted no words", step.name);
    }
    assert!(job.step("language").unwrap().metrics().words <= 1_000_000 + 16 * 64);
    // The ledger: each lineage's distinct words only grow from phase to phase, and the
    // language phase, reading the same small world's text many times over, has read
    // far fewer distinct words than it consumed.
    let unique = |step: &str| job.step(step).unwrap().metrics().unique_words;
    let language = job.step("language").unwrap().metrics();
    assert!(
        language.unique_words > 0 && 5 * language.unique_words < language.words,
        "{language:?}"
    );
    assert!(
        unique("captions") > unique("language"),
        "{}",
        unique("captions")
    );
    assert!(
        unique("questions") > unique("captions"),
        "{}",
        unique("questions")
    );
    let status = cli(
        &["status", &id, "--coordinator", &cluster.coordinator.url],
        None,
    );
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains("caption_accuracy")
            && table.contains("word budget: 1000000 of 2000000")
            && table.contains("UNIQUE (LINEAGE)"),
        "{table}"
    );
    // Each phase's final checkpoint records the vision path once pictures are involved.
    let manifest = |phase: &str| -> serde_json::Value {
        let path = committed_path(&job, phase).join("manifest.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert!(manifest("language").get("vision").is_none());
    assert_eq!(manifest("captions")["vision"]["image_size"], 32);

    // Provenance covers pictures: what was read of each source (its rows and every
    // picture they name that was there, the corrupt one too), by SHA-256.
    let sha = |bytes: &[u8]| hex::encode(sha2::Sha256::digest(bytes));
    let listing: String = [
        "captions.jsonl",
        "images/a.png",
        "images/b.png",
        "images/broken.png",
    ]
    .map(|file| format!("{file} {}\n", sha(&std::fs::read(own.join(file)).unwrap())))
    .concat();
    let read = &manifest("captions")["provenance"]["data"];
    assert_eq!(read["own#captions"], sha(listing.as_bytes()), "{read}");
    assert_eq!(read["book#captions"].as_str().unwrap().len(), 64, "{read}");
    let asked = &manifest("questions")["provenance"]["data"];
    assert_eq!(
        asked["book#questions"].as_str().unwrap().len(),
        64,
        "{asked}"
    );
}
