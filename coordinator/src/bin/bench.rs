//! `outloud-bench`: the coordinator benchmark (`scripts/bench coordinator`).
//! Runs each scenario several rounds, quotes the median round, and writes a Markdown
//! report with the machine and date.

use std::time::Duration;

use clap::Parser;
use outloud_coordinator::bench;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    load: Option<Load>,
    /// Simulated worker counts, one scenario each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    workers: Vec<usize>,
    /// Seconds per round.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds per scenario; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "benchmarks/coordinator.md")]
    out: std::path::PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Load {
    /// Many workers and CLI clients at once against one coordinator process: errors,
    /// latency per call and memory growth (`scripts/bench load`).
    Load {
        #[arg(long, default_value_t = 1000)]
        workers: usize,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        #[arg(long, default_value = "benchmarks/load.md")]
        out: std::path::PathBuf,
    },
}

/// Runs the load benchmark; fails when any call failed.
fn load(load: Load) -> anyhow::Result<()> {
    let Load::Load {
        workers,
        clients,
        seconds,
        out,
    } = load;
    let outloud = std::env::current_exe()?.with_file_name("outloud");
    let config = bench::load::LoadConfig {
        workers,
        clients,
        duration: Duration::from_secs_f64(seconds),
        outloud,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(bench::load::run(&config))?;
    let text = format!(
        "# Coordinator under load

{} on {}; the coordinator is its own process, with durable state; everything on loopback on the same machine.

{}",
        today(),
        machine(),
        bench::load::markdown(&report)
    );
    println!("{text}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &text)?;
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    anyhow::ensure!(
        report.errors == 0,
        "{} calls failed under load",
        report.errors
    );
    Ok(())
}

fn machine() -> String {
    let cpu = outloud_core::telemetry::cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    outloud_core::telemetry::init("warn");
    if let Some(command) = args.load {
        return load(command);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}", args.rounds);
        rounds.push(runtime.block_on(bench::run(&args.workers, duration))?);
    }
    let medians: Vec<bench::Scenario> = (0..args.workers.len())
        .map(|i| {
            let mut runs: Vec<&bench::Scenario> = rounds.iter().map(|r| &r[i]).collect();
            runs.sort_by(|a, b| a.cycles_per_second.total_cmp(&b.cycles_per_second));
            runs[runs.len() / 2].clone()
        })
        .collect();
    let report = format!(
        "# Coordinator benchmark\n\n{} on {}; median of {} rounds of {}s per scenario; gRPC on loopback, durable state (redb, fsync per group commit), client and server on the same machine.\n\n{}",
        today(),
        machine(),
        args.rounds,
        args.seconds,
        bench::markdown(&medians)
    );
    println!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)?;
    eprintln!("written to {}", args.out.display());
    Ok(())
}
