//! `outloud logs`: workers ship their task logs to the job's storage in chunks, and
//! the CLI reads them through the coordinator, whole or following a running task.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn logs(args: &[&str], url: &str) -> (bool, String, String) {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--coordinator", url]);
    let out = cli(&all, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_a_running_task_soon_after_the_worker_writes_them() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    let coordinator = Coordinator::start(&dir.path().join("state"), 0, 5_000, None);
    let flush = [("OUTLOUD_LOG_FLUSH_MS".to_string(), "200".to_string())];
    let _worker = start_worker_with_env(&coordinator.url, &logs_dir, "w0", None, &flush);
    let connection = connect(&coordinator.url, None).await;
    let data = "  - {name: corpus, kind: generated_text, seed: 3, words: 30000}";
    let id = submit(
        &connection,
        &language_job(&dir.path().join("storage"), data, 600, 40),
        dir.path(),
    )
    .await;

    // Follow the training step from before it starts, as JSON lines, timing each.
    let mut follower = Command::new(bin("outloud"))
        .args(["logs", &id, "--step", "language", "--follow", "--json"])
        .args(["--coordinator", &coordinator.url])
        .env_remove("OUTLOUD_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, arrived) = mpsc::channel::<(u64, Value)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if lines.send((now_ms(), value)).is_err() {
                return;
            }
        }
    });
    let job = wait_until(&connection, &id, Duration::from_secs(300), finished).await;
    assert_succeeded(&job);
    let ended = now_ms();
    // With the job over, the follower prints what is left and exits by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "logs --follow outlived the job");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let followed: Vec<(u64, Value)> = arrived.try_iter().collect();
    let messages: Vec<&str> = followed
        .iter()
        .map(|(_, l)| l["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"task started"), "{messages:?}");
    assert!(messages.contains(&"task ended; reporting"), "{messages:?}");
    let checkpoints = messages
        .iter()
        .filter(|m| **m == "checkpoint committed")
        .count();
    assert!(checkpoints >= 10, "{checkpoints} checkpoint lines of 14");
    // Lines came while the task ran, each soon after its worker wrote it (a flush
    // every 200 ms, a poll every 500 ms; the margin is wide for a busy machine).
    let while_running: Vec<&(u64, Value)> = followed.iter().filter(|(at, _)| *at < ended).collect();
    assert!(
        while_running.len() >= 5,
        "{} lines before the end",
        while_running.len()
    );
    let mut delays: Vec<u64> = while_running
        .iter()
        .map(|(at, line)| at.saturating_sub(line["ts_ms"].as_u64().unwrap()))
        .collect();
    delays.sort();
    let median = delays[delays.len() / 2];
    eprintln!(
        "followed {} lines; median delay {median} ms, max {} ms",
        followed.len(),
        delays.last().unwrap()
    );
    assert!(
        median < 3_000,
        "lines arrived {median} ms after they were written"
    );
    for (_, line) in &followed {
        assert_eq!(line["stream"], "language/attempt-1/rank-0");
    }

    // Without --follow: every step's lines, printed for people.
    let (ok, all, err) = logs(&[&id], &coordinator.url);
    assert!(ok, "{err}");
    for stream in ["prepare/attempt-1/rank-0", "language/attempt-1/rank-0"] {
        assert!(
            all.lines()
                .any(|l| l.contains(&format!("INFO {stream}: task started"))),
            "{all}"
        );
    }
    assert!(all.contains("checkpoint committed step=40 url="), "{all}");
    // One task's lines only; a task the step does not have is refused.
    let (ok, one, _) = logs(&[&id, "--step", "prepare", "--task", "0"], &coordinator.url);
    assert!(ok && !one.is_empty() && !one.contains("language/"), "{one}");
    let (ok, _, err) = logs(&[&id, "--step", "prepare", "--task", "3"], &coordinator.url);
    assert!(!ok && err.contains("has 1 task(s)"), "{err}");
    let (ok, _, err) = logs(&["no-such-job"], &coordinator.url);
    assert!(!ok && err.contains("no-such-job"), "{err}");
}
