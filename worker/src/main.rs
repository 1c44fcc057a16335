//! `outloud-worker`: leases tasks from a coordinator and runs them; `outloud-worker
//! evaluate` scores any checkpoint on benchmark folders, outside a job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use outloud_core::client::Dial;
use outloud_core::results::percent;
use outloud_core::storage::{Location, absolute_url};
use outloud_core::{auth, telemetry, traces};
use outloud_worker::agent::{self, AgentConfig};
use outloud_worker::checkpoint;
use outloud_worker::eval::{self, EvalModel, benchmarks};
use outloud_worker::visual::VisualInputs;

#[derive(Debug, Parser)]
#[command(
    name = "outloud-worker",
    version,
    about = "Runs Outloud phase tasks for a coordinator"
)]
struct Args {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "OUTLOUD_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// File holding the bearer token (else $OUTLOUD_WORKER_TOKEN, else $OUTLOUD_TOKEN).
    #[arg(long, env = "OUTLOUD_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) that signed the coordinator's, for an https:// URL
    /// (else the system's roots).
    #[arg(long, env = "OUTLOUD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Send the token over plain TCP beyond loopback (on a network you trust).
    #[arg(long)]
    insecure: bool,
    /// Torch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// `auto` (CUDA when present), `cpu`, or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Where the other ranks of a gang reach this worker (a host name or IP); by
    /// default the local address of the route to the coordinator.
    #[arg(long, env = "OUTLOUD_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Start one worker process per GPU (`all`, or indices such as `0,2`), each bound
    /// to its device, instead of working here.
    #[arg(long, conflicts_with = "device")]
    gpus: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address; with `--gpus`, each
    /// worker on the next port (port 0: each its own free one, in its log).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// How often (milliseconds) a running task's new log lines go to the job's storage,
    /// where `outloud logs` reads them.
    #[arg(long, env = "OUTLOUD_LOG_FLUSH_MS", default_value_t = 2000)]
    log_flush_ms: u64,
    /// Export this worker's spans (task, training-step ranges, checkpoints, collectives,
    /// eval) to this OTLP/gRPC collector, under the job's trace.
    #[arg(long, env = traces::ENDPOINT_ENV)]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Score a checkpoint on benchmark folders (BabyLM `evaluation_data` layout), as an
    /// eval step does, and print accuracy per benchmark.
    Evaluate(Evaluate),
    /// Fine-tune a checkpoint on GLUE tasks (the BabyLM 2025 pipeline's inputs and
    /// defaults), one copy per task, and score each on its validation file.
    Finetune(Finetune),
    /// Write a checkpoint (verified first) as a folder Hugging Face `transformers` loads:
    /// `AutoModelForCausalLM.from_pretrained(DIR)`, `AutoTokenizer.from_pretrained(DIR)`.
    Export {
        /// A checkpoint folder (path or storage URL).
        checkpoint: String,
        /// The folder to write (made if missing).
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Evaluate {
    /// A checkpoint folder (path or storage URL), e.g. `.../jobs/<job>/<phase>/final`.
    checkpoint: String,
    /// Benchmark folders or files (paths or storage URLs).
    #[arg(required = true)]
    benchmarks: Vec<String>,
    /// Pictures for image-conditioned benchmarks, when not beside their files.
    #[arg(long)]
    images: Option<String>,
    /// Items per file at most.
    #[arg(long)]
    limit: Option<u64>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Write the full results (per-item scores) here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct Finetune {
    /// A checkpoint folder (path or storage URL).
    checkpoint: String,
    /// The folder of `<task>.train.jsonl` and `<task>.valid.jsonl` files.
    glue: String,
    /// Tasks (default: all 7: boolq, mnli, mrpc, multirc, qqp, rte, wsc).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Epochs instead of each task's default.
    #[arg(long)]
    epochs: Option<u32>,
    /// Optimizer steps at most per task (a quick look).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Write `<task>/predictions.json` (the 2025 pipeline's layout) under this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Test seam: write each task's first batch (ids, logits, loss) and the head's
    /// first weights under `<DIR>/<task>/`, for the PyTorch cross-check.
    #[arg(long, hide = true)]
    dump_first_batch: Option<PathBuf>,
}

fn device(name: &str) -> anyhow::Result<tch::Device> {
    Ok(match name {
        "auto" => tch::Device::cuda_if_available(),
        "cpu" => tch::Device::Cpu,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => tch::Device::Cuda(n),
            None => anyhow::bail!("unknown device `{other}`: use auto, cpu or cuda:N"),
        },
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads as i32);
    if let Some(command) = args.command {
        telemetry::init("warn");
        return match command {
            Command::Export { checkpoint, to } => export(&checkpoint, &to),
            Command::Evaluate(command) => evaluate(command, device(&args.device)?),
            Command::Finetune(command) => finetune(command, device(&args.device)?),
        };
    }
    if let Some(wanted) = &args.gpus {
        telemetry::init("info");
        return per_gpu_workers(wanted, &args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shipping = tracing_subscriber::Layer::with_filter(
        outloud_worker::task_logs::ShippingLayer,
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    let mut layers: Vec<telemetry::ExtraLayer> = vec![Box::new(shipping)];
    let tracer = match &args.otlp_endpoint {
        Some(endpoint) => {
            // The exporter's channel lives on this runtime.
            let _inside = runtime.enter();
            let instance = format!("{}-{}", agent::hostname(), std::process::id());
            let resource = traces::resource("outloud-worker", instance);
            let (layer, provider) = traces::worker_layer(endpoint, resource)?;
            layers.push(layer);
            Some(provider)
        }
        None => None,
    };
    telemetry::init_with("info", layers);
    let token = match auth::load_worker_token(args.token_file.as_deref())? {
        Some(token) => Some(token),
        None => auth::load_token(None)?,
    };
    let config = AgentConfig {
        coordinator: args.coordinator,
        dial: Dial::from_flags(token, args.tls_ca.as_deref(), args.insecure)?,
        threads: args.threads,
        device: device(&args.device)?,
        advertise_host: args.advertise_host,
        log_flush: std::time::Duration::from_millis(args.log_flush_ms.max(10)),
    };
    let ran = runtime.block_on(async {
        if let Some(address) = &args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(address).await?;
            tracing::info!(addr = %listener.local_addr()?, "worker metrics serving");
            tokio::spawn(outloud_worker::metrics::serve(listener));
        }
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            telemetry::shutdown_signal().await;
            let _ = stop.send(true);
        });
        agent::run(config, shutdown).await
    });
    if let Some(provider) = tracer {
        // What is queued goes out before the process ends.
        let _ = provider.shutdown();
    }
    ran
}

/// `--gpus`: this process starts and watches one worker per GPU, each with this
/// process's flags.
fn per_gpu_workers(wanted: &str, args: &Args) -> anyhow::Result<()> {
    let gpus = outloud_worker::per_gpu::devices(wanted, tch::Cuda::device_count() as usize)?;
    let mut flags = vec![
        "--coordinator".to_string(),
        args.coordinator.clone(),
        "--threads".into(),
        args.threads.to_string(),
        "--log-flush-ms".into(),
        args.log_flush_ms.to_string(),
    ];
    let paths = [
        ("--token-file", &args.token_file),
        ("--tls-ca", &args.tls_ca),
    ];
    for (flag, path) in paths {
        if let Some(path) = path {
            flags.extend([flag.to_string(), path.display().to_string()]);
        }
    }
    if let Some(host) = &args.advertise_host {
        flags.extend(["--advertise-host".to_string(), host.clone()]);
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        flags.extend(["--otlp-endpoint".to_string(), endpoint.clone()]);
    }
    if args.insecure {
        flags.push("--insecure".into());
    }
    tracing::info!(?gpus, "one worker per GPU");
    let metrics = args
        .metrics_listen
        .as_deref()
        .map(per_gpu_metrics)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(outloud_worker::per_gpu::supervise(gpus, flags, metrics))
}

/// `--metrics-listen HOST:PORT` under `--gpus`: worker `i` serves on PORT + i (PORT 0:
/// each on a free port of its own).
fn per_gpu_metrics(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--metrics-listen {address}: expected HOST:PORT"))?;
    Ok((host.to_string(), port.parse()?))
}

/// A path or storage URL, relative to the working directory.
fn open_place(place: &str) -> anyhow::Result<Location> {
    let here = std::env::current_dir()?.display().to_string();
    let url = absolute_url(place, &here).map_err(anyhow::Error::msg)?;
    Ok(Location::open(url.as_str())?)
}

fn finetune(command: Finetune, device: tch::Device) -> anyhow::Result<()> {
    use outloud_worker::glue::{self, tasks::GlueTask};
    let tasks: Vec<GlueTask> = match command.tasks.is_empty() {
        true => GlueTask::ALL.to_vec(),
        false => command
            .tasks
            .iter()
            .map(|t| GlueTask::from_name(t).ok_or_else(|| anyhow::anyhow!("no GLUE task `{t}`")))
            .collect::<anyhow::Result<_>>()?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let loaded = runtime.block_on(checkpoint::load(&open_place(&command.checkpoint)?))?;
    outloud_worker::inputs::require_finite(&loaded, &command.checkpoint)?;
    let folder = open_place(&command.glue)?;
    println!(
        "{:<10} {:>9} {:>9} {:>6} {:>7}",
        "TASK", "ACCURACY", "F1", "EPOCH", "STEPS"
    );
    let mut scores = Vec::new();
    for task in tasks {
        let mut settings = task.defaults();
        settings.epochs = command.epochs.unwrap_or(settings.epochs);
        settings.max_steps = command.max_steps;
        let (train, valid) = match runtime.block_on(glue::read_splits(&folder, task))? {
            Ok(splits) => splits,
            Err(why) => {
                println!("{:<10} not run: {why}", task.name());
                continue;
            }
        };
        let tunable = glue::tunable(&loaded, task, &settings, device)?;
        if let Some(dump) = &command.dump_first_batch {
            glue::dump_first_batch(&tunable, &train, &settings, &dump.join(task.name()))?;
        }
        let outcome =
            glue::finetune::finetune(&tunable, task, &train, &valid, &settings, |_, _, _| Ok(()))?;
        let score = glue::score_of(task, &train, &valid, &outcome);
        println!(
            "{:<10} {:>9} {:>9} {:>6} {:>7}",
            task.name(),
            percent(score.accuracy),
            score.f1.map_or("-".into(), |f| percent(Some(f))),
            score.best_epoch,
            score.steps
        );
        if let Some(out) = &command.out {
            let folder = out.join(task.name());
            std::fs::create_dir_all(&folder)?;
            let json = glue::score::predictions_json(task, &outcome.predictions);
            std::fs::write(folder.join("predictions.json"), json.to_string())?;
        }
        scores.extend(score.accuracy);
    }
    if !scores.is_empty() {
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        println!(
            "GLUE (accuracy, mean of {} tasks) {}",
            scores.len(),
            percent(Some(mean))
        );
    }
    Ok(())
}

fn export(checkpoint: &str, to: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let loaded = runtime.block_on(checkpoint::load(&open_place(checkpoint)?))?;
    outloud_worker::inputs::require_finite(&loaded, checkpoint)?;
    outloud_worker::export::export(&loaded, to)?;
    println!("exported {checkpoint} to {}", to.display());
    Ok(())
}

fn evaluate(command: Evaluate, device: tch::Device) -> anyhow::Result<()> {
    let Evaluate {
        checkpoint,
        benchmarks,
        images,
        limit,
        batch_size,
        out,
    } = command;
    let open = open_place;
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let loaded = runtime.block_on(checkpoint::load(&open(&checkpoint)?))?;
    outloud_worker::inputs::require_finite(&loaded, &checkpoint)?;
    let model = EvalModel::from_checkpoint(&loaded, device)?;
    let images = images.as_deref().map(open).transpose()?;
    let (mut found, mut ignored) = (Vec::new(), Vec::new());
    for place in &benchmarks {
        let (more, skipped) =
            runtime.block_on(benchmarks::discover(&open(place)?, images.as_ref(), limit))?;
        found.extend(more);
        ignored.extend(skipped);
    }
    let inputs = VisualInputs::pixels();
    println!(
        "{:<32} {:>7} {:>7} {:>9}",
        "BENCHMARK", "ITEMS", "CHANCE", "ACCURACY"
    );
    let results = eval::evaluate(&model, &found, &inputs, batch_size, runtime.handle(), |r| {
        let shown = r.skipped.clone().unwrap_or_else(|| percent(r.accuracy));
        println!(
            "{:<32} {:>7} {:>7} {:>9}",
            r.name,
            r.items,
            percent(r.chance),
            shown
        );
        Ok(())
    })?;
    for (file, reason) in &ignored {
        eprintln!("ignored {file}: {reason}");
    }
    if let Some(out) = out {
        let results = eval::results::EvalResults {
            job: loaded.manifest.job.clone(),
            phase: loaded.manifest.phase.clone(),
            checkpoint,
            step: loaded.manifest.step,
            seconds: started.elapsed().as_secs_f64(),
            benchmarks: results,
            ignored,
        };
        std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(())
}
