//! `outloud coordinator`: its flags, and the checks made before it serves.

use std::path::PathBuf;
use std::time::Duration;

use outloud_core::client::is_loopback;
use outloud_core::spec::Limits;
use outloud_core::{auth, telemetry};

use crate::admission::Policy;
use crate::server::{self, DEFAULT_MAX_MESSAGE_BYTES, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct Serve {
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Where the durable state lives; restart on the same directory to continue.
    #[arg(long, default_value = ".outloud/state")]
    state_dir: PathBuf,
    /// A worker silent this long (milliseconds) loses its tasks.
    #[arg(long, default_value_t = 5000)]
    lease_timeout_ms: u64,
    /// Serve plain HTTP on this address: the live dashboard (`/`) and its JSON API
    /// (`/api/...`, taking the user token), Prometheus metrics (`/metrics`) and probes
    /// for Kubernetes (`/healthz`: alive; `/readyz`: taking calls).
    #[arg(long, alias = "metrics-listen")]
    http: Option<String>,
    /// Once listening, write the addresses bound here as JSON (`{"grpc": "127.0.0.1:
    /// 41234", "http": ...}`): with port 0, how a script or test learns them.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// File holding the workers' own token (else $OUTLOUD_WORKER_TOKEN): with it,
    /// only workers lease and report, and the user token only submits and reads.
    #[arg(long)]
    worker_token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Specs may read data and benchmarks only below this path or URL (repeatable).
    /// Without any, anything the workers can read.
    #[arg(long = "data-root")]
    data_roots: Vec<String>,
    /// Jobs may keep their storage only below this path or URL (repeatable). Without
    /// any, anywhere.
    #[arg(long = "storage-root")]
    storage_roots: Vec<String>,
    /// The largest gRPC message either way; answers are summarised or paged to fit.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    #[command(flatten)]
    limits: LimitFlags,
    /// Export each job's trace (job, step and lease spans; workers add theirs) to this
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`.
    #[arg(long, env = outloud_core::traces::ENDPOINT_ENV)]
    otlp_endpoint: Option<String>,
    /// Test seam: state writes fail after this many succeeded.
    #[arg(long, hide = true)]
    fail_store_writes_after: Option<u64>,
}

/// What one spec may ask for (defaults: [`Limits::default`]).
#[derive(Debug, clap::Args)]
struct LimitFlags {
    /// Bytes of YAML a spec may have.
    #[arg(long, default_value_t = Limits::default().spec_bytes)]
    max_spec_bytes: usize,
    #[arg(long, default_value_t = Limits::default().phases)]
    max_phases: usize,
    /// Tasks one step may have.
    #[arg(long, default_value_t = Limits::default().shards)]
    max_shards: u32,
    /// Tasks one job may have, all steps together.
    #[arg(long, default_value_t = Limits::default().tasks)]
    max_tasks: u64,
    /// Optimizer steps one phase may ask for.
    #[arg(long, default_value_t = Limits::default().steps)]
    max_steps: u64,
    /// Words one phase, source or budget may name.
    #[arg(long, default_value_t = Limits::default().words)]
    max_words: u64,
    /// Runs one job may ask for (`seeds`): each repeats every phase.
    #[arg(long, default_value_t = Limits::default().seeds)]
    max_seeds: usize,
}

impl LimitFlags {
    fn limits(&self) -> Limits {
        Limits {
            spec_bytes: self.max_spec_bytes,
            phases: self.max_phases,
            shards: self.max_shards,
            tasks: self.max_tasks,
            steps: self.max_steps,
            words: self.max_words,
            seeds: self.max_seeds,
            ..Limits::default()
        }
    }
}

/// Serves until a shutdown signal. `insecure`: the global `--insecure`.
pub async fn run(serve: Serve, token: Option<String>, insecure: bool) -> anyhow::Result<()> {
    let worker_token = auth::load_worker_token(serve.worker_token_file.as_deref())?;
    let tls = serve.tls_cert.clone().zip(serve.tls_key.clone());
    let listener = super::bind(&serve.listen).await?;
    let address = listener.local_addr()?;
    let has_token = token.is_some() || worker_token.is_some();
    anyhow::ensure!(
        !has_token || tls.is_some() || insecure || is_loopback(&address.ip().to_string()),
        "refusing to take bearer tokens in cleartext on {address}: serve TLS \
         (--tls-cert/--tls-key), listen on loopback, or pass --insecure on a network you trust"
    );
    let http = match &serve.http {
        Some(addr) => Some(super::bind(addr).await?),
        None => None,
    };
    if let Some(file) = &serve.address_file {
        let http = http.as_ref().map(|h| h.local_addr()).transpose()?;
        let http = http.map(|a| a.to_string());
        let bound = serde_json::json!({
            "grpc": address.to_string(),
            "http": http,
            // The name before --http served more than metrics.
            "metrics": http,
        });
        super::write_atomically(file, bound.to_string().as_bytes())?;
    }
    let admission = Policy::with_roots(
        serve.limits.limits(),
        &serve.data_roots,
        &serve.storage_roots,
        &super::working_dir()?,
    )
    .map_err(anyhow::Error::msg)?;
    let config = ServerConfig {
        worker_token,
        fail_store_writes_after: serve.fail_store_writes_after,
        admission,
        max_message_bytes: serve.max_message_bytes,
        tls,
        otlp_endpoint: serve.otlp_endpoint,
        ..ServerConfig::local(
            serve.state_dir,
            Duration::from_millis(serve.lease_timeout_ms),
            token,
        )
    };
    server::run(listener, http, config, telemetry::shutdown_signal()).await
}
