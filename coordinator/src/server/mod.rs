//! The coordinator's gRPC server: thin handlers around the [`Scheduler`].
//!
//! Every handler unpacks the request, calls one scheduler method under the lock, queues
//! the records that call changed for the group-commit writer, and answers only once
//! they are on disk. A background ticker expires the leases of silent workers.
//! `workers`: the Workers service; `jobs`: the Jobs service; `answers`: keeping answers
//! within the message size (summaries, pages); `logs`: reading the task logs workers
//! shipped; `http`: the dashboard, its JSON API, metrics and probes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod answers;
mod http;
mod jobs;
mod logs;
mod workers;

use outloud_proto::v1::jobs_server::JobsServer;
use outloud_proto::v1::workers_server::WorkersServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::admission::Policy;
use crate::scheduler::{Millis, Scheduler, SchedulerConfig, SchedulerError};
use crate::store::{Batch, Committer, Store};
use crate::traces::TraceExport;
use jobs::JobService;
use outloud_core::auth::RequireToken;
use workers::WorkerService;

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
    /// What a submitted spec may ask for and name.
    pub admission: Policy,
    /// The largest message either way; answers are summarised or paged to fit.
    pub max_message_bytes: usize,
    /// Certificate chain and private key (PEM files): serve TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Export each job's trace to this OTLP/gRPC collector.
    pub otlp_endpoint: Option<String>,
}

/// The default of `--max-message-bytes`: tonic's own default for what a client decodes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

impl ServerConfig {
    /// A plain loopback coordinator with the default limits, on `state_dir`.
    pub fn local(state_dir: PathBuf, lease_timeout: Duration, token: Option<String>) -> Self {
        Self {
            state_dir,
            lease_timeout,
            token,
            worker_token: None,
            fail_store_writes_after: None,
            admission: Policy::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
            otlp_endpoint: None,
        }
    }
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
    admission: Policy,
    max_message_bytes: usize,
    /// Where the spans of jobs' traces go, when a collector is set.
    traces: Option<TraceExport>,
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
            if let Some(traces) = &self.traces {
                traces.events(&scheduler, &changes.events);
            }
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

    /// The scheduler for a read, unless a state write failed: then memory may hold what
    /// disk does not, and nothing is answered from it.
    fn serving(&self) -> Result<std::sync::MutexGuard<'_, Scheduler>, Status> {
        let scheduler = self.lock();
        if self.committer.is_broken() {
            return Err(Status::unavailable(STOPPING));
        }
        Ok(scheduler)
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
        SchedulerError::OutsideAttempt { .. } => Status::invalid_argument(error.to_string()),
        SchedulerError::NotRankZero { .. } => Status::failed_precondition(error.to_string()),
        SchedulerError::NotRetryable(_) | SchedulerError::InUse(_) => {
            Status::failed_precondition(error.to_string())
        }
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
/// gRPC on `listener`; the dashboard, its API, metrics and probes on `http` when given.
pub async fn run(
    listener: TcpListener,
    http: Option<TcpListener>,
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
        admission: config.admission.clone(),
        max_message_bytes: config.max_message_bytes,
        traces: match &config.otlp_endpoint {
            Some(endpoint) => Some(TraceExport::start(
                endpoint,
                format!("{:x}", instance_id()),
            )?),
            None => None,
        },
    });
    tracing::info!(
        addr = %listener.local_addr()?,
        state_dir = %config.state_dir.display(),
        jobs,
        "coordinator serving"
    );
    let expiry = tokio::spawn(expire_leases(coordinator.clone()));
    let http = http.map(|listener| {
        tokio::spawn(http::serve(
            listener,
            coordinator.clone(),
            config.token.clone(),
        ))
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkersServer<WorkerService>>().await;
    health.set_serving::<JobsServer<JobService>>().await;
    let auth = RequireToken::new(config.token.clone());
    let worker_auth = RequireToken::new(config.worker_token.clone().or(config.token.clone()));
    let most = config.max_message_bytes;
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity(cert, key)?))?;
    }
    let workers = WorkersServer::new(WorkerService(coordinator.clone()))
        .max_decoding_message_size(most)
        .max_encoding_message_size(most);
    let jobs = JobsServer::new(JobService(coordinator.clone()))
        .max_decoding_message_size(most)
        .max_encoding_message_size(most);
    let serving = builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            workers,
            worker_auth,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            jobs, auth,
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown);
    // A failed state write stops the server: a graceful stop would wait for clients to
    // hang up while memory holds what disk does not. It serves on only long enough for
    // the answers already made (the "did not happen" ones) to reach their clients;
    // meanwhile every call is refused ([`Coordinator::serving`]).
    let result = tokio::select! {
        result = serving => Some(result),
        _ = async {
            coordinator.stop.notified().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        } => None,
    };
    expiry.abort();
    if let Some(http) = http {
        http.abort();
    }
    let flushing = coordinator.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(traces) = &flushing.traces {
            traces.shutdown();
        }
    })
    .await;
    result.transpose()?;
    anyhow::ensure!(
        !coordinator.committer.is_broken(),
        "a state write failed, so the coordinator stopped rather than keep in memory what \
         disk does not have; restart it on {} to recover from disk",
        config.state_dir.display()
    );
    Ok(())
}

/// The server's certificate chain and key, read from PEM files.
fn identity(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Identity> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
    };
    Ok(Identity::from_pem(read(cert)?, read(key)?))
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
