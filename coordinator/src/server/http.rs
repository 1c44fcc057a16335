//! The coordinator's HTTP listener (`--http`): the live dashboard page, its JSON API,
//! Prometheus `/metrics` and the Kubernetes probes, on one port.
//!
//! The API answers what the CLI prints: `/api/jobs` is `outloud jobs --json`,
//! `/api/jobs/{id}` is `outloud status ID --json`, `/api/jobs/{id}/report` is
//! `outloud report ID --json`, `/api/workers` is `outloud workers --json`. When the
//! coordinator has a user token, every API call must carry it as a bearer header (a
//! worker token gets nothing). The page, the metrics and the probes stay open: the page
//! holds no data until it has a token, and kubelet and Prometheus send no headers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::Coordinator;
use super::answers::{HISTORY_TAIL, TASKS_PER_STEP};
use crate::report::Report;
use crate::scheduler::Scheduler;
use crate::view::{self, JobSummary};
use outloud_core::auth;

/// The dashboard: one self-contained page (inline script and SVG, nothing fetched from
/// elsewhere).
const PAGE: &str = include_str!("dashboard.html");

#[derive(Clone)]
struct Http {
    coordinator: Arc<Coordinator>,
    /// The user token the API asks for, when the coordinator has one.
    token: Option<Arc<str>>,
}

/// Serves until the task is dropped.
pub(super) async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    token: Option<String>,
) -> std::io::Result<()> {
    let state = Http {
        coordinator,
        token: token.map(Arc::from),
    };
    let routes = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/report", get(report))
        .route("/api/workers", get(workers))
        .with_state(state);
    axum::serve(listener, routes).await
}

async fn page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        // Everything the page needs is inline; nothing else may load or frame it.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'; frame-ancestors 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, PAGE).into_response()
}

async fn metrics(State(http): State<Http>) -> Response {
    let text = crate::metrics::render(&http.coordinator.lock());
    let kind = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

async fn ready(State(http): State<Http>) -> Response {
    if http.coordinator.committer.is_broken() {
        (StatusCode::SERVICE_UNAVAILABLE, "state store failed\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// An API error: its status, and why (a JSON body says it).
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 }).to_string();
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn json_answer(text: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, text).into_response()
}

impl Http {
    /// Runs `answer` on the scheduler if the call carries the user token and the state
    /// store has not failed.
    fn read(
        &self,
        headers: &HeaderMap,
        answer: impl FnOnce(&Scheduler) -> Result<String, Refusal>,
    ) -> Response {
        if let Some(expected) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if let Err(why) = auth::check_bearer(given, expected) {
                return Refusal(StatusCode::UNAUTHORIZED, why.into()).into_response();
            }
        }
        let Ok(scheduler) = self.coordinator.serving() else {
            return Refusal(StatusCode::SERVICE_UNAVAILABLE, super::STOPPING.into())
                .into_response();
        };
        match answer(&scheduler) {
            Ok(text) => json_answer(text),
            Err(refused) => refused.into_response(),
        }
    }
}

/// The job as `outloud status --json` receives it: summarised the same way.
fn summarised(scheduler: &Scheduler, id: &str) -> Result<crate::scheduler::Job, Refusal> {
    let job = scheduler
        .job(id)
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    Ok(job.summarised(TASKS_PER_STEP.0 as usize, HISTORY_TAIL.0 as usize))
}

async fn jobs(State(http): State<Http>, headers: HeaderMap) -> Response {
    http.read(&headers, |scheduler| {
        let jobs: Vec<JobSummary> = scheduler.jobs().map(JobSummary::of).collect();
        Ok(super::json(&jobs))
    })
}

async fn job(State(http): State<Http>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    http.read(&headers, |scheduler| {
        Ok(view::job_json(&summarised(scheduler, &id)?).to_string())
    })
}

async fn report(State(http): State<Http>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    http.read(&headers, |scheduler| {
        Ok(super::json(&Report::of(&summarised(scheduler, &id)?)))
    })
}

async fn workers(State(http): State<Http>, headers: HeaderMap) -> Response {
    http.read(&headers, |scheduler| {
        let workers: Vec<_> = scheduler.workers().collect();
        Ok(super::json(&workers))
    })
}
