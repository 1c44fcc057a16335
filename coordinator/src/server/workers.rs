//! The Workers service: register, heartbeat, lease, report, complete, fail, and the
//! rendezvous of a gang's ranks.

use std::sync::Arc;

use outloud_core::task::CheckpointRef;
use outloud_proto::v1 as pb;
use outloud_proto::v1::workers_server::Workers;
use tonic::{Request, Response, Status};

use super::{Coordinator, status_of};
use crate::wire;

/// The longest URL a worker may report (checkpoints, outputs): they are kept for good.
const MAX_URL_BYTES: usize = 4096;
/// The most a gang rank may publish at its rendezvous (an address, NCCL's 128-byte id).
const MAX_PAYLOAD_BYTES: usize = 4096;
/// The most of a worker's error message kept (in the task, the job and the history).
const MAX_ERROR_BYTES: usize = 4096;

fn bounded_url(url: &str) -> Result<(), Status> {
    if url.len() > MAX_URL_BYTES {
        return Err(Status::invalid_argument(format!(
            "a reported URL of {} bytes; at most {MAX_URL_BYTES}",
            url.len()
        )));
    }
    Ok(())
}

/// At most `MAX_ERROR_BYTES` of `error`, cut at a character boundary.
fn bounded_error(mut error: String) -> String {
    if error.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
        error.push_str("... (cut)");
    }
    error
}

pub(super) struct WorkerService(pub(super) Arc<Coordinator>);

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
        r.checkpoint.as_deref().map(bounded_url).transpose()?;
        let checkpoint = r.checkpoint.map(|url| CheckpointRef {
            url,
            step: r.checkpoint_step.unwrap_or(metrics.step),
        });
        self.0
            .mutate(|s, now| {
                s.report_progress(
                    &r.worker_id,
                    &lease,
                    metrics,
                    checkpoint,
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
        bounded_url(&r.output)?;
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
        let error = bounded_error(r.error);
        tracing::warn!(task = %lease.task, worker = %r.worker_id, error = %error, ?failure, "task given up");
        self.0
            .mutate(|s, now| s.fail(&r.worker_id, &lease, error, failure, now))
            .await?
            .map_err(status_of)?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }

    async fn rendezvous(
        &self,
        request: Request<pb::RendezvousRequest>,
    ) -> Result<Response<pb::RendezvousResponse>, Status> {
        let r = request.into_inner();
        let lease = wire::lease_from(r.lease)?;
        if r.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Status::invalid_argument(format!(
                "a rendezvous payload of {} bytes; at most {MAX_PAYLOAD_BYTES}",
                r.payload.len()
            )));
        }
        let payloads = self
            .0
            .mutate(|s, now| s.rendezvous(&r.worker_id, &lease, r.payload, now))
            .await?
            .map_err(status_of)?;
        Ok(Response::new(pb::RendezvousResponse {
            payloads: payloads.unwrap_or_default(),
        }))
    }
}
