//! The gRPC contract of Outloud, generated from `proto/outloud.proto`.
//!
//! - [`v1::workers_client`] / [`v1::workers_server`]: the worker-facing service.
//! - [`v1::jobs_client`] / [`v1::jobs_server`]: the CLI-facing service.
//!
//! Only generated code lives here; conversions to domain types sit in the crates that own
//! those types.

pub mod v1 {
    tonic::include_proto!("outloud.v1");
}
