//! What a client controls is bounded: a coordinator's limits are its flags, specs name
//! only paths inside the roots it allows (and admission never walks what they name),
//! requests and answers stay within the message size, and a huge job leaves `outloud
//! jobs` and `outloud status` working for everyone.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use outloud_core::client::Connection;
use outloud_proto::v1 as pb;
use support::*;

/// Submits `yaml` as `job.yaml`; answers the job id or the refusal's message.
async fn try_submit(
    connection: &Connection,
    yaml: &str,
    dir: &Path,
) -> Result<String, tonic::Status> {
    let request = pb::SubmitJobRequest {
        spec_yaml: yaml.into(),
        source_name: "job.yaml".into(),
        working_dir: dir.display().to_string(),
    };
    Ok(connection
        .jobs()
        .submit_job(request)
        .await?
        .into_inner()
        .job_id)
}

fn refusal(result: Result<String, tonic::Status>) -> String {
    let status = result.expect_err("the spec must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status.message().to_string()
}

fn text_job(storage: &Path, corpus: &str) -> String {
    format!(
        "name: roots\nstorage: {}\ndata:\n  - {{name: c, kind: text, path: {corpus}}}\nphases:\n  - {{name: l, kind: language, data: [c], steps: 1}}\n",
        storage.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn specs_name_only_paths_inside_the_allowed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (data, storage) = (dir.path().join("data"), dir.path().join("storage"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("corpus.train"), "the cat sat\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not yours\n").unwrap();
    let roots = [
        "--data-root",
        data.to_str().unwrap(),
        "--storage-root",
        storage.to_str().unwrap(),
    ];
    let coordinator = Coordinator::start_with(&dir.path().join("state"), 0, 5_000, None, &roots);
    let connection = connect(&coordinator.url, None).await;
    let inside = data.join("corpus.train");

    // Inside both roots: accepted.
    let good = text_job(&storage.join("run"), inside.to_str().unwrap());
    try_submit(&connection, &good, dir.path()).await.unwrap();

    // Outside the data roots, whether or not the file exists, also through `..`: refused
    // with the field's place, the same words either way (nothing says what exists).
    let secret = dir.path().join("secret.txt");
    let escapes = [
        secret.display().to_string(),
        dir.path().join("nothing-here").display().to_string(),
        format!("{}/../secret.txt", data.display()),
        "/root".to_string(),
    ];
    for path in &escapes {
        let started = Instant::now();
        let message = refusal(try_submit(&connection, &text_job(&storage, path), dir.path()).await);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: admission walked it"
        );
        assert!(
            message.starts_with("job.yaml:4:")
                && message.contains(": data[0].path: `file://")
                && message.contains("is outside the data roots this coordinator allows"),
            "{path}: {message}"
        );
        assert!(
            !message.contains("nothing at") && !message.contains("cannot be read"),
            "{message}"
        );
    }
    // A relative path is taken from the submitter's folder, then checked the same way.
    let message =
        refusal(try_submit(&connection, &text_job(&storage, "secret.txt"), dir.path()).await);
    assert!(message.contains("outside the data roots"), "{message}");

    // Storage outside the storage roots, and benchmarks outside the data roots.
    let elsewhere = text_job(&dir.path().join("elsewhere"), inside.to_str().unwrap());
    let message = refusal(try_submit(&connection, &elsewhere, dir.path()).await);
    assert!(
        message.starts_with("job.yaml:2:10: storage: `file://")
            && message.contains("outside the storage roots"),
        "{message}"
    );
    let benchmarks = format!(
        "{good}evaluation:\n  benchmarks:\n    - path: {}\n",
        secret.display()
    );
    let message = refusal(try_submit(&connection, &benchmarks, dir.path()).await);
    assert!(
        message.contains("evaluation.benchmarks[0].path: `file://")
            && message.contains("outside the data roots"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_flags_and_oversized_requests_leave_the_coordinator_serving() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--max-shards",
        "10",
        "--max-spec-bytes",
        "2000",
        "--max-message-bytes",
        "100000",
    ];
    let coordinator = Coordinator::start_with(&dir.path().join("state"), 0, 5_000, None, &flags);
    let connection = connect(&coordinator.url, None).await;
    let noop = |shards: u32| {
        format!("name: lim\nstorage: ./s\nphases:\n  - {{name: a, kind: noop, shards: {shards}}}\n")
    };
    let message = refusal(try_submit(&connection, &noop(11), dir.path()).await);
    assert_eq!(
        message,
        "job.yaml:4:35: phases[0].shards: must be at most 10, got 11"
    );
    let padded = format!("{}# {}\n", noop(1), "x".repeat(3_000));
    let message = refusal(try_submit(&connection, &padded, dir.path()).await);
    let expected = format!("the spec is {} bytes; at most 2000 are read", padded.len());
    assert!(message.contains(&expected), "{message}");
    // A request over the message size is refused by the transport, with a status.
    let huge = format!("{}# {}\n", noop(1), "x".repeat(200_000));
    let status = try_submit(&connection, &huge, dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    // Nothing of that hurt it: it still takes a good job.
    try_submit(&connection, &noop(10), dir.path())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_and_status_work_beside_a_huge_job() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("state"), 0, 5_000, None);
    let connection = connect(&coordinator.url, None).await;
    // 20,000 tasks (the default most): the whole job is several times a 4 MB message.
    let huge = "name: huge\nstorage: ./s\nphases:\n  - {name: a, kind: noop, shards: 10000}\n  - {name: b, kind: noop, shards: 10000}\n";
    let id = try_submit(&connection, huge, dir.path()).await.unwrap();
    let small = try_submit(
        &connection,
        "name: small\nstorage: ./s\nphases: [{name: a, kind: noop}]\n",
        dir.path(),
    )
    .await
    .unwrap();

    let url = &coordinator.url;
    let listed = cli(&["--coordinator", url, "jobs"], None);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains(&id) && text.contains(&small),
        "{text}"
    );
    let status = cli(&["--coordinator", url, "status", &id], None);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = cli(&["--coordinator", url, "status", &id, "--json"], None);
    let job: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let step = &job["steps"][0];
    assert_eq!(
        step["tasks"].as_array().unwrap().len(),
        100,
        "a summary of the tasks"
    );
    assert_eq!(
        step["totals"]["tasks"], 10_000,
        "with totals over all of them"
    );
    assert_eq!(step["totals"]["states"]["pending"], 10_000);

    // Lists page by key: two pages of one job each, then none.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListJobsRequest {
            page_size: 1,
            page_token,
        };
        let answer = connection
            .jobs()
            .list_jobs(request)
            .await
            .unwrap()
            .into_inner();
        let page: Vec<serde_json::Value> = serde_json::from_str(&answer.jobs_json).unwrap();
        assert_eq!(page.len(), 1);
        seen.push(page[0]["id"].as_str().unwrap().to_string());
        if answer.next_page_token.is_empty() {
            break;
        }
        page_token = answer.next_page_token;
    }
    let mut expected = vec![id, small];
    expected.sort();
    assert_eq!(seen, expected);
}

/// The CI version of `scripts/bench load`: 5 s of 1,000 simulated workers and 100
/// clients against one coordinator process; every call answered.
#[tokio::test(flavor = "multi_thread")]
async fn five_seconds_of_load_without_an_error() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("load.md");
    let run = std::process::Command::new(bin("outloud-bench"))
        .args(["load", "--seconds", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    assert_eq!(json["errors"], 0, "{report}");
    assert!(
        json["tasks_completed"].as_u64().unwrap() >= 1_000,
        "{report}"
    );
    let kinds: Vec<&str> = json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "register",
        "lease",
        "heartbeat",
        "progress",
        "complete",
        "list_jobs",
        "list_workers",
        "get_job",
        "submit",
    ] {
        assert!(kinds.contains(&kind), "no {kind} calls: {report}");
    }
}
