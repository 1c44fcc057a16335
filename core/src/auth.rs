//! Bearer-token authentication for every service call.
//!
//! The token comes from a file (`--token-file`) or the `OUTLOUD_TOKEN` variable. When a
//! coordinator has one, calls without `authorization: Bearer <token>` are refused with
//! UNAUTHENTICATED. Workers may hold a token of their own (`OUTLOUD_WORKER_TOKEN`): the
//! Workers service then takes only it and the Jobs service only the user token, so a
//! user cannot lease tasks and a worker cannot submit, cancel or read jobs. The gRPC
//! health service stays open: Kubernetes probes send no headers.

use std::path::Path;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub const TOKEN_ENV: &str = "OUTLOUD_TOKEN";
/// The workers' own token: with it set on the coordinator, leasing and reporting take
/// this token and nothing else, and the user token (`OUTLOUD_TOKEN`) cannot lease.
pub const WORKER_TOKEN_ENV: &str = "OUTLOUD_WORKER_TOKEN";

/// The token from `file` if given, else from the environment, else none.
pub fn load_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    load(file, TOKEN_ENV)
}

/// The workers' token from `file` if given, else `OUTLOUD_WORKER_TOKEN`, else none.
pub fn load_worker_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    load(file, WORKER_TOKEN_ENV)
}

fn load(file: Option<&Path>, variable: &str) -> anyhow::Result<Option<String>> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", file.display()))?;
        let token = text.trim().to_string();
        anyhow::ensure!(!token.is_empty(), "token file {} is empty", file.display());
        return Ok(Some(token));
    }
    Ok(std::env::var(variable)
        .ok()
        .filter(|t| !t.trim().is_empty()))
}

/// Server side: refuses calls that do not carry the expected token.
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Arc<str>>,
}

impl RequireToken {
    pub fn new(expected: Option<String>) -> Self {
        Self {
            expected: expected.map(Arc::from),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        check_bearer(given, expected).map_err(Status::unauthenticated)?;
        Ok(request)
    }
}

/// Whether an `authorization` header's value is `Bearer <expected>`; else why not. The
/// one check behind gRPC calls and the HTTP API alike.
pub fn check_bearer(header: Option<&str>, expected: &str) -> Result<(), &'static str> {
    match header.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err("wrong bearer token"),
        None => Err("missing bearer token"),
    }
}

/// Compares without an early exit, so timing does not leak how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Client side: adds the token to every call.
#[derive(Clone)]
pub struct AddToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AddToken {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let header = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token has characters a header cannot carry"))?;
        Ok(Self { header })
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(server: &mut RequireToken, client: &mut AddToken) -> Result<(), Status> {
        server
            .call(client.call(Request::new(())).unwrap())
            .map(|_| ())
    }

    #[test]
    fn only_the_right_token_passes() {
        let mut server = RequireToken::new(Some("s3cret".into()));
        let err = call(&mut server, &mut AddToken::new(None).unwrap()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = call(&mut server, &mut AddToken::new(Some("guess")).unwrap()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        call(&mut server, &mut AddToken::new(Some("s3cret")).unwrap()).unwrap();
        call(
            &mut RequireToken::new(None),
            &mut AddToken::new(None).unwrap(),
        )
        .unwrap();
    }
}
