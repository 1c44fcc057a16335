//! The coordinator's gRPC server: thin handlers around the [`Scheduler`].
//!
//! Every handler unpacks the request, calls one scheduler method under the lock, queues
//! the records that call changed for the group-commit writer, and answers only once
//! they are on disk. A background ticker expires the leases of silent workers.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outloud_proto::v1 as pb;
use outloud_proto::v1::jobs_server::{Jobs, JobsServer};
use outloud_proto::v1::workers_server::{Workers, WorkersServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::admission::admit;
use crate::scheduler::{Millis, Scheduler, SchedulerConfig, SchedulerError};
use crate::store::{Batch, Committer, Store};
use crate::wire;
use outloud_core::auth::RequireToken;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub state_dir: PathBuf,
    pub lease_timeout: Duration,
    /// Required on every call when set (on Jobs calls only, when `worker_token` is set).
    pub token: Option<String>,
    /// Required on Workers calls (lease, report, complete) when set.
    pub worker_token: Option<String>,
    /// Test seam: state writes fail after this many (see [`Store::failing_after`]).
    pub fail_store_writes_after: Option<u64>,
}

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A number unlikely to repeat between coordinator processes: the process id and the
/// clock's nanoseconds, mixed.
fn instance_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (u64::from(std::process::id()) << 20) ^ nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// What a client hears once a state write failed.
const STOPPING: &str =
    "the coordinator stops and recovers from its state on disk; the change did not happen";

/// The shared state behind both services.
struct Coordinator {
    scheduler: Mutex<Scheduler>,
    committer: Committer,
    /// Notified when a state write failed: the server stops rather than serve a memory
    /// that disk does not back.
    stop: tokio::sync::Notify,
    heartbeat_interval: Duration,
    lease_timeout: Duration,
}

impl Coordinator {
    /// Runs `change` on the scheduler, then waits until what it changed is durable.
    async fn mutate<R>(
        &self,
        change: impl FnOnce(&mut Scheduler, Millis) -> R,
    ) -> Result<R, Status> {
        let (result, written) = {
            let mut scheduler = self.lock();
            if self.committer.is_broken() {
                // Memory may already hold a change disk lost: change nothing more.
                return Err(Status::unavailable(STOPPING));
            }
            let result = change(&mut scheduler, now_ms());
            let changes = scheduler.take_changes();
            let batch = Batch::capture(&scheduler, changes);
            (result, self.committer.enqueue(batch))
        };
        match written.await {
            Ok(Ok(())) => Ok(result),
            Ok(Err(e)) => {
                self.stop.notify_one();
                Err(Status::unavailable(format!(
                    "state not saved ({e}): {STOPPING}"
                )))
            }
            Err(_) => {
                self.stop.notify_one();
                Err(Status::unavailable("state store writer has stopped"))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        // A panic while holding the lock would be a bug in the pure scheduler; keep serving
        // what it left rather than poisoning every later call.
        self.scheduler.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn status_of(error: SchedulerError) -> Status {
    match error {
        SchedulerError::UnknownWorker(_)
        | SchedulerError::UnknownJob(_)
        | SchedulerError::UnknownTask(_)
        | SchedulerError::UnknownStep(_) => Status::not_found(error.to_string()),
        SchedulerError::NotRetryable(_) => Status::failed_precondition(error.to_string()),
        SchedulerError::StaleLease { .. } | SchedulerError::JobFinished(_) => {
            Status::failed_precondition(error.to_string())
        }
        SchedulerError::Unplannable(_) => Status::invalid_argument(error.to_string()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Our own domain types always serialize.
    serde_json::to_string(value).expect("domain types serialize to JSON")
}

/// Serves until `shutdown` completes. The caller binds the listeners (port 0 in tests):
/// gRPC on `listener`, Prometheus metrics on `metrics` when given.
pub async fn run(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Store::open(&config.state_dir)?.failing_after(config.fail_store_writes_after);
    let snapshot = store.load()?;
    let scheduler_config = SchedulerConfig {
        lease_timeout_ms: config.lease_timeout.as_millis() as u64,
        instance: instance_id(),
    };
    let jobs = snapshot.jobs.len();
    let scheduler = Scheduler::restore(
        scheduler_config,
        snapshot.jobs,
        snapshot.workers,
        snapshot.counters,
        now_ms(),
    );
    let coordinator = Arc::new(Coordinator {
        scheduler: Mutex::new(scheduler),
        committer: Committer::start(store),
        stop: tokio::sync::Notify::new(),
        heartbeat_interval: config.lease_timeout / 4,
        lease_timeout: config.lease_timeout,
    });
    tracing::info!(
        addr = %listener.local_addr()?,
        state_dir = %config.state_dir.display(),
        jobs,
        "coordinator serving"
    );
    let expiry = tokio::spawn(expire_leases(coordinator.clone()));
    let metrics = metrics.map(|listener| {
        let source = coordinator.clone();
        tokio::spawn(crate::metrics::serve(
            listener,
            Arc::new(move || crate::metrics::render(&source.lock())),
        ))
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkersServer<WorkerService>>().await;
    health.set_serving::<JobsServer<JobService>>().await;
    let auth = RequireToken::new(config.token.clone());
    let worker_auth = RequireToken::new(config.worker_token.clone().or(config.token.clone()));
    let serving = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(WorkersServer::with_interceptor(
            WorkerService(coordinator.clone()),
            worker_auth,
        ))
        .add_service(JobsServer::with_interceptor(
            JobService(coordinator.clone()),
            auth,
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown);
    // A failed state write stops the server at once: a graceful stop would wait for
    // clients to hang up while memory holds what disk does not.
    let result = tokio::select! {
        result = serving => Some(result),
        _ = coordinator.stop.notified() => None,
    };
    expiry.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    result.transpose()?;
    anyhow::ensure!(
        !coordinator.committer.is_broken(),
        "a state write failed, so the coordinator stopped rather than keep in memory what \
         disk does not have; restart it on {} to recover from disk",
        config.state_dir.display()
    );
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: small request/answer pairs would
/// otherwise wait on delayed ACKs (~40 ms a round trip). tonic's own `tcp_nodelay` only
/// covers sockets it accepts itself.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn expire_leases(coordinator: Arc<Coordinator>) {
    let period =
        (coordinator.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match coordinator.mutate(|s, now| s.expire(now)).await {
            Ok(lost) => {
                for lease in lost {
                    tracing::warn!(task = %lease.task, job = %lease.task.job, epoch = lease.epoch, "lease expired");
                }
            }
            Err(e) => tracing::error!(error = %e, "expiring leases"),
        }
    }
}

struct WorkerService(Arc<Coordinator>);

#[tonic::async_trait]
impl Workers for WorkerService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let info = wire::worker_info_from(request.into_inner().info);
        let worker_id = self.0.mutate(|s, now| s.register(info, now)).await?;
        tracing::info!(worker = %worker_id, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            worker_id,
            heartbeat_interval_ms: self.0.heartbeat_interval.as_millis() as u64,
            lease_timeout_ms: self.0.lease_timeout.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let held = request
            .leases
            .into_iter()
            .map(|l| wire::lease_from(Some(l)))
            .collect::<Result<Vec<_>, _>>()?;
        let revoked = self
            .0
            .mutate(|s, now| s.heartbeat(&request.worker_id, &held, now))
            .await?
            .map_err(status_of)?;
        Ok(Response::new(pb::HeartbeatResponse {
            revoked: revoked.iter().map(outloud_core::wire::lease_to).collect(),
        }))
    }

    async fn lease_task(
        &self,
        request: Request<pb::LeaseTaskRequest>,
    ) -> Result<Response<pb::LeaseTaskResponse>, Status> {
        let worker = request.into_inner().worker_id;
        let assignment = self
            .0
            .mutate(|s, now| s.lease(&worker, now))
            .await?
            .map_err(status_of)?;
        if let Some(a) = &assignment {
            tracing::info!(job = %a.job_id, step = %a.step, task = %a.lease.task, epoch = a.lease.epoch, worker = %worker, "task leased");
        }
        Ok(Response::new(pb::LeaseTaskResponse {
            task: assignment.as_ref().map(outloud_core::wire::assignment_to),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let r = request.into_inner();
        let lease = wire::lease_from(r.lease)?;
        let metrics = outloud_core::wire::metrics_from(r.metrics);
        self.0
            .mutate(|s, now| {
                s.report_progress(
                    &r.worker_id,
                    &lease,
                    metrics,
                    r.checkpoint,
                    r.resumed_from_step,
                    now,
                )
            })
            .await?
            .map_err(status_of)?;
        Ok(Response::new(pb::ReportProgressResponse {}))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let r = request.into_inner();
        let lease = wire::lease_from(r.lease)?;
        let metrics = outloud_core::wire::metrics_from(r.metrics);
        self.0
            .mutate(|s, now| {
                s.complete(
                    &r.worker_id,
                    &lease,
                    metrics,
                    r.output,
                    outloud_core::wire::results_from(r.results),
                    now,
                )
            })
            .await?
            .map_err(status_of)?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::FailTaskResponse>, Status> {
        let r = request.into_inner();
        let failure = wire::failure_from(&r);
        let lease = wire::lease_from(r.lease)?;
        tracing::warn!(task = %lease.task, worker = %r.worker_id, error = %r.error, ?failure, "task given up");
        self.0
            .mutate(|s, now| s.fail(&r.worker_id, &lease, r.error, failure, now))
            .await?
            .map_err(status_of)?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }
}

struct JobService(Arc<Coordinator>);

#[tonic::async_trait]
impl Jobs for JobService {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let r = request.into_inner();
        let spec = admit(&r.spec_yaml, &r.source_name, &r.working_dir)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let job_id = self
            .0
            .mutate(|s, now| s.submit(spec, now))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %job_id, "job submitted");
        Ok(Response::new(pb::SubmitJobResponse { job_id }))
    }

    async fn validate_job(
        &self,
        request: Request<pb::ValidateJobRequest>,
    ) -> Result<Response<pb::ValidateJobResponse>, Status> {
        let r = request.into_inner();
        admit(&r.spec_yaml, &r.source_name, &r.working_dir)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ValidateJobResponse {}))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let id = request.into_inner().job_id;
        let scheduler = self.0.lock();
        let job = scheduler
            .job(&id)
            .ok_or_else(|| status_of(SchedulerError::UnknownJob(id.clone())))?;
        Ok(Response::new(pb::GetJobResponse {
            job_json: json(job),
        }))
    }

    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let scheduler = self.0.lock();
        let jobs: Vec<_> = scheduler.jobs().map(crate::view::JobSummary::of).collect();
        Ok(Response::new(pb::ListJobsResponse {
            jobs_json: json(&jobs),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let r = request.into_inner();
        let steps = self
            .0
            .mutate(|s, now| s.retry(&r.job_id, r.step.as_deref(), now))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %r.job_id, steps = ?steps, "steps retried");
        Ok(Response::new(pb::RetryJobResponse { steps }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let id = request.into_inner().job_id;
        self.0
            .mutate(|s, now| s.cancel(&id, now))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %id, "job cancelled");
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let scheduler = self.0.lock();
        let workers: Vec<_> = scheduler.workers().collect();
        Ok(Response::new(pb::ListWorkersResponse {
            workers_json: json(&workers),
        }))
    }
}
