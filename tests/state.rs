//! The coordinator's state directory across versions. A directory written by the build
//! before the store had a schema version (`tests/fixtures/state-v0`) is migrated when a
//! coordinator opens it: its finished job reports exactly as before, and the job that
//! was waiting for a worker runs to the end on today's worker. A directory of a newer
//! schema is refused with what to do, and left as it was.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const FINISHED: &str = "legacy-1-db89d9";
const WAITING: &str = "waiting-2-dbbad8";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0")
}

/// A copy of the fixture's state directory (the fixture itself is never written).
fn copied_state(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(fixture().join("outloud.redb"), state.join("outloud.redb")).unwrap();
    state
}

#[tokio::test]
async fn a_state_directory_of_schema_0_is_migrated_and_its_jobs_go_on() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let state = copied_state(dir.path());
    let coordinator = Coordinator::start(&state, 0, 2_000, None);
    let connection = connect(&coordinator.url, None).await;

    // The finished job: the same report as the old build printed.
    let html = dir.path().join("report.html");
    let report = cli(
        &[
            "report",
            FINISHED,
            "--json",
            "--detail",
            "--html",
            html.to_str().unwrap(),
            "--coordinator",
            &coordinator.url,
        ],
        None,
    );
    assert!(report.status.success(), "{report:?}");
    let now: Value = serde_json::from_slice(&report.stdout).unwrap();
    let before: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("report.json")).unwrap()).unwrap();
    assert!(
        holds(&now, &before),
        "the migrated job reports as it did:\n{now:#}\nbefore:\n{before:#}"
    );

    // Its results are typed now, and its eval steps count items in their own field.
    let legacy = job(&connection, FINISHED).await;
    let probe = legacy.steps[2].results();
    let caption = probe.probe("caption_accuracy").expect("the caption probe");
    assert!(caption.chance.is_some_and(|c| c > 0.0), "{probe:?}");
    let eval = &legacy.steps[1];
    assert!(eval.is_evaluation());
    let (m, results) = (eval.metrics(), eval.results());
    assert_eq!((m.items, m.total_items, m.step), (84, 84, 0));
    assert_eq!(results.counts.items_scored, 84);
    assert_eq!(results.benchmark("world_grammar").unwrap().items, 72);

    // The waiting job was planned by the migration; today's worker runs it to the end.
    let _worker = start_worker(&coordinator.url, &dir.path().join("logs"), "w", None);
    let waiting = wait_until(&connection, WAITING, Duration::from_secs(60), finished).await;
    assert_succeeded(&waiting);

    // Opened again, the state is of today's schema: nothing is migrated twice.
    drop(coordinator);
    let again = Coordinator::start(&state, 0, 2_000, None);
    let connection = connect(&again.url, None).await;
    assert_eq!(job(&connection, FINISHED).await, legacy);
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(!log.contains("migrated"), "{log}");
}

#[tokio::test]
async fn a_state_directory_of_a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = copied_state(dir.path());
    {
        let db = redb::Database::create(state.join("outloud.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let mut table = txn.open_table(meta).unwrap();
            table.insert("schema", b"99".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let before = records(&state);
    let refused = Command::new(bin("outloud"))
        .args(["coordinator", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{message}");
    assert!(
        message.contains("schema version 99")
            && message.contains("newer Outloud")
            && message.contains("--state-dir"),
        "{message}"
    );
    assert!(
        before == records(&state),
        "a refused state directory is not written"
    );
}

#[tokio::test]
async fn a_state_write_that_fails_changes_nothing_and_the_coordinator_recovers_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let extra = ["--fail-store-writes-after", "1"];
    let mut coordinator = Coordinator::start_with(&state, 0, 60_000, None, &extra);
    let connection = connect(&coordinator.url, None).await;
    let noop =
        |name: &str| format!("name: {name}\nstorage: ./s\nphases: [{{name: a, kind: noop}}]\n");
    let kept = submit(&connection, &noop("kept"), dir.path()).await;
    // The second write fails: the client hears the change did not happen, and it did not.
    let request = outloud_proto::v1::SubmitJobRequest {
        spec_yaml: noop("lost"),
        source_name: "lost.yaml".into(),
        working_dir: dir.path().display().to_string(),
    };
    let refused = connection.jobs().submit_job(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("did not happen"), "{refused:?}");
    let status = coordinator
        .process
        .exited_within(Duration::from_secs(10))
        .expect("the coordinator stops rather than serve what disk does not have");
    assert!(!status.success());
    let log = std::fs::read_to_string(&coordinator.log).unwrap();
    assert!(log.contains("restart it on"), "{log}");

    let again = Coordinator::start(&state, 0, 60_000, None);
    let jobs = cli(&["jobs", "--json", "--coordinator", &again.url], None);
    let jobs: Value = serde_json::from_slice(&jobs.stdout).unwrap();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept.as_str()], "the lost job is not there");
}

/// Whether `new` says everything `old` said, the same way (it may say more: fields added
/// since).
fn holds(new: &Value, old: &Value) -> bool {
    match (new, old) {
        (Value::Object(new), Value::Object(old)) => old
            .iter()
            .all(|(key, value)| new.get(key).is_some_and(|n| holds(n, value))),
        (Value::Array(new), Value::Array(old)) => {
            new.len() == old.len() && new.iter().zip(old).all(|(n, o)| holds(n, o))
        }
        // The old build parsed floats to within an ulp (serde_json without
        // `float_roundtrip`); today's CLI prints the coordinator's numbers exactly.
        (Value::Number(new), Value::Number(old)) if new.is_f64() || old.is_f64() => {
            let (new, old) = (new.as_f64().unwrap(), old.as_f64().unwrap());
            (new - old).abs() <= 1e-12 * old.abs().max(1.0)
        }
        _ => new == old,
    }
}

/// Every record of every table, to see that nothing changed.
fn records(state: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::create(state.join("outloud.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let mut all = Vec::new();
    for name in ["jobs", "tasks", "workers", "meta"] {
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(name);
        for row in txn.open_table(table).unwrap().iter().unwrap() {
            let (key, value) = row.unwrap();
            all.push((
                name.into(),
                key.value().as_bytes().to_vec(),
                value.value().to_vec(),
            ));
        }
    }
    assert!(
        all.len() >= 8,
        "the fixture has jobs, tasks, workers, counters"
    );
    all
}
