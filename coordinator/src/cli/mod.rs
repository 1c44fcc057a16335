//! The `outloud` commands. `outloud coordinator` serves; the others talk to a
//! coordinator over gRPC, except `validate` (local checks) and `local` (a whole cluster
//! on this machine).

mod export;
mod local;
mod logs;
mod serve;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outloud_proto::v1 as pb;

use crate::admission;
use crate::report::Report;
use crate::scheduler::{Job, RunState, Worker};
use crate::view::{self, JobSummary};
use outloud_core::auth;
use outloud_core::client::{Connection, Dial};

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
    /// The CA certificate (PEM) that signed the coordinator's, for an https:// URL
    /// (else the system's roots).
    #[arg(long, global = true, env = "OUTLOUD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Bearer tokens over plain TCP beyond loopback: sent (clients) or taken
    /// (`outloud coordinator`). Only on a network you trust.
    #[arg(long, global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the coordinator.
    Coordinator(Box<serve::Serve>),
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
    /// Print a job's task logs, as its workers shipped them (`--follow`: until it ends).
    Logs(logs::Logs),
    /// Cancel a job.
    Cancel { job: String },
    /// Delete a finished job and everything it wrote under its storage root (not its
    /// exports, nor the data its prepare step made, which other jobs share).
    Delete { job: String },
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
    /// Write a phase's final model as a folder Hugging Face `transformers` loads
    /// (GPT-2 layout, tokenizer, a model card with the job's scores).
    Export {
        job: String,
        /// The phase (step) whose final checkpoint to export.
        #[arg(long)]
        phase: String,
        /// The folder to write (made if missing).
        #[arg(long)]
        to: PathBuf,
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
        /// Serve the live dashboard, its JSON API and Prometheus metrics here; its URL
        /// is printed. Port 0 picks a free one.
        #[arg(long, alias = "metrics-listen", default_value = "127.0.0.1:0")]
        http: String,
    },
}

impl Args {
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Coordinator(_) => "info",
            _ => "warn",
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let token = auth::load_token(args.token_file.as_deref())?;
    let dial = Dial::from_flags(token.clone(), args.tls_ca.as_deref(), args.insecure)?;
    let connect = || Connection::open(&args.coordinator, &dial);
    match args.command {
        Command::Coordinator(serve) => {
            serve::run(*serve, token, args.insecure).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => {
            let (yaml, source) = read_spec(&file)?;
            let policy = admission::Policy::default();
            match admission::admit(&yaml, &source, &working_dir()?, &policy).await {
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
        Command::Logs(args) => {
            logs::run(&connect().await?, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { job, json } => {
            let connection = connect().await?;
            let job = get_job(&connection, &job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view::job_json(&job))?);
            } else {
                print!("{}", view::job_table(&job));
                let workers = all_workers(&connection).await?;
                print!("{}", view::gangs_table(&job, &workers));
                if !job.state.is_finished() && workers.iter().all(|w| !w.alive) {
                    println!(
                        "no live worker: nothing runs until one registers (outloud-worker --coordinator {})",
                        args.coordinator
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { json } => {
            let jobs = all_jobs(&connect().await?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print!("{}", view::jobs_table(&jobs));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers { json } => {
            let workers = all_workers(&connect().await?).await?;
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
        Command::Delete { job } => {
            let answer = connect()
                .await?
                .jobs()
                .delete_job(pb::DeleteJobRequest {
                    job_id: job.clone(),
                })
                .await?
                .into_inner();
            println!(
                "{job} deleted: {} objects under {}",
                answer.objects, answer.folder
            );
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
        Command::Export { job, phase, to } => {
            let job = get_job(&connect().await?, &job).await?;
            export::export(&job, &phase, &to)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Local {
            file,
            workers,
            threads,
            state_dir,
            http,
        } => {
            local::run(local::LocalCluster {
                file,
                workers,
                threads,
                state_dir,
                token,
                http,
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

/// Every item of a paged list: `fetch` answers a page's JSON and the next page's token.
async fn all_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(String, String), tonic::Status>>,
{
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let (json, next) = fetch(page_token).await?;
        all.extend(serde_json::from_str::<Vec<T>>(&json)?);
        if next.is_empty() {
            return Ok(all);
        }
        page_token = next;
    }
}

/// Every job's summary, a page at a time.
pub async fn all_jobs(connection: &Connection) -> anyhow::Result<Vec<JobSummary>> {
    all_pages(|page_token| async move {
        let request = pb::ListJobsRequest {
            page_size: 0,
            page_token,
        };
        let answer = connection.jobs().list_jobs(request).await?.into_inner();
        Ok((answer.jobs_json, answer.next_page_token))
    })
    .await
}

/// Every worker the coordinator knows, a page at a time.
pub async fn all_workers(connection: &Connection) -> anyhow::Result<Vec<Worker>> {
    all_pages(|page_token| async move {
        let request = pb::ListWorkersRequest {
            page_size: 0,
            page_token,
        };
        let answer = connection.jobs().list_workers(request).await?.into_inner();
        Ok((answer.workers_json, answer.next_page_token))
    })
    .await
}

pub async fn get_job(connection: &Connection, job_id: &str) -> anyhow::Result<Job> {
    let request = pb::GetJobRequest {
        job_id: job_id.into(),
        ..Default::default()
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
