//! Bad job specs are refused with file, line, column and field, and create nothing;
//! calls without the right bearer token are refused.

mod support;

use std::path::Path;
use std::time::Duration;

use outloud_proto::v1 as pb;
use support::*;

const GOOD: &str = "\
name: spec-test
storage: ./storage
data:
  - name: corpus
    kind: generated_text
    words: 1000
phases:
  - name: language
    kind: language
    data: [corpus]
    steps: 10
";

/// (what is wrong, the spec, what the error must say: `file:line:col: field`).
fn bad_specs() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "unknown field",
            GOOD.replace("    steps: 10", "    steps: 10\n    epochs: 3"),
            "bad.yaml:12:5: phases[0]: unknown field `epochs`",
        ),
        (
            "wrong type",
            GOOD.replace("steps: 10", "steps: many"),
            "bad.yaml:11:12: phases[0].steps: invalid type",
        ),
        (
            "negative budget",
            GOOD.replace("words: 1000", "words: -1000"),
            "bad.yaml:6:12: data[0].words: must not be negative, got `-1000`",
        ),
        (
            "missing field",
            GOOD.replace("storage: ./storage\n", ""),
            "bad.yaml:1:1: missing field `storage`",
        ),
        (
            "missing data",
            GOOD.replace(
                "kind: generated_text\n    words: 1000",
                "kind: text\n    path: ./no/such/folder",
            ),
            "bad.yaml:6:11: data[0].path: nothing at `file://",
        ),
        (
            "undefined data source",
            GOOD.replace("data: [corpus]", "data: [corpsu]"),
            "bad.yaml:10:12: phases[0].data[0]: no data source named `corpsu`",
        ),
        (
            "a collective that never waits",
            GOOD.replace(
                "    steps: 10",
                "    steps: 10\n    world_size: 2\n    collective_timeout_ms: 0",
            ),
            "bad.yaml:13:28: phases[0].collective_timeout_ms: must be at least 1",
        ),
        (
            "a gang range upside down",
            GOOD.replace(
                "    steps: 10",
                "    steps: 10\n    min_world_size: 3\n    max_world_size: 2",
            ),
            "bad.yaml:12:21: phases[0].min_world_size: 3 is more than max_world_size 2",
        ),
        (
            "zero steps",
            GOOD.replace("steps: 10", "steps: 0"),
            "bad.yaml:11:12: phases[0].steps: must be at least 1",
        ),
        (
            "bad model shape",
            GOOD.replace("phases:", "model: {n_heads: 5}\nphases:"),
            "bad.yaml:7:18: model.n_heads: must divide d_model",
        ),
        (
            "unknown phase kind",
            GOOD.replace("kind: language", "kind: dreaming"),
            "bad.yaml:9:11: phases[0].kind: unknown variant `dreaming`",
        ),
        (
            "not yaml",
            "name: \"unterminated\nstorage: x\n".to_string(),
            "bad.yaml:3:1: found unexpected end of stream",
        ),
        (
            "4294967295 shards (they once took the coordinator down)",
            GOOD.replace(
                "phases:\n",
                "phases:\n  - {name: many, kind: noop, shards: 4294967295}\n",
            ),
            "bad.yaml:8:38: phases[0].shards: must be at most 10000, got 4294967295",
        ),
        (
            "2^63 words",
            GOOD.replace(
                "    steps: 10",
                "    steps: 10\n    words: 9223372036854775808",
            ),
            "bad.yaml:12:12: phases[0].words: must be at most 1000000000000",
        ),
        (
            "a 65536-pixel picture",
            GOOD.replace(
                "phases:",
                "model: {vision: {image_size: 65536, patch_size: 1}}\nphases:",
            ),
            "bad.yaml:7:30: model.vision.image_size: must be at most 4096",
        ),
        (
            "a 4e9-wide model",
            GOOD.replace("phases:", "model: {d_model: 4000000000}\nphases:"),
            "bad.yaml:7:18: model.d_model: must be at most 65536",
        ),
        (
            "a spec of 300 KB",
            format!("{GOOD}# {}\n", "x".repeat(300_000)),
            "bad.yaml:1:1: the spec is 300",
        ),
        (
            "a 60 KB value",
            GOOD.replace("steps: 10", &format!("steps: {}", "x".repeat(60_000))),
            "bad.yaml:11:12: phases[0].steps: invalid type",
        ),
    ]
}

fn write(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs `outloud COMMAND bad.yaml EXTRA...` on every bad spec: each must be refused
/// with a non-zero exit and its location.
fn assert_each_bad_spec_refused(dir: &Path, command: &str, extra: &[&str]) {
    for (what, yaml, expected) in bad_specs() {
        write(dir, &yaml);
        let args: Vec<&str> = [command, "bad.yaml"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let out = cli_in(dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(expected),
            "{what}: expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn validate_refuses_each_bad_spec_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), GOOD);
    let out = cli_in(dir.path(), &["validate", "bad.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_each_bad_spec_refused(dir.path(), "validate", &[]);
    // An error quotes at most an excerpt of what it refuses.
    write(
        dir.path(),
        &GOOD.replace("steps: 10", &format!("steps: {}", "x".repeat(60_000))),
    );
    let out = cli_in(dir.path(), &["validate", "bad.yaml"]);
    assert!(
        out.stderr.len() < 1_000,
        "{} bytes of error",
        out.stderr.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_refuses_bad_specs_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("state"), 0, 5_000, None);
    assert_each_bad_spec_refused(dir.path(), "submit", &["--coordinator", &coordinator.url]);
    let out = cli(&["jobs", "--json", "--coordinator", &coordinator.url], None);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs, serde_json::json!([]), "a refused spec created a job");
    assert!(
        !dir.path().join("storage").exists(),
        "a refused spec wrote to storage"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_the_right_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let token = "correct-horse-battery-staple";
    let coordinator = Coordinator::start(&dir.path().join("state"), 0, 5_000, Some(token));

    // Raw gRPC: every service refuses a missing or wrong token.
    for given in [None, Some("wrong")] {
        let connection = connect(&coordinator.url, given).await;
        let register = pb::RegisterRequest { info: None };
        let refused = connection.workers().register(register).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{given:?}");
        let refused = connection
            .jobs()
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{given:?}");
    }
    // The CLI says so and exits non-zero; with the token it works.
    let out = cli(&["jobs", "--coordinator", &coordinator.url], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing bearer token"));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let out = cli(
        &[
            "jobs",
            "--coordinator",
            &coordinator.url,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A worker without the token gives up instead of running anything.
    let mut worker = start_worker(&coordinator.url, &dir.path().join("logs"), "intruder", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut child_exited = false;
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(dir.path().join("logs/intruder.log"))
            .unwrap_or_default()
            .contains("coordinator refused us")
        {
            child_exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    worker.sigkill();
    assert!(child_exited, "the worker was not refused");
    let connection = connect(&coordinator.url, Some(token)).await;
    let workers = connection
        .jobs()
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(workers.workers_json, "[]");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_submits_watches_and_cancels_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("state"), 0, 5_000, None);
    let _worker = start_worker(&coordinator.url, &dir.path().join("logs"), "w0", None);
    let url = coordinator.url.as_str();
    let run = |args: &[&str]| {
        let args: Vec<&str> = args.iter().copied().chain(["--coordinator", url]).collect();
        cli_in(dir.path(), &args)
    };

    // --watch follows the job to its end and exits 0 when it succeeded.
    let noop = "name: quick\nstorage: ./s\nphases:\n  - {name: a, kind: noop, shards: 3}\n  - {name: b, kind: noop}\n";
    std::fs::write(dir.path().join("quick.yaml"), noop).unwrap();
    let out = run(&["submit", "quick.yaml", "--watch"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("succeeded") && stdout.contains("quick-1-"),
        "{stdout}"
    );

    // Without --watch it prints the id; cancel ends the job; status shows it.
    let slow = GOOD
        .replace("steps: 10", "steps: 100000")
        .replace("name: spec-test", "name: slow");
    std::fs::write(dir.path().join("slow.yaml"), slow).unwrap();
    let out = run(&["submit", "slow.yaml"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("slow-2-"), "{id}");
    let out = run(&["cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&run(&["status", &id, "--json"]).stdout).unwrap();
    assert_eq!(status["state"], "cancelled");
    let table = String::from_utf8_lossy(&run(&["jobs"]).stdout).to_string();
    assert!(
        table.contains(&id) && table.contains("cancelled"),
        "{table}"
    );
    // Cancelling twice says why it cannot.
    let out = run(&["cancel", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));
}

#[tokio::test]
async fn status_says_when_no_worker_is_there_to_run_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("state"), 0, 5_000, None);
    let noop = "name: waiting\nstorage: ./s\nphases:\n  - {name: a, kind: noop}\n";
    std::fs::write(dir.path().join("waiting.yaml"), noop).unwrap();
    let url = coordinator.url.as_str();
    let out = cli_in(
        dir.path(),
        &["submit", "waiting.yaml", "--coordinator", url],
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status = cli_in(dir.path(), &["status", &id, "--coordinator", url]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("no live worker"), "{table}");
    let _worker = start_worker(url, &dir.path().join("logs"), "w", None);
    let connection = connect(url, None).await;
    assert_succeeded(
        &wait_until(
            &connection,
            &id,
            std::time::Duration::from_secs(30),
            finished,
        )
        .await,
    );
    let status = cli_in(dir.path(), &["status", &id, "--coordinator", url]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("no live worker"));
}

#[tokio::test(flavor = "multi_thread")]
async fn users_and_workers_hold_different_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (user, work) = ("the-user-token", "the-worker-token");
    let worker_env = [("OUTLOUD_WORKER_TOKEN".to_string(), work.to_string())];
    let coordinator = Coordinator::start_with_env(
        &dir.path().join("state"),
        0,
        5_000,
        Some(user),
        &[],
        &worker_env,
    );
    let url = coordinator.url.as_str();
    // A user token cannot lease or report tasks.
    let as_user = connect(url, Some(user)).await;
    let refused = as_user
        .workers()
        .register(pb::RegisterRequest { info: None })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let lease = pb::LeaseTaskRequest {
        worker_id: "w1-x".into(),
    };
    let refused = as_user.workers().lease_task(lease).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // A worker token cannot submit, list or read jobs.
    let as_worker = connect(url, Some(work)).await;
    let submit_request = pb::SubmitJobRequest {
        spec_yaml: "name: x\nstorage: ./s\nphases: [{name: a, kind: noop}]\n".into(),
        source_name: "x.yaml".into(),
        working_dir: dir.path().display().to_string(),
    };
    let refused = as_worker
        .jobs()
        .submit_job(submit_request)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = as_worker
        .jobs()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // Each does its own part: the user submits, a worker with its token runs the job.
    let noop = "name: split\nstorage: ./s\nphases: [{name: a, kind: noop, shards: 2}]\n";
    let id = submit(&as_user, noop, dir.path()).await;
    let _worker = start_worker_with_env(url, &dir.path().join("logs"), "w", None, &worker_env);
    let job = wait_until(&as_user, &id, std::time::Duration::from_secs(30), finished).await;
    assert_succeeded(&job);
}
