//! Zero-shot evaluation through real processes: a job trains phase 1 on BabyLM text
//! and its eval step scores every item of the BabyLM slices in ../shared/data/eval;
//! the scores agree with an independent PyTorch scorer; `outloud report` shows them.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Every `.jsonl` under the BabyLM slices: (folder, file stem) -> items.
fn slice_files() -> BTreeMap<(String, String), usize> {
    let mut files = BTreeMap::new();
    for folder in std::fs::read_dir(shared_data().join("eval")).unwrap() {
        let folder = folder.unwrap().path();
        for file in std::fs::read_dir(&folder).unwrap() {
            let file = file.unwrap().path();
            let folder_name = folder.file_name().unwrap().to_string_lossy().into_owned();
            let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
            files.insert((folder_name, stem), lines(&file));
        }
    }
    files
}

/// Every candidate score of a benchmark in a results document, in order.
fn flat_scores(benchmark: &Value) -> Vec<f64> {
    let numbers = |v: &Value| v.as_array().unwrap().clone();
    numbers(&benchmark["files"])
        .iter()
        .flat_map(|file| numbers(&file["scores"]))
        .flat_map(|item| numbers(&item))
        .map(|score| score.as_f64().unwrap())
        .collect()
}

/// The largest difference between two lists of [good, bad] pair scores.
fn largest_pair_difference(ours: &[Value], theirs: &[Value]) -> f64 {
    let score = |pair: &Value, k: usize| pair[k].as_f64().unwrap();
    ours.iter()
        .zip(theirs)
        .flat_map(|(a, b)| (0..2).map(move |k| (score(a, k) - score(b, k)).abs()))
        .fold(0.0, f64::max)
}

/// What `scripts/score_blimp.py ARGS` prints (the independent PyTorch scorer).
fn score_blimp(args: &[&std::ffi::OsStr]) -> Value {
    let output = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/score_blimp.py"))
        .args(args)
        .output()
        .expect("running scripts/score_blimp.py");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `outloud export` writes the phase's model as a folder that Hugging Face
/// `transformers` loads as it is (AutoModelForCausalLM, AutoTokenizer): its logits match
/// the checkpoint's within 1e-4, and it scores the 50 pairs of `file` as Outloud did
/// (`ours`) within 1e-4; its model card carries the job's scores.
fn exported_model_scores_the_same(
    cluster: &Cluster,
    job: &str,
    checkpoint: &Path,
    file: &Path,
    ours: &[Value],
) {
    let folder = cluster.dir.path().join("exported");
    let url = &cluster.coordinator.url;
    let to = folder.display().to_string();
    let args = [
        "export",
        job,
        "--phase",
        "language",
        "--to",
        &to,
        "--coordinator",
        url,
    ];
    let exported = cli(&args, None);
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(folder.join(file).exists(), "{file} missing");
    }
    let card = std::fs::read_to_string(folder.join("README.md")).unwrap();
    assert!(
        card.contains("## Scores") && card.contains("blimp"),
        "{card}"
    );
    let theirs = score_blimp(&[
        folder.as_os_str(),
        file.as_os_str(),
        "--pairs".as_ref(),
        "50".as_ref(),
        "--hf".as_ref(),
        "--logits-of".as_ref(),
        checkpoint.as_os_str(),
    ]);
    let logits = theirs["logits_max_abs_diff"].as_f64().unwrap();
    assert!(logits < 1e-4, "transformers' logits differ by {logits}");
    let theirs = theirs["scores"][0].as_array().unwrap();
    assert_eq!(theirs.len(), 50);
    let worst = largest_pair_difference(ours, theirs);
    eprintln!("exported: logits within {logits:e}, 50 pairs within {worst:e}");
    assert!(worst < 1e-4, "the exported model scores differ by {worst}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_babylm_item_is_scored_after_the_phase_and_agrees_with_pytorch() {
    let _one_at_a_time = exclusive().await;
    let cluster = Cluster::start(10_000).await;
    let _workers = cluster.workers(2);
    let eval = shared_data().join("eval");
    let yaml = format!(
        "name: evaluated
storage: {storage}
data: [{{name: text, kind: text, path: {text}}}]
model: {{preset: tiny}}
evaluation:
  benchmarks: [{{path: {eval}}}]
  batch_size: 64
phases:
  - {{name: language, kind: language, data: [text], steps: 150, batch_size: 16, learning_rate: 0.003}}
",
        storage = cluster.storage().display(),
        text = shared_data().join("babylm-text/train").display(),
        eval = eval.display(),
    );
    let id = cluster.submit(&yaml).await;
    let job = cluster.wait(&id, Duration::from_secs(600), finished).await;
    assert_succeeded(&job);
    let names: Vec<&str> = job.steps.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["prepare", "language", "language.eval"]);

    // The results in storage: every file found, every item scored, accuracy as defined.
    let results_path = committed_path(&job, "language.eval");
    let results: Value = serde_json::from_slice(&std::fs::read(&results_path).unwrap()).unwrap();
    let expected = slice_files();
    let mut seen = 0;
    let reported = job.step("language.eval").unwrap().results();
    for benchmark in results["benchmarks"].as_array().unwrap() {
        let name = benchmark["name"].as_str().unwrap();
        let mut accuracies = Vec::new();
        for file in benchmark["files"].as_array().unwrap() {
            let stem = file["name"].as_str().unwrap();
            let (_, items) = expected
                .iter()
                .find(|((_, s), _)| s == stem)
                .unwrap_or_else(|| panic!("{name}/{stem} is not in the slices"));
            let item_scores = file["scores"].as_array().unwrap();
            assert_eq!(
                item_scores.len(),
                *items,
                "{name}/{stem}: every item scored"
            );
            let right = item_scores
                .iter()
                .filter(|s| {
                    let s: Vec<f64> = s
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    s.iter().all(|&other| s[0] >= other)
                })
                .count();
            let accuracy = right as f64 / *items as f64;
            assert!(
                (file["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12,
                "{name}/{stem}"
            );
            let file_score = reported
                .files(name)
                .find(|f| f.file.as_deref() == Some(stem))
                .unwrap();
            assert!((file_score.accuracy - accuracy).abs() < 1e-12);
            assert_eq!(
                (file_score.items, file_score.correct),
                (*items as u64, right as u64)
            );
            accuracies.push(accuracy);
            seen += 1;
        }
        let macro_average = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
        assert!(
            (reported.benchmark(name).unwrap().accuracy - macro_average).abs() < 1e-12,
            "{name}: macro average"
        );
    }
    assert_eq!(seen, expected.len(), "every file of the slices is scored");
    let accuracy = |name: &str| match reported.benchmark(name) {
        Some(score) => score.accuracy,
        None => panic!("{name} missing: {reported:?}"),
    };
    eprintln!(
        "accuracies: blimp {:.3} supplement {:.3} ewok {:.3} winoground {:.3}",
        accuracy("blimp"),
        accuracy("blimp_supplement"),
        accuracy("ewok"),
        accuracy("winoground")
    );
    assert_eq!(
        reported.counts.items_scored,
        expected.values().map(|n| *n as u64).sum::<u64>()
    );

    // The same 50 pairs scored by PyTorch from the exported checkpoint and tokenizer.
    let checkpoint = committed_path(&job, "language");
    let paradigm = "anaphor_gender_agreement";
    let file = eval.join(format!("blimp_filtered/{paradigm}.jsonl"));
    let theirs = score_blimp(&[
        checkpoint.as_os_str(),
        file.as_os_str(),
        "--pairs".as_ref(),
        "50".as_ref(),
    ]);
    let theirs = theirs["scores"][0].as_array().unwrap();
    let ours = results["benchmarks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["files"].as_array().unwrap())
        .find(|f| f["name"] == paradigm)
        .unwrap()["scores"]
        .as_array()
        .unwrap();
    assert_eq!(theirs.len(), 50);
    let worst = largest_pair_difference(ours, theirs);
    eprintln!("largest difference from PyTorch over 50 pairs: {worst:e}");
    assert!(worst < 1e-4, "Outloud and PyTorch differ by {worst}");
    exported_model_scores_the_same(&cluster, &id, &checkpoint, &file, ours);

    // The same checkpoint scored outside the job gives the same results.
    let out = cluster.dir.path().join("offline.json");
    let offline = Command::new(bin("outloud-worker"))
        .args(["--threads", "2", "evaluate"])
        .args([
            checkpoint.as_os_str(),
            eval.join("ewok_filtered").as_os_str(),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert!(String::from_utf8_lossy(&offline.stdout).contains("ewok"));
    let offline: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let in_job = results["benchmarks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "ewok")
        .unwrap();
    let worst = flat_scores(&offline["benchmarks"][0])
        .iter()
        .zip(flat_scores(in_job))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "offline and in-job scores differ by {worst}");

    // The report: a table with the baselines, paradigms with --detail, JSON, HTML.
    let url = &cluster.coordinator.url;
    let html = cluster.dir.path().join("report.html");
    let html_arg = html.display().to_string();
    let table = cli(
        &["report", &id, "--coordinator", url, "--html", &html_arg],
        None,
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success()
            && text.contains("blimp_supplement")
            && text.contains("65.2")
            && text.contains("70.9"),
        "{text}"
    );
    let detail = cli(
        &[
            "report",
            &id,
            "--detail",
            "--coordinator",
            url,
            "--html",
            &html_arg,
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&detail.stdout).contains(paradigm));
    let json = cli(
        &[
            "report",
            &id,
            "--json",
            "--coordinator",
            url,
            "--html",
            &html_arg,
        ],
        None,
    );
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["phases"], serde_json::json!(["language"]));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("winoground"));
}

#[tokio::test(flavor = "multi_thread")]
async fn benchmarks_are_read_from_s3_and_a_missing_one_is_refused_with_its_line() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let s3 = S3Server::start(&logs);
    s3.create_bucket("outloud");
    let env = s3.env();
    // Two BLiMP paradigms and an EWoK domain, uploaded as a user would.
    let bucket = outloud_core::storage::Location::open_with("s3://outloud", env.clone()).unwrap();
    let eval = shared_data().join("eval");
    let uploads = [
        "blimp_filtered/passive_1.jsonl",
        "blimp_filtered/transitive.jsonl",
        "ewok_filtered/social-properties.jsonl",
    ];
    for file in uploads {
        let bytes = std::fs::read(eval.join(file)).unwrap();
        bucket
            .join(&format!("eval/{file}"))
            .put(bytes)
            .await
            .unwrap();
    }
    let coordinator =
        Coordinator::start_with_env(&dir.path().join("state"), 0, 10_000, None, &[], &env);
    let connection = connect(&coordinator.url, None).await;
    let _worker = start_worker_with_env(&coordinator.url, &logs, "w0", None, &env);
    let yaml = "name: s3-eval
storage: s3://outloud/runs
data: [{name: corpus, kind: generated_text, seed: 3, words: 20000}]
evaluation:
  benchmarks:
    - path: s3://outloud/eval
phases:
  - {name: language, kind: language, data: [corpus], steps: 30, batch_size: 8}
";
    // A benchmark folder that is not there is refused before anything is created.
    let missing = yaml.replace("s3://outloud/eval", "s3://outloud/nothing-here");
    let spec_file = dir.path().join("missing.yaml");
    std::fs::write(&spec_file, &missing).unwrap();
    let refused = cli(
        &[
            "submit",
            spec_file.to_str().unwrap(),
            "--coordinator",
            &coordinator.url,
        ],
        None,
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        message.contains("missing.yaml:6:13:") && message.contains("evaluation.benchmarks[0].path"),
        "{message}"
    );

    let id = submit(&connection, yaml, dir.path()).await;
    let job = wait_until(&connection, &id, Duration::from_secs(300), finished).await;
    assert_succeeded(&job);
    let reported = job.step("language.eval").unwrap().results();
    let items = |f: &str| lines(&eval.join(f)) as u64;
    let scored = |name: &str| reported.benchmark(name).map(|b| b.items);
    assert_eq!(scored("blimp"), Some(items(uploads[0]) + items(uploads[1])));
    assert_eq!(scored("ewok"), Some(items(uploads[2])));
    let results =
        outloud_core::storage::Location::open_with(&committed(&job, "language.eval"), s3.env())
            .unwrap();
    let results: Value = serde_json::from_slice(&results.get().await.unwrap()).unwrap();
    assert_eq!(results["benchmarks"].as_array().unwrap().len(), 2);
}
