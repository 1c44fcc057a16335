//! A job as a graph of steps, through real processes: data prepared once by a prepare
//! step, branches that run side by side and are compared in the report, a failed step
//! run again by hand, and two `outloud local` runs started together.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use outloud_coordinator::scheduler::{EventKind, Job, RunState, StepKind, TaskState};
use support::*;

/// When the task of step `name` was leased and when it succeeded (the last run's).
fn span(job: &Job, name: &str) -> (u64, u64) {
    let index = job.steps.iter().position(|s| s.name == name).unwrap() as u32;
    let mut leased = None;
    let mut done = None;
    for event in &job.history {
        match &event.what {
            EventKind::Leased { task, .. } if task.step == index => leased = Some(event.at),
            EventKind::TaskSucceeded { task, .. } if task.step == index => done = Some(event.at),
            _ => {}
        }
    }
    (leased.unwrap(), done.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn branches_run_side_by_side_on_data_prepared_once() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(10_000).await;
    let _workers = cluster.workers(2);
    let yaml = format!(
        "name: branches
storage: {storage}
data:
  - {{name: nursery, kind: generated_text, seed: 2, words: 20000}}
  - {{name: book, kind: picture_book, seed: 2, pictures: 200}}
model:
  vision: {{image_size: 32, patch_size: 8, d_model: 32, n_layers: 1, n_heads: 4}}
evaluation: {{benchmarks: [{{data: book, limit: 60}}]}}
phases:
  - {{name: language, kind: language, data: [nursery, book], steps: 60, eval: false}}
  - {{name: vision-language, kind: vision_language, data: [book], steps: 60, batch_size: 16}}
  - {{name: tasks, kind: tasks, data: [book], steps: 250, batch_size: 16}}
  - {{name: tasks-long, kind: tasks, data: [book], steps: 400, batch_size: 16, from: vision-language}}
",
        storage = cluster.storage().display(),
    );
    let id = cluster.submit(&yaml).await;
    let job = cluster.wait(&id, Duration::from_secs(240), finished).await;
    assert_succeeded(&job);
    let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prepare",
            "language",
            "vision-language",
            "vision-language.eval",
            "tasks",
            "tasks.eval",
            "tasks-long",
            "tasks-long.eval"
        ]
    );

    // The branches overlap in time on two workers, each with its own final checkpoint.
    let (a, b) = (span(&job, "tasks"), span(&job, "tasks-long"));
    assert!(
        a.0 < b.1 && b.0 < a.1,
        "the branches overlap: tasks {a:?}, tasks-long {b:?}"
    );
    for branch in ["tasks", "tasks-long"] {
        let manifest = committed_path(&job, branch).join("manifest.json");
        assert!(manifest.exists(), "{branch} left its own final checkpoint");
    }

    // The data was prepared once: a shard per source, each committed once, and the world
    // written by exactly one process although phases, probes and eval steps read it.
    let prepare = &job.steps[0];
    assert_eq!(prepare.kind, StepKind::Prepare);
    assert_eq!(prepare.tasks.len(), 2);
    for task in &prepare.tasks {
        assert!(
            matches!(&task.state, TaskState::Succeeded { output } if output.contains("/data/"))
        );
        assert_eq!(task.epoch, 1, "leased once");
    }
    let sources = prepare.results().sources;
    assert!(sources.iter().all(|s| s.files > 0), "{sources:?}");
    let logs: String = ["w0.log", "w1.log"]
        .iter()
        .map(|f| std::fs::read_to_string(cluster.logs().join(f)).unwrap())
        .collect();
    assert_eq!(logs.matches("picture-book world written").count(), 1);
    assert_eq!(logs.matches("generated text written").count(), 1);

    // The report shows both branches, and their comparison.
    let url = &cluster.coordinator.url;
    let html = cluster.dir.path().join("r.html");
    let html = html.to_str().unwrap();
    let report = cli(&["report", &id, "--coordinator", url, "--html", html], None);
    let table = String::from_utf8_lossy(&report.stdout);
    // Every training step's loss curve: in the JSON, falling, bounded and in step order;
    // on the page, a chart each; in the table, a line each.
    let json = cli(
        &[
            "report",
            &id,
            "--coordinator",
            url,
            "--json",
            "--html",
            html,
        ],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let curves = json["curves"].as_array().unwrap();
    let trained: Vec<&str> = curves.iter().map(|c| c["step"].as_str().unwrap()).collect();
    assert_eq!(
        trained,
        ["language", "vision-language", "tasks", "tasks-long"]
    );
    for curve in curves {
        let points = curve["points"].as_array().unwrap();
        let steps: Vec<u64> = points.iter().map(|p| p["step"].as_u64().unwrap()).collect();
        assert!(
            steps.windows(2).all(|w| w[0] < w[1]) && steps.len() <= 256,
            "{curve}"
        );
        let loss = |i: usize| points[i]["loss"].as_f64().unwrap();
        assert!(loss(points.len() - 1) < loss(0), "the loss falls: {curve}");
    }
    // The cost ledger: device time for every step that ran, tokens for training steps.
    let cost = json["cost"].as_array().unwrap();
    let costed: Vec<&str> = cost.iter().map(|c| c["step"].as_str().unwrap()).collect();
    for step in [
        "prepare",
        "language",
        "vision-language.eval",
        "tasks",
        "tasks-long",
    ] {
        assert!(costed.contains(&step), "{step} not in {costed:?}");
    }
    for row in cost {
        let seconds = row["device_seconds"]["CPU thread-s"].as_f64().unwrap();
        assert!(seconds > 0.0, "{row}");
    }
    let trained = cost.iter().find(|c| c["step"] == "tasks-long").unwrap();
    assert!(trained["tokens"].as_u64().unwrap() > 0, "{trained}");
    assert!(json["wall_seconds"].as_f64().unwrap() > 0.0);
    let page = std::fs::read_to_string(html).unwrap();
    assert_eq!(page.matches("class=\"loss-curve\"").count(), 4, "{page}");
    assert!(
        table.contains("TRAINING LOSS") && table.contains("CPU thread-s"),
        "{table}"
    );
    let header = table.lines().nth(1).unwrap_or_default();
    assert!(
        header.contains("vision-language")
            && header.contains(" tasks ")
            && header.contains("tasks-long"),
        "{table}"
    );
    let compared = cli(
        &[
            "report",
            &id,
            "--compare",
            "tasks-long",
            "tasks",
            "--coordinator",
            url,
        ],
        None,
    );
    let text = String::from_utf8_lossy(&compared.stdout);
    assert!(compared.status.success(), "{compared:?}");
    assert!(
        text.contains("tasks-long vs tasks")
            && text.contains("world_vqa")
            && text.contains("A - B"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_step_runs_again_by_hand_keeping_what_succeeded() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(10_000).await;
    let text = cluster.dir.path().join("text");
    std::fs::create_dir_all(&text).unwrap();
    let story = "the little dog runs to the red ball and the cat sleeps in the sun. ".repeat(400);
    std::fs::write(text.join("a.train"), &story).unwrap();
    let yaml = format!(
        "name: retry
storage: {storage}
data:
  - {{name: nursery, kind: generated_text, seed: 1, words: 5000}}
  - {{name: mine, kind: text, path: {text}}}
phases:
  - {{name: language, kind: language, data: [nursery, mine], steps: 20}}
",
        storage = cluster.storage().display(),
        text = text.display()
    );
    let id = cluster.submit(&yaml).await;
    // The folder empties after admission: preparing `mine` fails, and with it the job.
    std::fs::remove_file(text.join("a.train")).unwrap();
    let _worker = cluster.worker("w");
    let failed = cluster.wait(&id, Duration::from_secs(60), finished).await;
    assert_eq!(failed.state, RunState::Failed, "{:?}", failed.error);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("holds no files"),
        "{:?}",
        failed.error
    );
    let nursery_output = failed.steps[0]
        .tasks
        .iter()
        .find(|t| matches!(t.state, TaskState::Succeeded { .. }))
        .cloned()
        .expect("the generated source was prepared");

    std::fs::write(text.join("a.train"), &story).unwrap();
    let url = &cluster.coordinator.url;
    let retried = cli(&["retry", &id, "--coordinator", url], None);
    let said = String::from_utf8_lossy(&retried.stdout);
    assert!(retried.status.success(), "{retried:?}");
    assert!(said.contains("prepare, language"), "{said}");
    let job = cluster.wait(&id, Duration::from_secs(120), finished).await;
    assert_succeeded(&job);
    let kept = job.steps[0]
        .tasks
        .iter()
        .find(|t| t.id == nursery_output.id)
        .unwrap();
    assert_eq!(
        (&kept.state, kept.epoch),
        (&nursery_output.state, nursery_output.epoch),
        "the shard that had succeeded is kept"
    );
    assert_eq!(job.steps[0].tasks[1].epoch, 2, "the failed shard ran again");
    let status = cli(&["status", &id, "--coordinator", url], None);
    let table = String::from_utf8_lossy(&status.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(table.contains("TRIES"), "{table}");
    assert_eq!(row("prepare")[1..3], ["succeeded", "2"], "{table}");
    assert_eq!(row("language")[1..3], ["succeeded", "2"], "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_local_runs_started_together_both_succeed() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("small.yaml");
    std::fs::write(
        &spec,
        "name: small
storage: .outloud/small
data:
  - {name: nursery, kind: generated_text, seed: 4, words: 20000}
  - {name: book, kind: picture_book, seed: 4, pictures: 100}
model:
  vision: {image_size: 32, patch_size: 8, d_model: 32, n_layers: 1, n_heads: 4}
evaluation: {benchmarks: [{data: book, limit: 30}]}
phases:
  - {name: language, kind: language, data: [nursery, book], steps: 30}
  - {name: vision-language, kind: vision_language, data: [book], steps: 30, batch_size: 8}
",
    )
    .unwrap();
    let start = || {
        Command::new(bin("outloud"))
            .current_dir(dir.path())
            .args(["local", "--workers", "1", "small.yaml"])
            .env("OUTLOUD_WORKER_BIN", bin("outloud-worker"))
            .env_remove("OUTLOUD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let outputs = [
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    ];
    let mut ids = Vec::new();
    for out in &outputs {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("job ")?.split_whitespace().next())
            .unwrap()
            .to_string();
        assert!(text.contains(&format!("job {id}  succeeded")), "{text}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "each run has its own job");
    for id in &ids {
        let final_model = dir.path().join(format!(
            ".outloud/small/jobs/{id}/vision-language/attempt-1/final/manifest.json"
        ));
        assert!(final_model.exists(), "{id} wrote its own outputs");
    }
    let runs = std::fs::read_dir(dir.path().join(".outloud/local"))
        .unwrap()
        .count();
    assert_eq!(runs, 2, "each run has its own state directory");
}

/// Workers that die at start (here: libtorch missing) make `outloud local` fail at once,
/// quoting their logs, instead of waiting for ever.
#[tokio::test(flavor = "multi_thread")]
async fn local_fails_fast_with_the_logs_of_workers_that_died() {
    let dir = tempfile::tempdir().unwrap();
    let dying = dir.path().join("dying-worker");
    std::fs::write(
        &dying,
        "#!/bin/sh\necho 'error while loading shared libraries: libtorch_cuda.so: cannot open shared object file' >&2\nexit 127\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dying, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("noop.yaml"),
        "name: noop\nstorage: .outloud/noop\nphases: [{name: a, kind: noop}]\n",
    )
    .unwrap();
    let mut local = Command::new(bin("outloud"))
        .current_dir(dir.path())
        .args(["local", "--workers", "2", "noop.yaml"])
        .env("OUTLOUD_WORKER_BIN", &dying)
        .env_remove("OUTLOUD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = local.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = local.kill();
            panic!("outloud local is still waiting 30 s after its workers died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut local.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("every worker exited") && said.contains("libtorch_cuda.so"),
        "{said}"
    );
}
