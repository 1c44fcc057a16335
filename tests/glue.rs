//! GLUE outside jobs: `outloud-worker finetune CHECKPOINT GLUE_DIR` fine-tunes a phase-1
//! checkpoint on the real BabyLM GLUE files, task by task, writes each task's
//! predictions in the 2025 pipeline's layout, and says which tasks could not run. Its
//! first batch's ids, logits and loss equal PyTorch's (scripts/glue_reference.py). Its
//! first batch's ids, logits and loss equal PyTorch's (scripts/glue_reference.py).

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_is_fine_tuned_per_task_and_a_task_without_training_data_is_not_run() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(10_000).await;
    let _worker = cluster.worker("w0");
    let data = format!(
        "  - {{name: corpus, kind: text, path: {}}}",
        shared_data().join("babylm-text/train").display()
    );
    let id = cluster
        .submit(&language_job(&cluster.storage(), &data, 60, 60))
        .await;
    let job = cluster.wait(&id, Duration::from_secs(300), finished).await;
    assert_succeeded(&job);
    let checkpoint = committed(&job, "language");

    let out = tempfile::tempdir().unwrap();
    let run = Command::new(bin("outloud-worker"))
        .args(["--threads", "2", "finetune", &checkpoint])
        .arg(shared_data().join("glue"))
        .args([
            "--tasks",
            "rte,boolq",
            "--epochs",
            "1",
            "--max-steps",
            "12",
            "--out",
        ])
        .arg(out.path())
        .arg("--dump-first-batch")
        .arg(out.path().join("first"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    eprintln!("{printed}");
    assert!(
        run.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // BoolQ has no training file in this copy: said, and left out of the mean.
    assert!(
        printed.contains("boolq      not run: no training data"),
        "{printed}"
    );
    assert!(
        printed.contains("GLUE (accuracy, mean of 1 tasks)"),
        "{printed}"
    );
    let rte = printed.lines().find(|l| l.starts_with("rte ")).unwrap();
    let accuracy: f64 = rte.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accuracy > 0.0 && accuracy < 100.0, "{rte}");

    // One prediction per validation line, in line order, as the 2025 scorer reads them.
    let file = out.path().join("rte/predictions.json");
    let predictions: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let rows = predictions["rte"]["predictions"].as_array().unwrap();
    let valid = std::fs::read_to_string(shared_data().join("glue/rte.valid.jsonl")).unwrap();
    assert_eq!(rows.len(), valid.lines().count());
    let labels: Vec<u64> = valid
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["label"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut right = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], format!("rte_{i}"));
        let pred = row["pred"].as_u64().unwrap();
        assert!(pred < 2);
        right += usize::from(pred == labels[i]);
    }
    // The accuracy printed is the predictions' own, scored by line.
    let scored = 100.0 * right as f64 / rows.len() as f64;
    assert!((scored - accuracy).abs() < 0.06, "{scored} vs {accuracy}");

    // The same batch in PyTorch, from the checkpoint's weights and the head's first
    // weights: the same ids, logits and loss.
    let reference = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/glue_reference.py"
        ))
        .arg(committed_path(&job, "language"))
        .arg(out.path().join("first/rte"))
        .output()
        .unwrap();
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let reference: Value = serde_json::from_slice(&reference.stdout).unwrap();
    eprintln!("PyTorch reference: {reference}");
    assert_eq!(reference["ids_equal"], true, "{reference}");
    assert!(
        reference["max_logit_diff"].as_f64().unwrap() < 1e-4,
        "{reference}"
    );
    assert!(
        reference["loss_diff"].as_f64().unwrap() < 1e-4,
        "{reference}"
    );
    assert!(
        reference["logit_spread"].as_f64().unwrap() > 1e-3,
        "{reference}"
    );
}

/// GLUE as a step of a job: after phase 1, two tasks as two shards, on two workers at
/// once; the report shows both and their mean.
#[tokio::test(flavor = "multi_thread")]
async fn glue_tasks_fine_tune_as_shards_on_two_workers_and_the_report_shows_their_mean() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(10_000).await;
    let _workers = cluster.workers(2);
    let yaml = format!(
        "name: glued
storage: {storage}
data: [{{name: text, kind: text, path: {text}}}]
model: {{preset: tiny}}
evaluation:
  glue:
    path: {glue}
    tasks: [rte, wsc]
    settings: {{rte: {{epochs: 1, max_steps: 40}}, wsc: {{epochs: 2, max_steps: 40}}}}
phases:
  - {{name: language, kind: language, data: [text], steps: 60, batch_size: 8, learning_rate: 0.003}}
",
        storage = cluster.storage().display(),
        text = shared_data().join("babylm-text/train").display(),
        glue = shared_data().join("glue").display(),
    );
    let id = cluster.submit(&yaml).await;
    let job = cluster.wait(&id, Duration::from_secs(300), finished).await;
    assert_succeeded(&job);
    let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["prepare", "language", "language.glue"]);

    // Both shards were leased, to different workers, before either finished.
    let glue = job.step("language.glue").unwrap();
    let index = job
        .steps
        .iter()
        .position(|s| s.name == "language.glue")
        .unwrap() as u32;
    let mut leased = Vec::new();
    for event in &job.history {
        let value = serde_json::to_value(event).unwrap();
        let task = value["task"].as_str().unwrap_or_default();
        let ours = task.rsplit('/').nth(1) == Some(&index.to_string());
        match value["event"].as_str() {
            Some("leased") if ours => leased.push(value["worker"].as_str().unwrap().to_string()),
            Some("task_succeeded") if ours => break,
            _ => {}
        }
    }
    assert_eq!(leased.len(), 2, "both shards ran at once: {leased:?}");
    assert_ne!(leased[0], leased[1]);

    // The report: both tasks and their mean, with how many it covers.
    let report = cli(
        &[
            "report",
            &id,
            "--json",
            "--html",
            "/dev/null",
            "--coordinator",
            &cluster.coordinator.url,
        ],
        None,
    );
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let column = &report["glue"][0];
    assert_eq!(column["step"], "language.glue");
    assert_eq!(column["tasks_run"], 2);
    let accuracies: Vec<f64> = column["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["accuracy"].as_f64().unwrap())
        .collect();
    assert_eq!(accuracies.len(), 2);
    let mean = column["mean"].as_f64().unwrap();
    assert!((mean - (accuracies[0] + accuracies[1]) / 2.0).abs() < 1e-12);
    for task in column["tasks"].as_array().unwrap() {
        let accuracy = task["accuracy"].as_f64().unwrap();
        assert!(accuracy > 0.0 && accuracy < 1.0, "{task}");
        // The predictions sit in the task's attempt folder, one per validation line.
        let url = task["predictions"].as_str().unwrap();
        let path = url.strip_prefix("file://").unwrap();
        let predictions: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let name = task["task"].as_str().unwrap();
        let valid = std::fs::read_to_string(shared_data().join(format!("glue/{name}.valid.jsonl")))
            .unwrap();
        assert_eq!(
            predictions[name]["predictions"].as_array().unwrap().len(),
            valid.lines().count()
        );
    }
    let table = cli(
        &[
            "report",
            &id,
            "--detail",
            "--html",
            "/dev/null",
            "--coordinator",
            &cluster.coordinator.url,
        ],
        None,
    );
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    eprintln!("{table}");
    assert!(
        table.contains("GIT 65.5, Flamingo 69.5 (2024: means over 11 tasks"),
        "{table}"
    );
    assert!(
        table.contains("language.glue") && table.contains("2/2"),
        "{table}"
    );
    assert!(glue.tasks.len() == 2);
}
