//! Connecting to a coordinator, with the bearer token on every call: over TLS for
//! `https://` URLs (trusting the CA given, else the system's roots), and never sending
//! the token in cleartext beyond loopback unless told to ([`Dial::insecure`]).

use std::net::IpAddr;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use outloud_proto::v1::jobs_client::JobsClient;
use outloud_proto::v1::workers_client::WorkersClient;

use crate::auth::AddToken;

pub type Jobs = JobsClient<InterceptedService<Channel, AddToken>>;
pub type Workers = WorkersClient<InterceptedService<Channel, AddToken>>;

/// The largest answer a client decodes. A coordinator keeps its answers within its own
/// `--max-message-bytes` (4 MiB by default) by summarising and paging them.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// How to reach a coordinator: the credentials and the transport's trust.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    pub token: Option<String>,
    /// PEM of the CA that signed the coordinator's certificate, for `https://` URLs;
    /// without it the system's roots are trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// Send the token over plain TCP to a non-loopback address anyway.
    pub insecure: bool,
}

impl Dial {
    pub fn token(token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_string),
            ..Self::default()
        }
    }

    /// As the command-line flags say: `--tls-ca FILE` (PEM), `--insecure`.
    pub fn from_flags(
        token: Option<String>,
        tls_ca: Option<&std::path::Path>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let ca_pem = tls_ca
            .map(|file| {
                std::fs::read(file)
                    .map_err(|e| anyhow::anyhow!("reading the CA {}: {e}", file.display()))
            })
            .transpose()?;
        Ok(Self {
            token,
            ca_pem,
            insecure,
        })
    }
}

/// Whether `host` (a URL's host) is this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The endpoint for `url`, refusing a token in cleartext beyond loopback.
fn endpoint(url: &str, dial: &Dial) -> anyhow::Result<Endpoint> {
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("bad coordinator URL `{url}`: {e}");
    let parsed = url::Url::parse(url).map_err(|e| bad(&e))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(&e))?;
    match parsed.scheme() {
        "https" => {
            let trust = match &dial.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            Ok(endpoint.tls_config(trust.domain_name(host))?)
        }
        "http" => {
            anyhow::ensure!(
                dial.token.is_none() || dial.insecure || is_loopback(&host),
                "refusing to send the bearer token in cleartext to {host}: use an https:// \
                 URL (with --tls-ca for a private CA), or --insecure on a network you trust"
            );
            Ok(endpoint)
        }
        other => Err(bad(&format!("scheme `{other}`: use http:// or https://"))),
    }
}

/// One HTTP/2 connection; clients made from it share it.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    token: AddToken,
}

impl Connection {
    /// Connects now, so an unreachable coordinator is reported here.
    pub async fn open(url: &str, dial: &Dial) -> anyhow::Result<Self> {
        let channel = endpoint(url, dial)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the coordinator at {url}: {e:#}"))?;
        Ok(Self {
            channel,
            token: AddToken::new(dial.token.as_deref())?,
        })
    }

    /// Connects on first use and reconnects after failures: for long-lived workers that
    /// must ride out a coordinator restart.
    pub fn lazy(url: &str, dial: &Dial) -> anyhow::Result<Self> {
        let channel = endpoint(url, dial)?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            channel,
            token: AddToken::new(dial.token.as_deref())?,
        })
    }

    pub fn jobs(&self) -> Jobs {
        JobsClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    pub fn workers(&self) -> Workers {
        WorkersClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_stays_off_cleartext_beyond_loopback() {
        let with_token = Dial::token(Some("t"));
        for local in ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"] {
            assert!(endpoint(local, &with_token).is_ok(), "{local}");
        }
        let error = endpoint("http://10.0.0.5:50051", &with_token).unwrap_err();
        assert!(error.to_string().contains("cleartext"), "{error}");
        let insecure = Dial {
            insecure: true,
            ..with_token.clone()
        };
        assert!(endpoint("http://10.0.0.5:50051", &insecure).is_ok());
        assert!(endpoint("http://10.0.0.5:50051", &Dial::default()).is_ok());
        assert!(endpoint("https://coordinator.example:443", &with_token).is_ok());
        assert!(endpoint("ftp://x", &with_token).is_err());
    }
}
