//! The Outloud control plane: the scheduler, its durable store, the gRPC server, and the
//! `outloud` CLI that drives them. Job specs, task specs, results, storage, auth and
//! telemetry live in `outloud-core`, shared with the workers.
//!
//! Layout:
//! - [`admission`]: what is checked before a job is accepted (spec + data exist).
//! - [`scheduler`]: the pure scheduling state machine (jobs, phases, tasks, leases),
//!   and the tallies of what it did.
//! - [`store`]: durable state in redb, written by a group-commit thread; its schema
//!   version and migrations.
//! - [`server`]: the tonic services, thin handlers around the scheduler.
//! - [`metrics`]: Prometheus counters and gauges on `GET /metrics`, read from the scheduler.
//! - [`wire`]: conversions between prost types and domain types.
//! - [`view`]: tables and summaries the CLI prints.
//! - [`report`]: `outloud report`: benchmarks x phases beside the BabyLM baselines.
//! - [`bench`]: the control-plane benchmark (simulated workers over gRPC).
//! - [`cli`]: the `outloud` commands, including `outloud local`.

pub mod admission;
pub mod bench;
pub mod cli;
pub mod metrics;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod view;
pub mod wire;
