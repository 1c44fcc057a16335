//! `outloud`: the coordinator and its command-line client.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = outloud_coordinator::cli::Args::parse();
    outloud_core::telemetry::init(args.default_log_filter());
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(outloud_coordinator::cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
