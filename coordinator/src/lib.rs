//! The Outloud control plane: job specs, the scheduler, its durable store, the gRPC
//! server, and the `outloud` CLI that drives them.
//!
//! Layout:
//! - [`spec`]: the job spec YAML; parsing and checks with file:line:column errors.
//! - [`admission`]: what is checked before a job is accepted (spec + data exist).
//! - [`scheduler`]: the pure scheduling state machine (jobs, phases, tasks, leases).
//! - [`store`]: durable state in redb, written by a group-commit thread.
//! - [`server`]: the tonic services, thin handlers around the scheduler.
//! - [`auth`]: bearer tokens on both ends of every call.
//! - [`client`]: connecting to a coordinator.
//! - [`metrics`]: Prometheus counters and gauges on `GET /metrics`.
//! - [`wire`]: conversions between prost types and domain types.
//! - [`storage`]: storage URLs opened through `object_store`.
//! - [`telemetry`]: tracing set-up for every binary.
//! - [`view`]: tables and summaries the CLI prints.
//! - [`report`]: `outloud report`: benchmarks x phases beside the BabyLM baselines.
//! - [`bench`]: the control-plane benchmark (simulated workers over gRPC).
//! - [`cli`]: the `outloud` commands, including `outloud local`.

pub mod admission;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod spec;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod view;
pub mod wire;
