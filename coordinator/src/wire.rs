//! Conversions between the generated gRPC types and the scheduler's own domain types.
//! The scheduler never sees a prost type; handlers convert at the edge, here and in
//! `outloud_core::wire` (the types the workers share).

use outloud_proto::v1 as pb;
use tonic::Status;

use crate::scheduler::{Failure, LeaseRef, WorkerInfo};

pub fn lease_from(lease: Option<pb::LeaseRef>) -> Result<LeaseRef, Status> {
    outloud_core::wire::lease_from(lease).map_err(Status::invalid_argument)
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
        device_name: info.device_name,
        device_memory_bytes: info.device_memory_bytes,
    }
}

pub fn worker_info_to(info: &WorkerInfo) -> pb::WorkerInfo {
    pb::WorkerInfo {
        hostname: info.hostname.clone(),
        device: info.device.clone(),
        memory_bytes: info.memory_bytes,
        threads: info.threads,
        device_name: info.device_name.clone(),
        device_memory_bytes: info.device_memory_bytes,
    }
}

pub fn failure_from(request: &pb::FailTaskRequest) -> Failure {
    match (request.handed_back, request.retryable) {
        (true, _) => Failure::HandedBack,
        (false, true) => Failure::Retryable,
        (false, false) => Failure::Fatal,
    }
}
