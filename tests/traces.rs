//! One trace per job: a real OTLP receiver (the `opentelemetry-proto` trace service, in
//! this process) collects the spans of the coordinator and of both ranks of a gang, and
//! they form one tree with the job's id, steps, tasks, workers and ranks on them, even
//! though the coordinator is killed and restarted in the middle of the job.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value as AnyValue};
use serde_json::Value;
use support::*;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A span as received, with its process's resource attributes.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    instance: String,
    name: String,
    trace: String,
    span: String,
    parent: String,
    attributes: HashMap<String, String>,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        let mut all = Vec::new();
        for request in self.0.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let resource = text(
                    &resource_spans
                        .resource
                        .as_ref()
                        .map(|r| r.attributes.clone())
                        .unwrap_or_default(),
                );
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        all.push(Received {
                            service: resource["service.name"].clone(),
                            instance: resource
                                .get("service.instance.id")
                                .cloned()
                                .unwrap_or_default(),
                            name: span.name.clone(),
                            trace: hex::encode(&span.trace_id),
                            span: hex::encode(&span.span_id),
                            parent: hex::encode(&span.parent_span_id),
                            attributes: text(&span.attributes),
                        });
                    }
                }
            }
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_one_trace_across_the_coordinator_its_restart_and_both_ranks() {
    let _one_at_a_time = exclusive().await;
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(serving);

    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let state = dir.path().join("state");
    // Batches go out every 100 ms instead of every 5 s.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let coordinator = Coordinator::start_with_env(&state, 0, 5_000, None, &[], &env);
    let port = coordinator.port;
    let _workers: Vec<Process> = (0..2)
        .map(|i| start_worker_with_env(&coordinator.url, &logs, &format!("w{i}"), None, &env))
        .collect();
    let connection = connect(&coordinator.url, None).await;
    let id = submit(
        &connection,
        &gang_job(&dir.path().join("storage"), 80, "world_size: 2"),
        dir.path(),
    )
    .await;
    // Killed while the gang trains, restarted on its state: the job goes on.
    wait_until(&connection, &id, Duration::from_secs(240), |job| {
        job.step("language").unwrap().metrics().step >= 20
    })
    .await;
    drop(coordinator);
    let coordinator = Coordinator::start_with_env(&state, port, 5_000, None, &[], &env);
    let connection = connect(&coordinator.url, None).await;
    let job = wait_until(&connection, &id, Duration::from_secs(240), finished).await;
    assert_succeeded(&job);
    let status = cli(
        &["status", &id, "--json", "--coordinator", &coordinator.url],
        None,
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let trace = status["trace_id"].as_str().unwrap().to_string();

    // Wait for the root span: the coordinator exports it when the job ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<Received> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace == trace)
            .collect();
        let rank_spans = spans.iter().filter(|s| s.name == "task").count();
        if spans.iter().any(|s| s.name == "job") && rank_spans >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "the trace never completed: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // One tree: a single root, the job's; every other span's parent is in the trace.
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span.as_str()).collect();
    let roots: Vec<&Received> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].name, "job");
    assert_eq!(roots[0].attributes["job_id"], id);
    for span in &spans {
        assert!(
            span.parent.is_empty() || ids.contains(span.parent.as_str()),
            "{} ({}) has a parent outside the trace",
            span.name,
            span.service
        );
    }
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span.as_str(), s)).collect();

    // The coordinator's part, from both of its lives.
    let coordinator_spans: Vec<&Received> = spans
        .iter()
        .filter(|s| s.service == "outloud-coordinator")
        .collect();
    let lives: BTreeSet<&str> = coordinator_spans
        .iter()
        .map(|s| s.instance.as_str())
        .collect();
    assert_eq!(
        lives.len(),
        2,
        "spans from before and after the restart: {lives:?}"
    );
    for step in ["prepare", "language"] {
        assert!(
            coordinator_spans
                .iter()
                .any(|s| s.name == "step" && s.attributes["step"] == step),
            "no span for step {step}"
        );
    }

    // Both ranks' task spans, from two worker processes, each under the lease span the
    // coordinator exported for its lease.
    let tasks: Vec<&Received> = spans
        .iter()
        .filter(|s| s.service == "outloud-worker" && s.name == "task")
        .collect();
    let language: Vec<&&Received> = tasks
        .iter()
        .filter(|s| s.attributes["step"] == "language")
        .collect();
    let ranks: BTreeSet<&str> = language
        .iter()
        .map(|s| s.attributes["rank"].as_str())
        .collect();
    assert_eq!(ranks, BTreeSet::from(["0", "1"]), "{language:#?}");
    let workers: BTreeSet<&str> = language
        .iter()
        .map(|s| s.attributes["worker"].as_str())
        .collect();
    let processes: BTreeSet<&str> = language.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!((workers.len(), processes.len()), (2, 2), "{language:#?}");
    for task in &tasks {
        assert_eq!(task.attributes["job"], id);
        let lease = by_id[task.parent.as_str()];
        assert_eq!(
            (lease.name.as_str(), lease.service.as_str()),
            ("lease", "outloud-coordinator")
        );
        assert_eq!(lease.attributes["task"], task.attributes["task"]);
    }
    // Inside the tasks: training-step ranges, checkpoints and the collective.
    for (name, wanted) in [("steps", 2), ("checkpoint", 1), ("collective", 2)] {
        let found = spans
            .iter()
            .filter(|s| s.service == "outloud-worker" && s.name == name)
            .count();
        assert!(found >= wanted, "{found} {name} spans");
    }
    eprintln!(
        "trace {trace}: {} spans, {} from the coordinator",
        spans.len(),
        coordinator_spans.len()
    );
}
