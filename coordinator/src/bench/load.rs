//! `scripts/bench load`: 1,000 simulated workers and 100 CLI clients at once against
//! one coordinator process for a minute. Workers register, heartbeat, lease no-op tasks,
//! "work" on each for a while, report progress and complete it; clients list jobs and
//! workers (every page), read jobs and now and then submit one. Every call's latency is
//! kept by kind; any error is counted (and fails the run); the coordinator's resident
//! memory is read from /proc before and after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outloud_core::client::{Connection, Dial};
use outloud_proto::v1 as pb;
use serde::Serialize;

use super::percentile;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub workers: usize,
    pub clients: usize,
    pub duration: Duration,
    /// The `outloud` binary to run the coordinator from.
    pub outloud: PathBuf,
}

/// Latencies (µs) and errors of one kind of call.
#[derive(Debug, Default)]
struct Calls {
    latencies: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// Every call made, by kind.
#[derive(Debug, Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<&'static str, Calls>>>);

impl Tally {
    /// Times `call` and files it under `kind`.
    async fn time<T>(
        &self,
        kind: &'static str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let calls = all.entry(kind).or_default();
        match result {
            Ok(value) => {
                calls.latencies.push(micros);
                Some(value)
            }
            Err(status) => {
                calls.errors += 1;
                calls
                    .first_error
                    .get_or_insert_with(|| format!("{status:?}"));
                None
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallKind {
    pub kind: String,
    pub calls: usize,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub workers: usize,
    pub clients: usize,
    pub seconds: f64,
    pub calls: Vec<CallKind>,
    pub errors: u64,
    pub tasks_completed: usize,
    pub jobs_submitted: usize,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
}

/// The coordinator under load, as its own process (so its memory is its own).
struct Served {
    child: Child,
    url: String,
    _state: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(outloud: &Path) -> anyhow::Result<Served> {
    let state = tempfile::tempdir()?;
    let address = state.path().join("address.json");
    let child = Command::new(outloud)
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--lease-timeout-ms",
            "30000",
        ])
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .arg("--address-file")
        .arg(&address)
        .env_remove("OUTLOUD_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", outloud.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&address) {
            break text;
        }
        anyhow::ensure!(Instant::now() < deadline, "the coordinator did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let bound: serde_json::Value = serde_json::from_str(&text)?;
    let grpc = bound["grpc"].as_str().unwrap_or_default();
    Ok(Served {
        child,
        url: format!("http://{grpc}"),
        _state: state,
    })
}

/// Resident memory of process `pid`, in MiB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn noop_job(name: &str, shards: u32) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec_yaml: format!(
            "name: {name}\nstorage: /tmp/outloud-load\nphases:\n  - {{name: work, kind: noop, shards: {shards}}}\n"
        ),
        source_name: "load.yaml".into(),
        working_dir: "/".into(),
    }
}

/// A small random number generator (xorshift), so runs need no extra crate.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One simulated worker: a real worker's calls, with sleeps for the work.
async fn worker(connection: Connection, tally: Tally, until: Instant, seed: u64) -> usize {
    let mut client = connection.workers();
    let mut dice = Dice(seed | 1);
    let info = pb::WorkerInfo {
        hostname: format!("sim-{seed}"),
        device: "none".into(),
        memory_bytes: 0,
        threads: 1,
        ..Default::default()
    };
    let register = client.register(pb::RegisterRequest { info: Some(info) });
    let Some(registered) = tally.time("register", register).await else {
        return 0;
    };
    let worker_id = registered.into_inner().worker_id;
    let mut completed = 0;
    while Instant::now() < until {
        let lease = client.lease_task(pb::LeaseTaskRequest {
            worker_id: worker_id.clone(),
        });
        let Some(task) = tally
            .time("lease", lease)
            .await
            .and_then(|a| a.into_inner().task)
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        // The work: a while, with a heartbeat and a progress report on the way.
        tokio::time::sleep(Duration::from_millis(200 + dice.below(800))).await;
        let heartbeat = client.heartbeat(pb::HeartbeatRequest {
            worker_id: worker_id.clone(),
            leases: task.lease.iter().cloned().collect(),
        });
        tally.time("heartbeat", heartbeat).await;
        let progress = client.report_progress(pb::ReportProgressRequest {
            worker_id: worker_id.clone(),
            lease: task.lease.clone(),
            metrics: Some(pb::Metrics::default()),
            ..Default::default()
        });
        tally.time("progress", progress).await;
        tokio::time::sleep(Duration::from_millis(dice.below(500))).await;
        let complete = client.complete_task(pb::CompleteTaskRequest {
            worker_id: worker_id.clone(),
            lease: task.lease,
            ..Default::default()
        });
        if tally.time("complete", complete).await.is_some() {
            completed += 1;
        }
    }
    completed
}

/// One CLI user: lists, reads and now and then submits.
async fn client(
    connection: Connection,
    tally: Tally,
    until: Instant,
    seed: u64,
    mut known: Vec<String>,
) -> usize {
    let mut jobs = connection.jobs();
    let mut dice = Dice(seed | 1);
    let mut submitted = 0;
    while Instant::now() < until {
        match dice.below(20) {
            0 => {
                let submit = jobs.submit_job(noop_job("user", 100));
                if let Some(answer) = tally.time("submit", submit).await {
                    known.push(answer.into_inner().job_id);
                    submitted += 1;
                }
            }
            1..=7 => {
                let (mut token, mut pages) = (String::new(), 0);
                loop {
                    let list = jobs.list_jobs(pb::ListJobsRequest {
                        page_size: 0,
                        page_token: token,
                    });
                    let Some(page) = tally.time("list_jobs", list).await else {
                        break;
                    };
                    let page = page.into_inner();
                    pages += 1;
                    if page.next_page_token.is_empty() || pages >= 50 {
                        break;
                    }
                    token = page.next_page_token;
                }
            }
            8..=11 => {
                let list = jobs.list_workers(pb::ListWorkersRequest {
                    page_size: 0,
                    page_token: String::new(),
                });
                tally.time("list_workers", list).await;
            }
            _ => {
                let Some(id) = known.get(dice.below(known.len() as u64) as usize).cloned() else {
                    continue;
                };
                let get = jobs.get_job(pb::GetJobRequest {
                    job_id: id,
                    ..Default::default()
                });
                tally.time("get_job", get).await;
            }
        }
        // A person at a terminal, or a dashboard polling: a few calls a second each.
        tokio::time::sleep(Duration::from_millis(100 + dice.below(400))).await;
    }
    submitted
}

/// Runs the load and answers what it measured.
pub async fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    let served = serve(&config.outloud)?;
    let pid = served.child.id();
    let dial = Dial::default();
    let first = Connection::open(&served.url, &dial).await?;
    // Work for every worker for the whole run (a worker does about a task a second),
    // in jobs of 10,000 tasks (the default most a step may have), submitted before the
    // clock starts.
    let needed = config.workers as f64 * config.duration.as_secs_f64();
    let mut seeded = Vec::new();
    for _ in 0..(needed / 10_000.0).ceil() as usize + 1 {
        let request = noop_job("seed", 10_000);
        seeded.push(first.jobs().submit_job(request).await?.into_inner().job_id);
    }
    let mut worker_connections = Vec::new();
    for _ in 0..64.min(config.workers.max(1)) {
        worker_connections.push(Connection::open(&served.url, &dial).await?);
    }
    let tally = Tally::default();
    let rss_start = rss_mb(pid);
    let started = Instant::now();
    let until = started + config.duration;
    let workers: Vec<_> = (0..config.workers)
        .map(|i| {
            let connection = worker_connections[i % worker_connections.len()].clone();
            tokio::spawn(worker(
                connection,
                tally.clone(),
                until,
                i as u64 * 7919 + 1,
            ))
        })
        .collect();
    let mut clients = Vec::new();
    for i in 0..config.clients {
        let connection = Connection::open(&served.url, &dial).await?;
        let seed = i as u64 * 104_729 + 3;
        let user = client(connection, tally.clone(), until, seed, seeded.clone());
        clients.push(tokio::spawn(user));
    }
    let mut tasks_completed = 0;
    for handle in workers {
        tasks_completed += handle.await?;
    }
    let mut jobs_submitted = 0;
    for handle in clients {
        jobs_submitted += handle.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_end = rss_mb(pid);
    for job_id in seeded {
        let _ = first
            .jobs()
            .cancel_job(pb::CancelJobRequest { job_id })
            .await;
    }
    let calls = summarise(&tally);
    Ok(LoadReport {
        workers: config.workers,
        clients: config.clients,
        seconds,
        errors: calls.iter().map(|c| c.errors).sum(),
        calls,
        tasks_completed,
        jobs_submitted,
        rss_start_mb: rss_start,
        rss_end_mb: rss_end,
    })
}

fn summarise(tally: &Tally) -> Vec<CallKind> {
    let mut all = tally.0.lock().unwrap_or_else(|p| p.into_inner());
    all.iter_mut()
        .map(|(kind, calls)| {
            calls.latencies.sort_unstable();
            CallKind {
                kind: kind.to_string(),
                calls: calls.latencies.len(),
                errors: calls.errors,
                p50_ms: percentile(&calls.latencies, 0.50),
                p99_ms: percentile(&calls.latencies, 0.99),
                first_error: calls.first_error.clone(),
            }
        })
        .collect()
}

/// The report as Markdown.
pub fn markdown(report: &LoadReport) -> String {
    let mut out = format!(
        "{} simulated workers and {} CLI clients for {:.0} s: {} tasks completed, {} jobs \
         submitted, {} errors; coordinator memory {:.1} MiB -> {:.1} MiB (+{:.1} MiB).\n\n\
         | call | calls | errors | p50 | p99 |\n|---|---:|---:|---:|---:|\n",
        report.workers,
        report.clients,
        report.seconds,
        report.tasks_completed,
        report.jobs_submitted,
        report.errors,
        report.rss_start_mb,
        report.rss_end_mb,
        report.rss_end_mb - report.rss_start_mb,
    );
    for c in &report.calls {
        out += &format!(
            "| {} | {} | {} | {:.2} ms | {:.2} ms |\n",
            c.kind, c.calls, c.errors, c.p50_ms, c.p99_ms
        );
    }
    for c in report.calls.iter().filter(|c| c.errors > 0) {
        out += &format!(
            "\nfirst {} error: {}\n",
            c.kind,
            c.first_error.as_deref().unwrap_or("")
        );
    }
    out
}
