//! The coordinator's and a worker's Prometheus metrics, scraped by a real Prometheus
//! server; and the Grafana dashboard in deploy/ queries only what they export.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The metric names the Grafana dashboard's queries use.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/observability/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(
                words
                    .filter(|w| w.starts_with("outloud_"))
                    .map(str::to_string),
            );
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}

#[test]
fn every_job_panel_links_to_the_jobs_trace() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/observability/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "tempo" && v["query"] == "tempo")
    );
    let mut linked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let per_job = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["expr"].as_str().unwrap().contains("job_id=~\"$job\""));
        if !per_job {
            continue;
        }
        let links = &panel["fieldConfig"]["defaults"]["links"];
        let url = links[0]["url"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no trace link", panel["title"]));
        // Tempo finds the trace by the attribute the coordinator's spans carry.
        let query = url::form_urlencoded::parse(url.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "panes")
            .unwrap()
            .1
            .into_owned();
        let panes: serde_json::Value = serde_json::from_str(&query).unwrap();
        assert_eq!(panes["t"]["datasource"], "${tempo}");
        assert_eq!(
            panes["t"]["queries"][0]["query"],
            "{ span.job_id = \"${__field.labels.job_id}\" }"
        );
        linked += 1;
    }
    assert!(linked >= 8, "{linked} panels link to traces");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_progress_and_counters() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let coordinator = Coordinator::start_with(
        &dir.path().join("state"),
        0,
        5_000,
        None,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics_addr = coordinator.metrics.clone().expect("metrics are served");
    let worker_args: Vec<String> = [
        "--coordinator",
        &coordinator.url,
        "--threads",
        "1",
        "--device",
        "cpu",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(str::to_string)
    .to_vec();
    let _worker = spawn_with_env("outloud-worker", &worker_args, Vec::new(), &logs, "w0");
    let marker = "worker metrics serving addr=127.0.0.1:";
    let worker_metrics = format!(
        "127.0.0.1:{}",
        port_in_log(&logs.join("w0.log"), marker, "worker")
    );
    let connection = connect(&coordinator.url, None).await;

    // While a language phase trains, its progress is a gauge.
    let data = "  - {name: corpus, kind: generated_text, seed: 3, words: 30000}";
    let id = submit(
        &connection,
        &language_job(&dir.path().join("storage"), data, 400, 100),
        dir.path(),
    )
    .await;
    wait_until(&connection, &id, Duration::from_secs(120), |job| {
        job.step("language").unwrap().metrics().step >= 20
    })
    .await;
    let (status, body) = http_get(&metrics_addr, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    // The same port answers Kubernetes' probes, in plain HTTP whatever gRPC speaks.
    for probe in ["/healthz", "/readyz"] {
        let (status, _) = http_get(&metrics_addr, probe).unwrap();
        assert!(status.contains("200"), "{probe}: {status}");
    }
    let series = format!("outloud_phase_step{{job_id=\"{id}\",phase=\"language\"}}");
    assert!(metric(&body, &series).unwrap() >= 20.0, "{body}");
    // The worker's own metrics move while it trains.
    let task = format!("{{job_id=\"{id}\",step=\"language\"}}");
    let scrape = |name: &str| {
        let (status, body) = http_get(&worker_metrics, "/metrics").unwrap();
        assert!(status.contains("200"), "{status}");
        metric(&body, &format!("{name}{task}"))
            .unwrap_or_else(|| panic!("no {name}{task} in {body}"))
    };
    let before = scrape("outloud_worker_step");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        scrape("outloud_worker_step") > before,
        "the worker's step gauge stood still"
    );
    assert!(scrape("outloud_worker_tokens_per_second") > 0.0);
    assert!(scrape("outloud_worker_step_seconds") > 0.0);
    assert!(scrape("outloud_worker_loss") > 0.0);
    // Every metric the Grafana dashboard in deploy/ queries is one these two export.
    let coordinator_body = http_get(&metrics_addr, "/metrics").unwrap().1;
    let worker_body = http_get(&worker_metrics, "/metrics").unwrap().1;
    let exported: Vec<String> = [coordinator_body.as_str(), worker_body.as_str()]
        .iter()
        .flat_map(|body| body.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for queried in dashboard_metrics() {
        let family = queried.strip_suffix("_total").unwrap_or(&queried);
        assert!(
            exported.iter().any(|e| e == &queried || e == family),
            "the dashboard queries {queried}, which nothing exports"
        );
    }
    // The cost ledger: the prepare step's lease has ended, so its device time shows.
    let cost = format!(
        "outloud_phase_device_seconds{{job_id=\"{id}\",phase=\"prepare\",device=\"CPU thread-s\"}}"
    );
    assert!(metric(&body, &cost).unwrap() > 0.0, "{body}");
    assert_eq!(
        metric(&body, "outloud_jobs{state=\"running\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "outloud_workers{alive=\"true\"}"),
        Some(1.0),
        "{body}"
    );
    let job = wait_until(&connection, &id, Duration::from_secs(180), finished).await;
    assert_succeeded(&job);
    let noop = "name: noop\nstorage: ./s\nphases:\n  - {name: a, kind: noop, shards: 5}\n  - {name: b, kind: noop, shards: 2}\n";
    let noop_id = submit(&connection, noop, dir.path()).await;
    assert_succeeded(&wait_until(&connection, &noop_id, Duration::from_secs(60), finished).await);

    // A real Prometheus scrapes the endpoint and answers queries over it.
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: outloud\n    static_configs: [{{targets: ['{metrics_addr}']}}]\n  - job_name: outloud-workers\n    static_configs: [{{targets: ['{worker_metrics}']}}]\n"),
    )
    .unwrap();
    let _prometheus = spawn(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            "--web.listen-address=127.0.0.1:0",
        ],
        &logs,
        "prometheus",
    );
    let marker = "msg=\"Listening on\" address=127.0.0.1:";
    let prometheus_port = port_in_log(&logs.join("prometheus.log"), marker, "prometheus");
    wait_for_port(prometheus_port, "prometheus");
    // Prometheus reads the worker too: its checkpoint counter, after a finished phase.
    let query = "/api/v1/query?query=outloud_worker_checkpoint_bytes_total";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) =
            http_get(&format!("127.0.0.1:{prometheus_port}"), query).unwrap_or_default();
        if body.contains("\"outloud-workers\"") && !body.contains(",\"0\"]") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw the worker's checkpoints: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let query = "/api/v1/query?query=outloud_tasks_succeeded_total";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) =
            http_get(&format!("127.0.0.1:{prometheus_port}"), query).unwrap_or_default();
        // 1 prepare task (the generated corpus), 1 language task, 7 no-op tasks.
        if body.contains("\"outloud\"") && body.contains(",\"9\"]") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw 9 succeeded tasks: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
