//! The `outloud` commands. `outloud coordinator` serves; the others talk to a
//! coordinator over gRPC, except `validate` (local checks) and `local` (a whole cluster
//! on this machine).

mod local;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outloud_proto::v1 as pb;

use crate::report::Report;
use crate::scheduler::{Job, RunState, Worker};
use crate::view::{self, JobSummary};
use crate::{admission, server};
use outloud_core::client::Connection;
use outloud_core::{auth, telemetry};

pub use watch::watch;

#[derive(Debug, Parser)]
#[command(
    name = "outloud",
    version,
    about = "Trains small vision-language models the way a child learns"
)]
pub struct Args {
    /// The coordinator to talk to.
    #[arg(
        long,
        global = true,
        env = "OUTLOUD_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// File holding the bearer token (else $OUTLOUD_TOKEN, else none).
    #[arg(long, global = true, env = "OUTLOUD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the coordinator.
    Coordinator {
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// Where the durable state lives; restart on the same directory to continue.
        #[arg(long, default_value = ".outloud/state")]
        state_dir: PathBuf,
        /// A worker silent this long (milliseconds) loses its tasks.
        #[arg(long, default_value_t = 5000)]
        lease_timeout_ms: u64,
        /// Serve Prometheus metrics (`GET /metrics`) on this address.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Once listening, write the addresses bound here as JSON (`{"grpc": "127.0.0.1:
        /// 41234", "metrics": ...}`): with port 0, how a script or test learns them.
        #[arg(long)]
        address_file: Option<PathBuf>,
        /// File holding the workers' own token (else $OUTLOUD_WORKER_TOKEN): with it,
        /// only workers lease and report, and the user token only submits and reads.
        #[arg(long)]
        worker_token_file: Option<PathBuf>,
        /// Test seam: state writes fail after this many succeeded.
        #[arg(long, hide = true)]
        fail_store_writes_after: Option<u64>,
    },
    /// Submit a job spec.
    Submit {
        file: PathBuf,
        /// Follow the job with a progress bar per phase until it finishes.
        #[arg(long)]
        watch: bool,
    },
    /// Check a job spec without submitting it.
    Validate { file: PathBuf },
    /// Show one job.
    Status {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// List workers.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel { job: String },
    /// Run a failed step again, with every step that reads from it (default: every
    /// failed step); what succeeded is kept.
    Retry {
        job: String,
        #[arg(long)]
        step: Option<String>,
    },
    /// Evaluation results: benchmarks x phases beside the BabyLM baselines; also
    /// writes a self-contained HTML report with a plot.
    Report {
        job: String,
        /// A row per paradigm / file under each benchmark.
        #[arg(long)]
        detail: bool,
        #[arg(long)]
        json: bool,
        /// Where the HTML report goes (default: `<job>-report.html` here).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Per-benchmark differences between two phases (e.g. two branches): A - B.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        compare: Option<Vec<String>>,
    },
    /// Run a job on a cluster started on this machine: a coordinator and N workers.
    Local {
        file: PathBuf,
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Torch threads per worker.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Coordinator state directory (default: a new one under .outloud/local).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Serve Prometheus metrics (`GET /metrics`) on this address.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

impl Args {
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Coordinator { .. } => "info",
            _ => "warn",
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let token = auth::load_token(args.token_file.as_deref())?;
    let connect = || Connection::open(&args.coordinator, token.as_deref());
    match args.command {
        Command::Coordinator {
            listen,
            state_dir,
            lease_timeout_ms,
            metrics_listen,
            address_file,
            worker_token_file,
            fail_store_writes_after,
        } => {
            let listener = bind(&listen).await?;
            let metrics = match &metrics_listen {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            };
            if let Some(file) = &address_file {
                let bound = serde_json::json!({
                    "grpc": listener.local_addr()?.to_string(),
                    "metrics": metrics.as_ref().map(|m| m.local_addr()).transpose()?.map(|a| a.to_string()),
                });
                write_atomically(file, bound.to_string().as_bytes())?;
            }
            let config = server::ServerConfig {
                state_dir,
                lease_timeout: Duration::from_millis(lease_timeout_ms),
                token,
                worker_token: auth::load_worker_token(worker_token_file.as_deref())?,
                fail_store_writes_after,
            };
            server::run(listener, metrics, config, telemetry::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => {
            let (yaml, source) = read_spec(&file)?;
            match admission::admit(&yaml, &source, &working_dir()?).await {
                Ok(_) => {
                    println!("{source}: ok");
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Submit { file, watch } => {
            let connection = connect().await?;
            let job_id = submit(&connection, &file).await?;
            if !watch {
                println!("{job_id}");
                return Ok(ExitCode::SUCCESS);
            }
            let job = watch::watch(&connection, &job_id).await?;
            print!("{}", view::job_table(&job));
            Ok(exit_code_of(&job))
        }
        Command::Status { job, json } => {
            let connection = connect().await?;
            let job = get_job(&connection, &job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view::job_json(&job))?);
            } else {
                print!("{}", view::job_table(&job));
                if !job.state.is_finished() && live_workers(&connection).await? == 0 {
                    println!(
                        "no live worker: nothing runs until one registers (outloud-worker --coordinator {})",
                        args.coordinator
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { json } => {
            let answer = connect()
                .await?
                .jobs()
                .list_jobs(pb::ListJobsRequest {})
                .await?
                .into_inner();
            let jobs: Vec<JobSummary> = serde_json::from_str(&answer.jobs_json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print!("{}", view::jobs_table(&jobs));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers { json } => {
            let answer = connect()
                .await?
                .jobs()
                .list_workers(pb::ListWorkersRequest {})
                .await?
                .into_inner();
            let workers: Vec<Worker> = serde_json::from_str(&answer.workers_json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&workers)?);
            } else {
                print!("{}", view::workers_table(&workers));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            job,
            detail,
            json,
            html,
            compare,
        } => {
            let job = get_job(&connect().await?, &job).await?;
            let report = Report::of(&job);
            if let Some([a, b]) = compare.as_deref() {
                let comparison = report.compare(a, b).map_err(anyhow::Error::msg)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&comparison)?);
                } else {
                    print!("{}", comparison.table());
                }
                return Ok(ExitCode::SUCCESS);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table(detail));
            }
            let html = html.unwrap_or_else(|| PathBuf::from(format!("{}-report.html", job.id)));
            std::fs::write(&html, report.html())
                .with_context(|| format!("writing {}", html.display()))?;
            eprintln!("HTML report: {}", html.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job } => {
            connect()
                .await?
                .jobs()
                .cancel_job(pb::CancelJobRequest {
                    job_id: job.clone(),
                })
                .await?;
            println!("{job} cancelled");
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { job, step } => {
            let answer = connect()
                .await?
                .jobs()
                .retry_job(pb::RetryJobRequest {
                    job_id: job.clone(),
                    step,
                })
                .await?
                .into_inner();
            println!("{job}: running again: {}", answer.steps.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Local {
            file,
            workers,
            threads,
            state_dir,
            metrics_listen,
        } => {
            local::run(local::LocalCluster {
                file,
                workers,
                threads,
                state_dir,
                token,
                metrics_listen,
            })
            .await
        }
    }
}

pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

fn read_spec(file: &Path) -> anyhow::Result<(String, String)> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok((yaml, file.display().to_string()))
}

fn working_dir() -> anyhow::Result<String> {
    Ok(std::env::current_dir()?.display().to_string())
}

/// Submits the spec in `file`; the coordinator checks it and answers the job id.
/// Writes `bytes` to `path` through a temporary file, so a reader never sees half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub async fn submit(connection: &Connection, file: &Path) -> anyhow::Result<String> {
    let (spec_yaml, source_name) = read_spec(file)?;
    let request = pb::SubmitJobRequest {
        spec_yaml,
        source_name,
        working_dir: working_dir()?,
    };
    match connection.jobs().submit_job(request).await {
        Ok(answer) => Ok(answer.into_inner().job_id),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            anyhow::bail!("the job spec was refused:\n{}", status.message())
        }
        Err(status) => Err(status.into()),
    }
}

/// Workers that have heartbeated within their lease timeout.
async fn live_workers(connection: &Connection) -> anyhow::Result<usize> {
    let answer = connection
        .jobs()
        .list_workers(pb::ListWorkersRequest {})
        .await?
        .into_inner();
    let workers: Vec<Worker> = serde_json::from_str(&answer.workers_json)?;
    Ok(workers.iter().filter(|w| w.alive).count())
}

pub async fn get_job(connection: &Connection, job_id: &str) -> anyhow::Result<Job> {
    let request = pb::GetJobRequest {
        job_id: job_id.into(),
    };
    let answer = connection.jobs().get_job(request).await?.into_inner();
    Ok(serde_json::from_str(&answer.job_json)?)
}

fn exit_code_of(job: &Job) -> ExitCode {
    if job.state == RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
