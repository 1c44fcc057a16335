//! `outloud-worker`: leases tasks from a coordinator and runs them.

use clap::Parser;
use outloud_worker::agent::{self, AgentConfig};

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
    /// File holding the bearer token (else $OUTLOUD_TOKEN).
    #[arg(long, env = "OUTLOUD_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Torch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// `auto` (CUDA when present), `cpu`, or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
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
    outloud_coordinator::telemetry::init("info");
    tch::set_num_threads(args.threads as i32);
    let config = AgentConfig {
        coordinator: args.coordinator,
        token: outloud_coordinator::auth::load_token(args.token_file.as_deref())?,
        threads: args.threads,
        device: device(&args.device)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            outloud_coordinator::cli::shutdown_signal().await;
            let _ = stop.send(true);
        });
        agent::run(config, shutdown).await
    })
}
