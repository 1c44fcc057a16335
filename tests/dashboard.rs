//! The live dashboard in a real browser: headless Chromium opens the coordinator's page
//! while a job trains, is asked for the user token once, and shows the same phase
//! states, step counts and accuracies as `outloud status --json` and `outloud report
//! --json`. A missing, wrong or worker token gets no data.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::browser::Browser;
use support::*;

const USER: &str = "dashboard-user-token";
const WORKER: &str = "dashboard-worker-token";

/// What the page shows, read from its elements' data attributes.
const STEPS_SHOWN: &str = "JSON.stringify([...document.querySelectorAll('#steps tr[data-step]')]
    .map((row) => ({...row.dataset})))";
const ACCURACIES_SHOWN: &str = "JSON.stringify([...document.querySelectorAll('#eval td[data-accuracy]')]
    .map((cell) => [cell.parentElement.dataset.benchmark, cell.dataset.phase, cell.dataset.accuracy]))";

fn shown(browser: &mut Browser, expression: &str) -> Value {
    serde_json::from_str(browser.eval(expression).as_str().unwrap()).unwrap()
}

fn cli_json(args: &[&str]) -> Value {
    let out = cli(args, Some(USER));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_running_job_as_the_api_does_and_only_with_the_user_token() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let worker_env = [("OUTLOUD_WORKER_TOKEN".to_string(), WORKER.to_string())];
    let coordinator = Coordinator::start_with_env(
        &dir.path().join("state"),
        0,
        2_000,
        Some(USER),
        &["--http", "127.0.0.1:0"],
        &worker_env,
    );
    let http = coordinator.metrics.clone().expect("--http is served");
    let mut workers: Vec<Process> = (0..2)
        .map(|i| {
            start_worker_with_env(&coordinator.url, &logs, &format!("w{i}"), None, &worker_env)
        })
        .collect();
    // Two BLiMP paradigms are enough for an accuracy per phase.
    let eval = dir.path().join("eval/blimp_filtered");
    std::fs::create_dir_all(&eval).unwrap();
    for paradigm in ["anaphor_gender_agreement", "determiner_noun_agreement_1"] {
        let file = format!("{paradigm}.jsonl");
        let from = shared_data().join("eval/blimp_filtered").join(&file);
        std::fs::copy(from, eval.join(&file)).unwrap();
    }
    let yaml = format!(
        "name: watched
storage: {storage}
data: [{{name: text, kind: text, path: {text}}}]
model: {{preset: tiny}}
evaluation:
  benchmarks: [{{path: {eval}}}]
phases:
  - {{name: language, kind: language, data: [text], steps: 600, batch_size: 8, learning_rate: 0.003, checkpoint_every: 100}}
",
        storage = dir.path().join("storage").display(),
        text = shared_data().join("babylm-text/train").display(),
        eval = dir.path().join("eval").display(),
    );
    let connection = connect(&coordinator.url, Some(USER)).await;
    let id = submit(&connection, &yaml, dir.path()).await;

    // The API: nothing without the user token.
    let as_worker = format!("Bearer {WORKER}");
    let refused: [&[(&str, &str)]; 3] = [
        &[],
        &[("Authorization", "Bearer wrong")],
        &[("Authorization", &as_worker)],
    ];
    for headers in refused {
        for path in ["/api/jobs", &format!("/api/jobs/{id}"), "/api/workers"] {
            let (status, body) = http_get_with(&http, path, headers).unwrap();
            assert!(status.contains("401"), "{path} {headers:?}: {status}");
            assert!(!body.contains(&id), "{body}");
        }
    }
    let bearer = format!("Bearer {USER}");
    let (status, body) =
        http_get_with(&http, "/api/jobs", &[("Authorization", bearer.as_str())]).unwrap();
    assert!(status.contains("200") && body.contains(&id), "{status}");

    // The page: it asks for the token and shows nothing until it has the right one.
    let mut browser = Browser::start(dir.path(), &logs);
    let page = format!("http://{http}/");
    browser.open(&page);
    browser.wait_for(
        "document.body.dataset.loaded === 'login'",
        Duration::from_secs(20),
    );
    let text = browser.eval("document.body.innerText").to_string();
    assert!(!text.contains(&id), "data without a token: {text}");
    let type_token = |browser: &mut Browser, token: &str| {
        browser.eval(&format!(
            "document.getElementById('token').value = '{token}';
             document.getElementById('login').requestSubmit(); true"
        ));
    };
    type_token(&mut browser, WORKER);
    browser.wait_for(
        "document.getElementById('login-error').textContent.includes('refused')",
        Duration::from_secs(20),
    );
    assert!(
        !browser
            .eval("document.body.innerText")
            .to_string()
            .contains(&id)
    );
    type_token(&mut browser, USER);
    browser.wait_for(
        "document.body.dataset.loaded === 'true'",
        Duration::from_secs(20),
    );

    // While it trains: the page follows the job as it moves.
    wait_until(&connection, &id, Duration::from_secs(300), |job| {
        job.step("language").unwrap().metrics().step >= 30
    })
    .await;
    browser.wait_for(
        "Number(document.querySelector('#steps tr[data-step=\"language\"]').dataset.done) >= 30",
        Duration::from_secs(20),
    );
    browser.wait_for(
        "document.querySelectorAll('#timeline rect').length >= 2",
        Duration::from_secs(20),
    );
    let running_shot = browser.screenshot();

    // The worker training it dies: its lease is lost, and the other worker takes over.
    let status = cli_json(&["status", &id, "--json", "--coordinator", &coordinator.url]);
    let task = status["steps"][1]["tasks"][0].clone();
    let holder = task["worker"]
        .as_str()
        .expect("the language task is leased");
    let victim = (0..2)
        .find(|i| {
            let log = std::fs::read_to_string(logs.join(format!("w{i}.log"))).unwrap();
            log.contains(&format!("registered worker={holder} "))
        })
        .expect("the holder's log");
    workers[victim].sigkill();

    // Finished: the page's states, steps and accuracies are the CLI's.
    let job = wait_until(&connection, &id, Duration::from_secs(600), finished).await;
    assert_succeeded(&job);
    browser.wait_for(
        "document.getElementById('summary').dataset.state === 'succeeded'",
        Duration::from_secs(20),
    );
    let status = cli_json(&["status", &id, "--json", "--coordinator", &coordinator.url]);
    let steps: Vec<Value> = status["steps"].as_array().unwrap().clone();
    let rows = shown(&mut browser, STEPS_SHOWN);
    assert_eq!(rows.as_array().unwrap().len(), steps.len(), "{rows}");
    for (row, step) in rows.as_array().unwrap().iter().zip(&steps) {
        assert_eq!(row["step"], step["name"]);
        assert_eq!(row["state"], step["state"]);
        assert_eq!(row["done"], step["metrics"]["step"].to_string());
        assert_eq!(row["total"], step["metrics"]["total_steps"].to_string());
    }
    let html = dir.path().join("report.html");
    let report = cli_json(&[
        "report",
        &id,
        "--json",
        "--html",
        html.to_str().unwrap(),
        "--coordinator",
        &coordinator.url,
    ]);
    let mut expected = Vec::new();
    for row in report["benchmarks"].as_array().unwrap() {
        for (phase, accuracy) in report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .zip(row["accuracy"].as_array().unwrap())
        {
            expected.push((
                row["name"].clone(),
                phase.clone(),
                accuracy.as_f64().unwrap(),
            ));
        }
    }
    assert_eq!(expected.len(), 1, "BLiMP after the phase: {report}");
    let cells = shown(&mut browser, ACCURACIES_SHOWN);
    let cells: Vec<(Value, Value, f64)> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].clone(),
                c[1].clone(),
                c[2].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(cells, expected);
    for (_, _, accuracy) in &cells {
        assert!(*accuracy > 0.0 && *accuracy < 1.0, "{accuracy}");
    }
    // Loss curves and ledgers are drawn from the report's own numbers.
    for curve in report["curves"].as_array().unwrap() {
        let name = curve["step"].as_str().unwrap();
        let points = browser.eval(&format!(
            "document.querySelector('svg[data-curve=\"{name}\"]').dataset.points"
        ));
        assert_eq!(
            points,
            curve["points"].as_array().unwrap().len().to_string()
        );
    }
    let cost_rows = browser.eval("document.querySelectorAll('#cost tr[data-cost]').length");
    // The timeline shows the lost lease and the re-lease that finished the task.
    let task_id = task["id"].as_str().unwrap();
    let ends = browser.eval(&format!(
        "[...document.querySelectorAll('#timeline rect[data-task=\"{task_id}\"]')].map((r) => r.dataset.end)"
    ));
    let ends: Vec<&str> = ends
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert!(ends[0].starts_with("lost"), "{ends:?}");
    assert_eq!(ends[1], "succeeded");
    assert_eq!(cost_rows, report["cost"].as_array().unwrap().len());

    // The token stays with the tab's session, not in any address: a reload asks no more.
    browser.reload();
    browser.wait_for(
        "document.body.dataset.loaded === 'true'",
        Duration::from_secs(20),
    );
    let address = browser.eval("location.href");
    assert_eq!(address, page.as_str());

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("running.png"), running_shot).unwrap();
    let finished_shot = browser.screenshot();
    assert!(finished_shot.starts_with(b"\x89PNG"));
    std::fs::write(out.join("finished.png"), finished_shot).unwrap();
    eprintln!("screenshots in {}", out.display());
}
