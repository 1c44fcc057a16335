//! Conversions between the generated gRPC types and the scheduler's domain types. The
//! scheduler never sees a prost type; handlers convert at the edge, here.

use outloud_proto::v1 as pb;
use tonic::Status;

use crate::scheduler::{Assignment, Failure, LeaseRef, Metrics, TaskId, WorkerInfo};

pub fn lease_from(lease: Option<pb::LeaseRef>) -> Result<LeaseRef, Status> {
    let lease = lease.ok_or_else(|| Status::invalid_argument("missing lease"))?;
    let task: TaskId = lease.task_id.parse().map_err(Status::invalid_argument)?;
    Ok(LeaseRef {
        task,
        epoch: lease.epoch,
    })
}

pub fn lease_to(lease: &LeaseRef) -> pb::LeaseRef {
    pb::LeaseRef {
        task_id: lease.task.to_string(),
        epoch: lease.epoch,
    }
}

pub fn metrics_from(metrics: Option<pb::Metrics>) -> Metrics {
    let m = metrics.unwrap_or_default();
    Metrics {
        step: m.step,
        total_steps: m.total_steps,
        loss: m.loss,
        tokens: m.tokens,
        words: m.words,
    }
}

pub fn metrics_to(m: &Metrics) -> pb::Metrics {
    pb::Metrics {
        step: m.step,
        total_steps: m.total_steps,
        loss: m.loss,
        tokens: m.tokens,
        words: m.words,
    }
}

pub fn worker_info_from(info: Option<pb::WorkerInfo>) -> WorkerInfo {
    let info = info.unwrap_or_default();
    WorkerInfo {
        hostname: if info.hostname.is_empty() {
            "unknown".into()
        } else {
            info.hostname
        },
        device: info.device,
        memory_bytes: info.memory_bytes,
        threads: info.threads,
    }
}

pub fn worker_info_to(info: &WorkerInfo) -> pb::WorkerInfo {
    pb::WorkerInfo {
        hostname: info.hostname.clone(),
        device: info.device.clone(),
        memory_bytes: info.memory_bytes,
        threads: info.threads,
    }
}

pub fn assignment_to(a: &Assignment) -> pb::TaskAssignment {
    pb::TaskAssignment {
        lease: Some(lease_to(&a.lease)),
        job_id: a.job_id.clone(),
        phase: a.phase.clone(),
        phase_index: a.lease.task.phase,
        shard: a.lease.task.shard,
        shards: a.shards,
        spec_phase: a.spec_phase,
        evaluation: a.evaluation,
        // Serializing our own spec type cannot fail.
        spec_json: serde_json::to_string(&a.spec).expect("spec serializes"),
        resume_checkpoint: a.resume_checkpoint.clone(),
        previous_checkpoint: a.previous_checkpoint.clone(),
    }
}

pub fn assignment_from(task: pb::TaskAssignment) -> Result<Assignment, String> {
    let lease = lease_from(task.lease).map_err(|s| s.message().to_string())?;
    let spec = serde_json::from_str(&task.spec_json).map_err(|e| format!("task spec: {e}"))?;
    Ok(Assignment {
        lease,
        job_id: task.job_id,
        phase: task.phase,
        shards: task.shards,
        spec_phase: task.spec_phase,
        evaluation: task.evaluation,
        spec,
        resume_checkpoint: task.resume_checkpoint,
        previous_checkpoint: task.previous_checkpoint,
    })
}

pub fn failure_from(request: &pb::FailTaskRequest) -> Failure {
    match (request.handed_back, request.retryable) {
        (true, _) => Failure::HandedBack,
        (false, true) => Failure::Retryable,
        (false, false) => Failure::Fatal,
    }
}
