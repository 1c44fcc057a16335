//! The Outloud control plane: the scheduler, its durable store, the gRPC server, and the
//! `outloud` CLI that drives them. Job specs, task specs, results, storage, auth and
//! telemetry live in `outloud-core`, shared with the workers.
//!
//! Layout:
//! - [`admission`]: what is checked before a job is accepted (the spec within the
//!   coordinator's limits, its paths inside the allowed roots and holding something).
//! - [`scheduler`]: the pure scheduling state machine (jobs as graphs of steps, tasks,
//!   fenced leases), the tallies of what it did, and job summaries that fit an answer.
//! - [`store`]: durable state in redb, written by a group-commit thread; its schema
//!   version and migrations.
//! - [`server`]: the tonic services (TLS, message limits), thin handlers around the
//!   scheduler; answers summarised and paged to fit; task logs; the HTTP listener with
//!   the live dashboard and its JSON API.
//! - [`metrics`]: Prometheus counters and gauges on `GET /metrics`, read from the scheduler.
//! - [`traces`]: the job, step and lease spans of each job's trace, exported over OTLP.
//! - [`wire`]: conversions between prost types and domain types.
//! - [`view`]: tables and summaries the CLI prints.
//! - [`report`]: `outloud report`: benchmarks x phases beside the BabyLM baselines.
//! - [`bench`]: the control-plane benchmarks (throughput; many workers and clients at once).
//! - [`cli`]: the `outloud` commands, including `outloud local`.

pub mod admission;
pub mod bench;
pub mod cli;
pub mod metrics;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod traces;
pub mod view;
pub mod wire;
