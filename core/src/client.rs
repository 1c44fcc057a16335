//! Connecting to a coordinator, with the bearer token on every call.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use outloud_proto::v1::jobs_client::JobsClient;
use outloud_proto::v1::workers_client::WorkersClient;

use crate::auth::AddToken;

pub type Jobs = JobsClient<InterceptedService<Channel, AddToken>>;
pub type Workers = WorkersClient<InterceptedService<Channel, AddToken>>;

/// One HTTP/2 connection; clients made from it share it.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    token: AddToken,
}

impl Connection {
    /// Connects now, so an unreachable coordinator is reported here.
    pub async fn open(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| anyhow::anyhow!("bad coordinator URL `{url}`: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the coordinator at {url}: {e}"))?;
        Ok(Self {
            channel,
            token: AddToken::new(token)?,
        })
    }

    /// Connects on first use and reconnects after failures: for long-lived workers that
    /// must ride out a coordinator restart.
    pub fn lazy(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| anyhow::anyhow!("bad coordinator URL `{url}`: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            channel,
            token: AddToken::new(token)?,
        })
    }

    pub fn jobs(&self) -> Jobs {
        JobsClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    pub fn workers(&self) -> Workers {
        WorkersClient::with_interceptor(self.channel.clone(), self.token.clone())
    }
}
