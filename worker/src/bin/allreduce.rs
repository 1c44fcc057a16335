//! `outloud-allreduce-bench`: the CPU collective backend's all-reduce over loopback TCP
//! (`scripts/bench allreduce`). For each gang size and buffer size it times the ring
//! all-reduce (median of the repeats after one warm-up) and reports bus bandwidth, the
//! bytes each rank moves per second (`2 (n - 1) / n` times the buffer over the time), next
//! to a single-process memcpy of the same buffer: the local limit a loopback ring shares.
//! Ranks are threads of this process, each with its own TCP connections.

use std::time::{Duration, Instant};

use clap::Parser;
use outloud_worker::collective::ring;

#[derive(Parser)]
struct Args {
    /// Gang sizes.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    ranks: Vec<usize>,
    /// Buffer sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    mib: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Seconds one all-reduce of `floats` takes on a gang of `n` (the slowest rank's).
fn all_reduce_seconds(n: usize, floats: usize, repeats: usize) -> anyhow::Result<f64> {
    let rings = ring::local(n, Duration::from_secs(120))?;
    let times = std::thread::scope(|scope| {
        let handles: Vec<_> = rings
            .into_iter()
            .map(|mut ring| {
                scope.spawn(move || {
                    let mut data = vec![1.0f32; floats];
                    let mut times = Vec::new();
                    for round in 0..=repeats {
                        let started = Instant::now();
                        ring.sum_slice(&mut data).expect("all-reduce");
                        if round > 0 {
                            times.push(started.elapsed().as_secs_f64());
                        }
                    }
                    times
                })
            })
            .collect();
        let per_rank: Vec<Vec<f64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (0..repeats)
            .map(|i| per_rank.iter().map(|t| t[i]).fold(0.0, f64::max))
            .collect::<Vec<f64>>()
    });
    Ok(median(times))
}

fn memcpy_seconds(bytes: usize, repeats: usize) -> f64 {
    let source = vec![1u8; bytes];
    let mut target = vec![0u8; bytes];
    let times = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            target.copy_from_slice(&source);
            std::hint::black_box(&target);
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| ranks | MiB | all-reduce ms | bus GB/s | memcpy GB/s | bus / memcpy |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &args.ranks {
        for &mib in &args.mib {
            let bytes = mib << 20;
            let seconds = all_reduce_seconds(n, bytes / 4, args.repeats)?;
            let moved = 2.0 * (n - 1) as f64 / n as f64 * bytes as f64;
            let bus = moved / seconds / 1e9;
            let memcpy = bytes as f64 / memcpy_seconds(bytes, args.repeats) / 1e9;
            println!(
                "| {n} | {mib} | {:.1} | {bus:.2} | {memcpy:.2} | {:.2} |",
                seconds * 1e3,
                bus / memcpy
            );
        }
    }
    Ok(())
}
