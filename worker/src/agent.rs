//! The worker's control loop: register, lease a task, run it on a blocking thread while
//! heartbeating and forwarding progress, then complete or fail it; repeat until told
//! to stop.
//!
//! It rides out a coordinator restart: calls are retried, a checkpoint that could not
//! be reported is attached to the next report, and a completion is retried until the
//! coordinator answers. A lease the coordinator revokes (cancelled job, expired lease)
//! stops the task at its next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outloud_core::client::{Connection, Dial, Workers};
use outloud_core::task::{Assignment, CheckpointRef, Metrics};
use outloud_core::{telemetry, traces, wire};
use outloud_proto::v1 as pb;
use tch::Device;
use tokio::sync::{mpsc, watch};
use tonic::Code;
use tracing::Instrument;

use crate::context::{Progress, TaskContext, TaskOutput};
use crate::error::WorkerError;
use crate::gpu_meter::GpuMeter;
use crate::task;
use crate::task_logs::{self, Shipper};
use outloud_core::storage::Location;
use outloud_core::task::log_folder;

const IDLE_POLL: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_millis(500);
/// How long a finished task keeps trying to tell an unreachable coordinator.
const REPORT_PATIENCE: Duration = Duration::from_secs(300);

pub struct AgentConfig {
    pub coordinator: String,
    pub dial: Dial,
    pub threads: u32,
    pub device: Device,
    /// Where other ranks of a gang reach this worker; by default the local address of
    /// the route to the coordinator.
    pub advertise_host: Option<String>,
    /// How often a running task's log lines are shipped to the job's storage.
    pub log_flush: Duration,
}

/// The lease being worked on, shared with the heartbeat loop.
#[derive(Default)]
struct Current(Mutex<Option<(pb::LeaseRef, Arc<AtomicBool>)>>);

impl Current {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(pb::LeaseRef, Arc<AtomicBool>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Agent {
    client: Workers,
    worker_id: String,
    device: Device,
    current: Arc<Current>,
    shutdown: watch::Receiver<bool>,
    /// Where this worker's gang listeners are reached.
    host: String,
    log_flush: Duration,
}

/// This machine's name, as the kernel says it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn worker_info(config: &AgentConfig) -> pb::WorkerInfo {
    let hostname = hostname();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    let (device_name, device_memory_bytes) = match config.device {
        Device::Cuda(index) => cuda_model(index).unwrap_or_else(|why| (why, 0)),
        _ => (
            telemetry::cpu_model().unwrap_or_else(|| "cpu".into()),
            memory_bytes,
        ),
    };
    pb::WorkerInfo {
        hostname,
        device: format!("{:?}", config.device).to_lowercase(),
        memory_bytes,
        threads: config.threads,
        device_name,
        device_memory_bytes,
    }
}

/// A GPU's name and memory, from the CUDA driver.
fn cuda_model(index: usize) -> Result<(String, u64), String> {
    use cudarc::driver::{result as driver, sys};
    // SAFETY: only tries to open the library (cudarc panics on a call without it).
    if !unsafe { sys::is_culib_present() } {
        return Err("cuda (the driver library could not be loaded)".into());
    }
    let unknown = |e: driver::DriverError| format!("cuda (unknown: {e:?})");
    driver::init().map_err(unknown)?;
    let device = driver::device::get(index as i32).map_err(unknown)?;
    let name = driver::device::get_name(device).map_err(unknown)?;
    // SAFETY: `device` is a valid handle from the driver.
    let memory = unsafe { driver::device::total_mem(device) }.map_err(unknown)?;
    Ok((name, memory as u64))
}

/// Runs until `shutdown` turns true; a task in flight is handed back first.
pub async fn run(config: AgentConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let connection = Connection::lazy(&config.coordinator, &config.dial)?;
    let mut client = connection.workers();
    let info = worker_info(&config);
    let registered = loop {
        match client
            .register(pb::RegisterRequest {
                info: Some(info.clone()),
            })
            .await
        {
            Ok(answer) => break answer.into_inner(),
            Err(status) if status.code() == Code::Unauthenticated => {
                anyhow::bail!("coordinator refused us: {}", status.message())
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "coordinator not reachable yet")
            }
        }
        if wait_or_stop(&mut shutdown, RETRY).await {
            return Ok(());
        }
    };
    let worker_id = registered.worker_id;
    tracing::info!(worker = %worker_id, device = %info.device, "registered");
    let current = Arc::new(Current::default());
    let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(50));
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker_id.clone(),
        current.clone(),
        interval,
    ));
    let mut agent = Agent {
        client,
        worker_id,
        device: config.device,
        current,
        shutdown: shutdown.clone(),
        host: config
            .advertise_host
            .clone()
            .unwrap_or_else(|| crate::gang::advertised_host(&config.coordinator)),
        log_flush: config.log_flush,
    };
    while !*shutdown.borrow() {
        let request = pb::LeaseTaskRequest {
            worker_id: agent.worker_id.clone(),
        };
        match agent.client.lease_task(request).await {
            Ok(answer) => match answer.into_inner().task {
                Some(task) => agent.run_task(task).await,
                None => {
                    wait_or_stop(&mut shutdown, IDLE_POLL).await;
                }
            },
            Err(status) if status.code() == Code::NotFound => {
                // Forgotten after a long silence: a restart registers anew.
                heartbeats.abort();
                anyhow::bail!(
                    "the coordinator no longer knows this worker ({}); restart it to register again",
                    status.message()
                );
            }
            Err(status) => {
                tracing::debug!(error = %status.message(), "lease call failed");
                wait_or_stop(&mut shutdown, RETRY).await;
            }
        }
    }
    heartbeats.abort();
    tracing::info!(worker = %agent.worker_id, "stopped");
    Ok(())
}

/// Sleeps for `pause`; true if the worker should stop.
async fn wait_or_stop(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    let _ = tokio::time::timeout(pause, shutdown.wait_for(|stop| *stop)).await;
    *shutdown.borrow()
}

async fn heartbeat_loop(
    mut client: Workers,
    worker_id: String,
    current: Arc<Current>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let held: Vec<pb::LeaseRef> = current
            .lock()
            .iter()
            .map(|(lease, _)| lease.clone())
            .collect();
        let request = pb::HeartbeatRequest {
            worker_id: worker_id.clone(),
            leases: held,
        };
        match client.heartbeat(request).await {
            Ok(answer) => {
                for revoked in answer.into_inner().revoked {
                    if let Some((lease, stop)) = current.lock().as_ref()
                        && *lease == revoked
                    {
                        tracing::warn!(task = %lease.task_id, epoch = lease.epoch, "lease revoked; stopping the task");
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            Err(status) => tracing::debug!(error = %status.message(), "heartbeat failed"),
        }
    }
}

impl Agent {
    async fn run_task(&mut self, task: pb::TaskAssignment) {
        let lease = task.lease.clone().unwrap_or_default();
        let assignment = match wire::assignment_from(task) {
            Ok(a) => a,
            Err(e) => {
                // Another worker (of the coordinator's version) may read it: retryable.
                tracing::error!(error = %e, task = %lease.task_id, "assignment refused");
                self.fail(lease, &WorkerError::Refused(e)).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "task",
            job = %assignment.job_id,
            step = %assignment.step,
            task = %assignment.lease.task,
            shard = assignment.lease.task.shard,
            worker = %self.worker_id,
            rank = assignment.rank,
            epoch = assignment.lease.epoch,
        );
        // One trace per job: this task's span is a child of its lease's, which the
        // coordinator exports.
        if let Some(parent) = traces::remote_parent(&assignment.traceparent) {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let _ = span.set_parent(parent);
        }
        let shipper = self.ship_logs(&span, &assignment);
        self.run_assignment(assignment, shipper)
            .instrument(span)
            .await;
    }

    /// Starts shipping what the task logs to its folder in the job's storage.
    fn ship_logs(&self, span: &tracing::Span, assignment: &Assignment) -> Option<Shipper> {
        let log = task_logs::collect(span)?;
        let folder = log_folder(
            &assignment.lease.task,
            &assignment.step,
            assignment.shards,
            assignment.lease.epoch,
            assignment.rank,
        );
        match Location::open(&assignment.spec.storage) {
            Ok(storage) => Some(Shipper::start(log, storage.join(&folder), self.log_flush)),
            Err(e) => {
                tracing::warn!(error = %e, "task logs stay here: the job's storage will not open");
                None
            }
        }
    }

    async fn run_assignment(&mut self, assignment: Assignment, shipper: Option<Shipper>) {
        let lease = wire::lease_to(&assignment.lease);
        let rank = assignment.rank;
        let stop = Arc::new(AtomicBool::new(false));
        *self.current.lock() = Some((lease.clone(), stop.clone()));
        tracing::info!(resume = ?assignment.resume_checkpoint, "task started");
        let (progress, mut reports) = mpsc::unbounded_channel();
        let ctx = TaskContext {
            assignment,
            device: self.device,
            runtime: tokio::runtime::Handle::current(),
            stop: stop.clone(),
            progress,
            rendezvous: crate::context::Rendezvous {
                client: self.client.clone(),
                worker_id: self.worker_id.clone(),
                lease: lease.clone(),
                host: self.host.clone(),
            },
        };
        let span = tracing::Span::current();
        let mut running = tokio::task::spawn_blocking(move || span.in_scope(|| task::run(&ctx)));
        let mut unsent = Unsent::default();
        let mut shutdown = self.shutdown.clone();
        let mut meter = GpuMeter::start(self.device);
        let mut measured = |metrics: &mut Metrics| {
            if let Some(meter) = &mut meter {
                meter.measure(metrics);
            }
        };
        let result = loop {
            tokio::select! {
                result = &mut running => break result,
                Some(mut report) = reports.recv() => {
                    measured(&mut report.metrics);
                    self.report(&lease, report, &mut unsent, &stop).await
                }
                _ = shutdown.wait_for(|s| *s), if !stop.load(Ordering::Relaxed) => {
                    tracing::info!("shutting down: handing the task back");
                    stop.store(true, Ordering::Relaxed);
                }
            }
        };
        while let Ok(mut report) = reports.try_recv() {
            measured(&mut report.metrics);
            self.report(&lease, report, &mut unsent, &stop).await;
        }
        let revoked = stop.load(Ordering::Relaxed) && !*self.shutdown.borrow();
        match &result {
            Ok(Ok(_)) => tracing::info!("task ended; reporting"),
            Ok(Err(e)) => tracing::warn!(error = %e, "task ended with an error"),
            Err(panic) => tracing::error!(error = %panic, "task panicked"),
        }
        // The log is whole before the coordinator hears the outcome: once a job has
        // finished, `outloud logs` has every line there will be.
        if let Some(shipper) = shipper {
            shipper.finish().await;
        }
        match result {
            Ok(Ok(_)) if rank > 0 => tracing::info!(rank, "rank done; rank 0 commits for the gang"),
            Ok(Ok(mut output)) => {
                measured(&mut output.metrics);
                self.complete(lease, output).await
            }
            Ok(Err(_)) if revoked => tracing::warn!("task stopped: its lease is gone"),
            Ok(Err(e)) => self.fail(lease, &e).await,
            Err(panic) => {
                let message = panic.to_string();
                let first = message.lines().next().unwrap_or_default();
                self.fail(
                    lease,
                    &WorkerError::Config(format!("task panicked: {first}")),
                )
                .await
            }
        }
        *self.current.lock() = None;
    }

    /// Sends a progress report; what must not be lost (a checkpoint, a resume) waits in
    /// `unsent` for the next report if the coordinator cannot be reached.
    async fn report(
        &mut self,
        lease: &pb::LeaseRef,
        report: Progress,
        unsent: &mut Unsent,
        stop: &AtomicBool,
    ) {
        if report.checkpoint.is_some() {
            unsent.checkpoint = report.checkpoint;
        }
        if report.resumed_from_step.is_some() {
            unsent.resumed_from_step = report.resumed_from_step;
        }
        let request = pb::ReportProgressRequest {
            worker_id: self.worker_id.clone(),
            lease: Some(lease.clone()),
            metrics: Some(wire::metrics_to(&report.metrics)),
            checkpoint: unsent.checkpoint.as_ref().map(|c| c.url.clone()),
            checkpoint_step: unsent.checkpoint.as_ref().map(|c| c.step),
            resumed_from_step: unsent.resumed_from_step,
        };
        match self.client.report_progress(request).await {
            Ok(_) => *unsent = Unsent::default(),
            Err(status) if is_lease_gone(&status) => {
                tracing::warn!(error = %status.message(), "progress refused; stopping the task");
                stop.store(true, Ordering::Relaxed);
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                tracing::error!(error = %status.message(), "progress refused for what it names; not sending it again");
                *unsent = Unsent::default();
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "progress not delivered; will retry with the next report")
            }
        }
    }

    async fn complete(&mut self, lease: pb::LeaseRef, output: TaskOutput) {
        let metrics: Metrics = output.metrics;
        let request = pb::CompleteTaskRequest {
            worker_id: self.worker_id.clone(),
            lease: Some(lease.clone()),
            metrics: Some(wire::metrics_to(&metrics)),
            output: output.output,
            results: Some(wire::results_to(&output.results)),
        };
        let answer = self.deliver(|mut client, request| async move { client.complete_task(request).await.map(|_| ()) }, request).await;
        match answer {
            Ok(()) => tracing::info!(loss = metrics.loss, steps = metrics.step, "task completed"),
            Err(status) if is_lease_gone(&status) || is_transient(&status) => {
                tracing::warn!(error = %status.message(), "completion not accepted")
            }
            // Refused for what it names (an output outside this lease's folder): it
            // would be refused again, so the task fails saying why.
            Err(status) => {
                let why = format!(
                    "the coordinator refused this task's output: {}",
                    status.message()
                );
                self.fail(lease, &WorkerError::Config(why)).await;
            }
        }
    }

    async fn fail(&mut self, lease: pb::LeaseRef, error: &WorkerError) {
        tracing::warn!(error = %error, retryable = error.is_retryable(), "task failed");
        let request = pb::FailTaskRequest {
            worker_id: self.worker_id.clone(),
            lease: Some(lease),
            error: error.to_string(),
            retryable: error.is_retryable(),
            handed_back: *self.shutdown.borrow() && matches!(error, WorkerError::Stopped(_)),
        };
        let answer = self
            .deliver(
                |mut client, request| async move { client.fail_task(request).await.map(|_| ()) },
                request,
            )
            .await;
        if let Err(status) = answer {
            tracing::warn!(error = %status.message(), "failure report not accepted");
        }
    }

    /// Retries a final report until the coordinator answers it, yes or no.
    async fn deliver<R, F, Fut>(&self, call: F, request: R) -> Result<(), tonic::Status>
    where
        R: Clone,
        F: Fn(Workers, R) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + REPORT_PATIENCE;
        loop {
            match call(self.client.clone(), request.clone()).await {
                Ok(()) => return Ok(()),
                Err(status) if is_transient(&status) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %status.message(), "coordinator unreachable; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

#[derive(Default)]
struct Unsent {
    checkpoint: Option<CheckpointRef>,
    resumed_from_step: Option<u64>,
}

fn is_lease_gone(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}
