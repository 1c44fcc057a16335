//! What the Outloud coordinator and its workers share, and nothing either keeps to
//! itself: the coordinator links no libtorch, a worker no scheduler or state store.
//!
//! Layout:
//! - [`spec`]: the job spec YAML; parsing and checks with file:line:column errors, within
//!   limits; phase 3's synthesis settings; weighted data entries.
//! - [`task_spec`]: the resolved task spec, what one task needs and nothing else.
//! - [`task`]: task ids, leases, metrics, the assignment a worker receives, and the
//!   attempt folder each lease writes into (fenced writes).
//! - [`results`]: typed results (benchmark scores, probes, counters).
//! - [`wire`]: conversions between the gRPC types and these domain types.
//! - [`storage`]: storage URLs opened through `object_store`; data sources whose files
//!   name only paths inside themselves.
//! - [`auth`]: bearer tokens on both ends of every call.
//! - [`client`]: connecting to a coordinator (TLS, no tokens in cleartext beyond loopback).
//! - [`telemetry`]: tracing set-up and shutdown signals for every binary.
//! - [`traces`]: one trace per job over OTLP: ids every process derives alike, and the
//!   `traceparent` an assignment carries.

pub mod auth;
pub mod client;
pub mod results;
pub mod spec;
pub mod storage;
pub mod task;
pub mod task_spec;
pub mod telemetry;
pub mod traces;
pub mod wire;
