//! TLS end to end: a coordinator serving a certificate from a test CA (made here with
//! rcgen), a CLI and a worker that trust that CA and run a job over it, and clients that
//! do not trust it refused. Bearer tokens never travel in cleartext beyond loopback.

mod support;

use std::time::Duration;

use outloud_coordinator::scheduler::RunState;
use outloud_core::client::{Connection, Dial};
use support::files::*;
use support::*;

const TOKEN: &str = "tls-test-token";

fn cli_with(args: &[&str]) -> (bool, String) {
    let out = cli(args, Some(TOKEN));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_over_tls_and_clients_without_the_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let coordinator = Coordinator::start_with(
        &dir.path().join("state"),
        0,
        5_000,
        Some(TOKEN),
        &["--tls-cert", cert, "--tls-key", key],
    );
    let https = format!("https://localhost:{}", coordinator.port);
    let ca = ca.to_str().unwrap();

    // The CLI with the CA submits and reads over TLS.
    let storage = dir.path().join("s");
    let yaml = format!(
        "name: tls\nstorage: {}\nphases: [{{name: a, kind: noop, shards: 2}}]\n",
        storage.display()
    );
    std::fs::write(dir.path().join("noop.yaml"), yaml).unwrap();
    let spec = dir.path().join("noop.yaml");
    let (ok, text) = cli_with(&[
        "--coordinator",
        &https,
        "--tls-ca",
        ca,
        "submit",
        spec.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let id = text.trim().to_string();

    // A worker trusting the CA runs the job to the end.
    let logs = dir.path().join("logs");
    let env = [("OUTLOUD_TLS_CA".to_string(), ca.to_string())];
    let _worker = start_worker_with_env(&https, &logs, "w", Some(TOKEN), &env);
    let mut dial = Dial::token(Some(TOKEN));
    dial.ca_pem = Some(std::fs::read(ca).unwrap());
    let connection = Connection::open(&https, &dial).await.unwrap();
    let job = wait_until(&connection, &id, Duration::from_secs(60), finished).await;
    assert_eq!(job.state, RunState::Succeeded, "{:?}", job.error);

    // Without the CA (the system's roots do not know it), over plain HTTP, or to a name
    // the certificate does not carry: refused, and nothing is read.
    let (ok, text) = cli_with(&["--coordinator", &https, "jobs"]);
    assert!(
        !ok && text.contains("cannot reach the coordinator"),
        "{text}"
    );
    let plain = format!("http://127.0.0.1:{}", coordinator.port);
    let (ok, text) = cli_with(&["--coordinator", &plain, "--tls-ca", ca, "jobs"]);
    assert!(!ok, "plain HTTP to a TLS port: {text}");
    let (ok, text) = cli_with(&["--coordinator", &https, "--tls-ca", ca, "jobs"]);
    assert!(ok && text.contains(&id), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_stay_off_cleartext_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    // A coordinator with a token on every interface, no TLS: refuses to start.
    let state = dir.path().join("state");
    let args = [
        "coordinator",
        "--listen",
        "0.0.0.0:0",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let (ok, text) = cli_with(&args);
    assert!(
        !ok && text.contains("refusing to take bearer tokens in cleartext"),
        "{text}"
    );
    // A client with a token will not send it in cleartext to another host.
    let (ok, text) = cli_with(&["--coordinator", "http://192.0.2.1:50051", "jobs"]);
    assert!(
        !ok && text.contains("refusing to send the bearer token in cleartext"),
        "{text}"
    );
    // --insecure says the network is trusted: the coordinator starts.
    let log = dir.path().join("insecure.log");
    let child = std::process::Command::new(bin("outloud"))
        .args([
            "coordinator",
            "--insecure",
            "--listen",
            "0.0.0.0:0",
            "--state-dir",
        ])
        .arg(&state)
        .env("OUTLOUD_TOKEN", TOKEN)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut insecure = Process {
        child,
        name: "insecure".into(),
    };
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("coordinator serving")
        {
            break;
        }
        assert!(
            insecure.exited_within(Duration::from_millis(100)).is_none(),
            "it exited"
        );
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("coordinator serving")
    );
}
