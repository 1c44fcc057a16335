//! `outloud local`: a whole cluster on this machine. It serves a coordinator in this
//! process on a free loopback port, starts N `outloud-worker` processes, submits the
//! job, follows it, prints a summary and stops everything, also on Ctrl-C.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use outloud_proto::v1 as pb;
use tokio::process::{Child, Command};

use crate::report::Report;
use crate::scheduler::{RunState, StepKind, TaskState};
use crate::server::{self, ServerConfig};
use crate::view;
use outloud_core::client::{Connection, Dial};

pub struct LocalCluster {
    pub file: PathBuf,
    pub workers: u32,
    pub threads: u32,
    pub state_dir: Option<PathBuf>,
    pub token: Option<String>,
    /// Serve the dashboard, its API and metrics here (`host:port`).
    pub http: String,
}

/// The worker binary: `$OUTLOUD_WORKER_BIN`, else the one beside this executable.
pub(super) fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("OUTLOUD_WORKER_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("outloud-worker");
    anyhow::ensure!(
        path.exists(),
        "no outloud-worker beside {} (set OUTLOUD_WORKER_BIN)",
        exe.display()
    );
    Ok(path)
}

pub async fn run(cluster: LocalCluster) -> anyhow::Result<ExitCode> {
    let state_dir = match cluster.state_dir {
        Some(dir) => dir,
        // Two runs started in the same millisecond still get a folder each.
        None => PathBuf::from(".outloud/local").join(format!(
            "{}-{}",
            server::now_ms(),
            std::process::id()
        )),
    };
    let log_dir = state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    // The user's own machine: paths are not confined, plain loopback is fine.
    let config = ServerConfig {
        // The workers, started from this process, read the same variable.
        otlp_endpoint: std::env::var(outloud_core::traces::ENDPOINT_ENV).ok(),
        ..ServerConfig::local(
            state_dir.join("coordinator"),
            Duration::from_secs(5),
            cluster.token.clone(),
        )
    };
    let http = super::bind(&cluster.http).await?;
    let dashboard = format!("http://{}/", http.local_addr()?);
    let server = tokio::spawn(server::run(listener, Some(http), config, async {
        let _ = stopped.await;
    }));
    eprintln!(
        "coordinator on {url}, state and logs in {}\ndashboard: {dashboard}",
        state_dir.display()
    );

    let binary = worker_binary()?;
    let mut workers = Vec::new();
    for i in 0..cluster.workers {
        let log = std::fs::File::create(worker_log(&log_dir, i))?;
        let mut command = Command::new(&binary);
        command
            .args([
                "--coordinator",
                &url,
                "--threads",
                &cluster.threads.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(token) = &cluster.token {
            command.env(outloud_core::auth::TOKEN_ENV, token);
        }
        workers.push(
            command
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?,
        );
    }

    let connection = Connection::open(&url, &Dial::token(cluster.token.as_deref())).await?;
    let outcome = async {
        let job_id = super::submit(&connection, &cluster.file).await?;
        eprintln!("job {job_id} submitted with {} workers", cluster.workers);
        tokio::select! {
            job = super::watch(&connection, &job_id) => job.map(Some),
            _ = workers_gone(&mut workers) => {
                anyhow::bail!(
                    "every worker exited before {job_id} finished; the end of their logs:\n{}",
                    log_tails(&log_dir, cluster.workers)
                )
            }
            _ = outloud_core::telemetry::shutdown_signal() => {
                eprintln!("interrupted: cancelling {job_id}");
                let request = pb::CancelJobRequest { job_id: job_id.clone() };
                let _ = connection.jobs().cancel_job(request).await;
                Ok(None)
            }
        }
    }
    .await;

    stop_workers(&mut workers).await;
    let _ = stop_server.send(());
    let _ = server.await;

    let Some(job) = outcome? else {
        return Ok(ExitCode::from(130));
    };
    print!("{}", view::job_table(&job));
    let seconds = job
        .finished_at
        .unwrap_or(job.submitted_at)
        .saturating_sub(job.submitted_at) as f64
        / 1000.0;
    println!(
        "finished in {seconds:.1} s with {} workers",
        cluster.workers
    );
    for step in &job.steps {
        for task in &step.tasks {
            if let TaskState::Succeeded { output } = &task.state {
                println!("{} output: {output}", step.name);
            }
        }
        let (took, m) = (phase_seconds(&job, &step.name), step.metrics());
        match step.kind {
            StepKind::Prepare => println!(
                "{}: {} data sources ready in {took:.1} s",
                step.name,
                step.results().sources.len()
            ),
            StepKind::Synthesize { .. } => println!(
                "{}: {} captions kept of {} pictures in {took:.1} s",
                step.name,
                step.results().counts.synthesis.kept,
                step.results().counts.synthesis.pictures
            ),
            StepKind::Finetune { .. } => {
                let results = step.results();
                println!(
                    "{}: {} GLUE tasks in {took:.1} s: {}",
                    step.name,
                    results.glue.len(),
                    view::results_line(&results)
                )
            }
            StepKind::Evaluate { .. } => println!(
                "{}: {} items scored in {took:.1} s ({:.0}/s)",
                step.name,
                m.items,
                m.items as f64 / took.max(1e-3)
            ),
            StepKind::Train { .. } => {
                if let Some(first) = step.first_loss() {
                    println!(
                        "{}: loss {first:.3} -> {:.3} over {} steps in {took:.1} s; {} tokens ({:.0}/s), {} words",
                        step.name,
                        m.loss,
                        m.step,
                        m.tokens,
                        m.tokens as f64 / took.max(1e-3),
                        m.words
                    );
                    if m.allreduce_bytes > 0 {
                        println!(
                            "{}: rank 0 all-reduced {:.1} MiB in {:.1} s",
                            step.name,
                            m.allreduce_bytes as f64 / f64::from(1u32 << 20),
                            m.allreduce_seconds
                        );
                    }
                }
            }
        }
    }
    let report = Report::of(&job);
    if !report.benchmarks.is_empty() {
        print!("\n{}", report.table(false));
        let page = state_dir.join("report.html");
        std::fs::write(&page, report.html())?;
        println!("HTML report: {}", page.display());
    }
    Ok(if job.state == RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// From the phase's start to its end, in the job's history.
fn phase_seconds(job: &crate::scheduler::Job, name: &str) -> f64 {
    use crate::scheduler::EventKind;
    let at = |wanted: fn(&EventKind) -> Option<&String>| {
        job.history
            .iter()
            .find(|e| wanted(&e.what).is_some_and(|p| p == name))
            .map(|e| e.at)
    };
    let started = at(|e| match e {
        EventKind::PhaseStarted { phase } => Some(phase),
        _ => None,
    });
    let ended = at(|e| match e {
        EventKind::PhaseSucceeded { phase } => Some(phase),
        _ => None,
    });
    match (started, ended) {
        (Some(s), Some(e)) => e.saturating_sub(s) as f64 / 1000.0,
        _ => 0.0,
    }
}

/// SIGTERM first so workers give their leases back; SIGKILL whoever lingers.
/// Completes once every worker process has exited: nothing is left to run the job.
async fn workers_gone(workers: &mut [Child]) {
    for child in workers.iter_mut() {
        let _ = child.wait().await;
    }
}

/// Where worker `i` of a local cluster logs.
fn worker_log(log_dir: &std::path::Path, i: u32) -> PathBuf {
    log_dir.join(format!("worker-{i}.log"))
}

/// The last lines of each worker's log, to say why they died.
fn log_tails(log_dir: &std::path::Path, workers: u32) -> String {
    (0..workers)
        .map(|i| {
            let file = worker_log(log_dir, i);
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            format!("--- {}\n{tail}", file.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn stop_workers(workers: &mut [Child]) {
    for child in workers.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we spawned and still own; no memory is touched.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    for child in workers.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}
