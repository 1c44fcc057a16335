//! A rehearsal of the Kubernetes manifests' contract without Kubernetes: the coordinator,
//! two workers and the submit Job run with the command lines, environment and probes the
//! rendered cpu-dev overlay gives them, swapping only what a cluster provides (service
//! names, fixed ports, mounted Secrets, the in-cluster S3 store) for loopback
//! equivalents; a small job succeeds.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::files::*;
use support::manifests::*;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_manifests_contract_runs_a_job_here() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (_, objects) = render("cpu-dev");
    let coordinator = find(&objects, "StatefulSet", "outloud-coordinator");
    let coordinator = &coordinator["spec"]["template"]["spec"]["containers"][0];
    let worker = &find(&objects, "Deployment", "outloud-worker")["spec"]["template"]["spec"]["containers"]
        [0];
    let submitter =
        &find(&objects, "Job", "outloud-submit")["spec"]["template"]["spec"]["containers"][0];

    // What the cluster provides: the Secrets' files (a test CA and certificate for
    // 127.0.0.1), the volumes, the S3 store with its buckets.
    let volumes = dir.path().join("volumes");
    let tls = volumes.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let (ca, cert, key) = test_ca(&tls);
    std::fs::rename(&ca, tls.join("ca.crt")).unwrap();
    std::fs::rename(&cert, tls.join("tls.crt")).unwrap();
    std::fs::rename(&key, tls.join("tls.key")).unwrap();
    for (volume, secret) in [
        ("user-token", "outloud-user-token"),
        ("worker-token", "outloud-worker-token"),
    ] {
        let data = &find(&objects, "Secret", secret)["data"]["token"];
        let token = base64::engine::general_purpose::STANDARD
            .decode(str_of(data))
            .unwrap();
        std::fs::create_dir_all(volumes.join(volume)).unwrap();
        std::fs::write(volumes.join(volume).join("token"), token).unwrap();
    }
    std::fs::create_dir_all(volumes.join("state")).unwrap();
    let s3 = S3Server::start(&logs);
    for bucket in ["outloud-data", "outloud-runs"] {
        s3.create_bucket(bucket);
    }
    let cluster_s3 = "http://outloud-s3:5000".to_string();

    // The coordinator, as the StatefulSet runs it, on ports bound at 0.
    let ports = [
        ("0.0.0.0:50051".to_string(), "127.0.0.1:0".to_string()),
        ("0.0.0.0:9090".to_string(), "127.0.0.1:0".to_string()),
    ];
    let (mut args, env) = run_here(&objects, coordinator, &volumes, &ports);
    assert_eq!(env["AWS_ENDPOINT"], cluster_s3);
    let address_file = dir.path().join("coordinator.addr");
    args.push(format!("--address-file={}", address_file.display()));
    let s3_env: Vec<(String, String)> = s3.env();
    let with_local_s3 = |env: BTreeMap<String, String>| -> Vec<(String, String)> {
        env.into_iter()
            .map(|(k, v)| {
                if v == cluster_s3 {
                    (k, s3.endpoint.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    };
    assert!(s3_env.iter().any(|(k, _)| k == "AWS_ENDPOINT"));
    let _coordinator = spawn_with_env("outloud", &args, with_local_s3(env), &logs, "coordinator");
    let bound: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&address_file) {
            break serde_json::from_str(&text).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let address = |name: &str| bound[name].as_str().unwrap().to_string();
    let (grpc, metrics) = (address("grpc"), address("metrics"));
    // Its probes, as kubelet would send them.
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = str_of(&coordinator[probe]["httpGet"]["path"]);
        let (status, _) = http_get(&metrics, path).unwrap();
        assert!(status.contains("200"), "{probe} {path}: {status}");
    }

    // Two workers and the submit Job, their service name now the coordinator here.
    let service = [
        (
            "https://outloud-coordinator:50051".to_string(),
            format!("https://{grpc}"),
        ),
        ("0.0.0.0:9100".to_string(), "127.0.0.1:0".to_string()),
    ];
    let mut workers = Vec::new();
    for i in 0..2 {
        let (args, env) = run_here(&objects, worker, &volumes, &service);
        workers.push(spawn_with_env(
            "outloud-worker",
            &args,
            with_local_s3(env),
            &logs,
            &format!("worker-{i}"),
        ));
    }
    // Each worker serves its metrics, as Prometheus would scrape them.
    for i in 0..2 {
        let log = logs.join(format!("worker-{i}.log"));
        let port = port_in_log(&log, "worker metrics serving addr=127.0.0.1:", "worker");
        let (status, _) = http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap();
        assert!(status.contains("200"), "worker {i}: {status}");
    }
    let job = volumes.join("job");
    std::fs::create_dir_all(&job).unwrap();
    let spec = "name: rehearsal\nstorage: s3://outloud-runs/rehearsal\ndata:\n  - {name: corpus, kind: generated_text, seed: 3, words: 20000}\nmodel: {preset: tiny}\nphases:\n  - {name: language, kind: language, data: [corpus], steps: 30, checkpoint_every: 10}\n";
    std::fs::write(job.join("job.yaml"), spec).unwrap();
    let (args, _) = run_here(&objects, submitter, &volumes, &service);
    let submitted = tokio::task::spawn_blocking(move || {
        Command::new(bin("outloud"))
            .args(&args)
            .env_remove("OUTLOUD_TOKEN")
            .output()
            .unwrap()
    });
    let logs_said = || -> String {
        ["coordinator", "worker-0", "worker-1"]
            .map(|name| {
                let text = std::fs::read_to_string(logs.join(format!("{name}.log")));
                let text = text.unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("== {name}\n{}\n", tail.join("\n"))
            })
            .concat()
    };
    let submitted = tokio::time::timeout(Duration::from_secs(120), submitted).await;
    let submitted = submitted
        .unwrap_or_else(|_| panic!("the job did not finish:\n{}", logs_said()))
        .unwrap();
    let said = String::from_utf8_lossy(&submitted.stdout).into_owned()
        + &String::from_utf8_lossy(&submitted.stderr);
    assert!(
        submitted.status.success(),
        "the submit Job failed:\n{said}\n{}",
        logs_said()
    );
    assert!(said.contains("succeeded"), "{said}");
    // The job's checkpoints are in the store, under the storage root the spec named.
    let runs =
        outloud_core::storage::Location::open_with("s3://outloud-runs/rehearsal/jobs", s3.env())
            .unwrap();
    let written = runs.list().await.unwrap();
    assert!(
        written
            .iter()
            .any(|o| o.url().ends_with("/final/manifest.json")),
        "{written:?}"
    );
}
