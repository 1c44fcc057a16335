//! The control-plane benchmarks. Here, `scripts/bench coordinator`: simulated workers
//! lease and complete no-op tasks over gRPC on loopback against a real coordinator
//! with durable state (every answer waits for its fsync'd group commit). [`load`]:
//! `scripts/bench load`, many workers and CLI clients at once against one coordinator
//! process, for errors, tail latency and memory growth.

pub mod load;

use std::time::{Duration, Instant};

use outloud_proto::v1 as pb;
use serde::Serialize;

use crate::server::{self, ServerConfig};
use outloud_core::client::{Connection, Dial};

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub workers: usize,
    pub cycles: u64,
    pub seconds: f64,
    pub cycles_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// HTTP/2 connections the simulated workers share (as many pods would share a node's).
const CONNECTIONS: usize = 8;

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn noop_job(tasks: usize) -> String {
    format!(
        "name: bench\nstorage: /tmp/outloud-bench\nphases:\n  - {{name: noop, kind: noop, shards: {tasks}}}\n"
    )
}

/// One simulated worker: lease, complete, repeat until `until`; answers cycle latencies (µs).
async fn simulated_worker(connection: Connection, until: Instant) -> anyhow::Result<Vec<u32>> {
    let mut client = connection.workers();
    let info = pb::WorkerInfo {
        hostname: "sim".into(),
        device: "none".into(),
        memory_bytes: 0,
        threads: 1,
        ..Default::default()
    };
    let worker_id = client
        .register(pb::RegisterRequest { info: Some(info) })
        .await?
        .into_inner()
        .worker_id;
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let answer = client
            .lease_task(pb::LeaseTaskRequest {
                worker_id: worker_id.clone(),
            })
            .await?
            .into_inner();
        let Some(task) = answer.task else { break };
        let request = pb::CompleteTaskRequest {
            worker_id: worker_id.clone(),
            lease: task.lease,
            metrics: None,
            output: String::new(),
            results: None,
        };
        client.complete_task(request).await?;
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    Ok(latencies)
}

async fn scenario(
    connections: &[Connection],
    workers: usize,
    duration: Duration,
) -> anyhow::Result<Scenario> {
    let jobs = connections[0].jobs();
    // More tasks than the run can drain, so workers never go idle.
    let request = pb::SubmitJobRequest {
        spec_yaml: noop_job(200_000),
        source_name: "bench".into(),
        working_dir: "/".into(),
    };
    let job_id = jobs.clone().submit_job(request).await?.into_inner().job_id;
    let started = Instant::now();
    let until = started + duration;
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            tokio::spawn(simulated_worker(
                connections[i % connections.len()].clone(),
                until,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    jobs.clone()
        .cancel_job(pb::CancelJobRequest { job_id })
        .await?;
    latencies.sort_unstable();
    let cycles = latencies.len() as u64;
    Ok(Scenario {
        workers,
        cycles,
        seconds,
        cycles_per_second: cycles as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    })
}

/// Runs every scenario against one coordinator serving from a fresh state directory.
pub async fn run(worker_counts: &[usize], duration: Duration) -> anyhow::Result<Vec<Scenario>> {
    let state = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = ServerConfig::local(state.path().to_path_buf(), Duration::from_secs(30), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, None, config, async {
        let _ = stopped.await;
    }));
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(Connection::open(&url, &Dial::default()).await?);
    }
    let mut results = Vec::new();
    for &workers in worker_counts {
        let result = scenario(&connections, workers, duration).await?;
        eprintln!(
            "{:>5} workers: {:>8.0} cycles/s  p50 {:.2} ms  p99 {:.2} ms",
            result.workers, result.cycles_per_second, result.p50_ms, result.p99_ms
        );
        results.push(result);
    }
    let _ = stop.send(());
    server.await??;
    Ok(results)
}

/// The results as a Markdown table.
pub fn markdown(results: &[Scenario]) -> String {
    let mut out = String::from(
        "| simulated workers | lease+complete cycles/s | p50 cycle latency | p99 cycle latency | cycles |\n|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        out += &format!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} |\n",
            r.workers, r.cycles_per_second, r.p50_ms, r.p99_ms, r.cycles
        );
    }
    out
}
