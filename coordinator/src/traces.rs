//! The coordinator's part of a job's trace (ids: `outloud_core::traces`): the job's
//! root span, a span per run of each step, and a span per lease, each exported over
//! OTLP when it ends. They are built from the job's history, so a coordinator restarted
//! from its state ends, under the same ids, the spans its predecessor began; the
//! workers parent their own spans under the lease spans.
//!
//! [`ended_by`] is pure (which spans an event ends); [`TraceExport`] sends them.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};
use outloud_core::traces;

use crate::scheduler::{EventKind, Job, Millis, Scheduler, TaskId};

/// A span the coordinator exports, once it has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub name: &'static str,
    pub span: SpanId,
    pub parent: Option<SpanId>,
    pub start: Millis,
    pub end: Millis,
    pub attributes: Vec<(&'static str, String)>,
    /// Why it ended badly (lost, failed, cancelled); None: it succeeded.
    pub error: Option<String>,
}

/// The spans that event `index` of `job`'s history ends, with `job` as it stands when
/// the event is recorded (a step's run is its current one).
pub fn ended_by(job: &Job, index: usize) -> Vec<SpanRecord> {
    let Some(event) = job.history.get(index) else {
        return Vec::new();
    };
    let before = &job.history[..index];
    let lease_ended = |task: &TaskId, epoch: u64| {
        before
            .iter()
            .any(|e| ends_lease(&e.what).is_some_and(|(t, ep)| t == task && ep == epoch))
    };
    match &event.what {
        EventKind::TaskSucceeded { task, epoch, .. } => {
            lease(job, index, task, *epoch, None).into_iter().collect()
        }
        EventKind::TaskFailed { task, epoch, error } => {
            lease(job, index, task, *epoch, Some(error.clone()))
                .into_iter()
                .collect()
        }
        // A gang loses every rank's lease at once: one span ends, once.
        EventKind::LeaseLost {
            task,
            epoch,
            reason,
            ..
        } if !lease_ended(task, *epoch) => {
            lease(job, index, task, *epoch, Some(format!("lost: {reason}")))
                .into_iter()
                .collect()
        }
        EventKind::PhaseSucceeded { phase } => step(job, index, phase, None).into_iter().collect(),
        EventKind::JobSucceeded | EventKind::JobFailed { .. } | EventKind::JobCancelled => {
            job_ended(job, index)
        }
        _ => Vec::new(),
    }
}

/// The lease (task, epoch) an event ends, if it ends one.
fn ends_lease(what: &EventKind) -> Option<(&TaskId, u64)> {
    match what {
        EventKind::TaskSucceeded { task, epoch, .. }
        | EventKind::TaskFailed { task, epoch, .. }
        | EventKind::LeaseLost { task, epoch, .. } => Some((task, *epoch)),
        _ => None,
    }
}

/// The (task, epoch, workers) an event starts a lease of, if it starts one.
fn starts_lease(what: &EventKind) -> Option<(&TaskId, u64, Vec<String>)> {
    match what {
        EventKind::Leased {
            task,
            epoch,
            worker,
            ..
        }
        | EventKind::Duplicated {
            task,
            epoch,
            worker,
            ..
        } => Some((task, *epoch, vec![worker.clone()])),
        EventKind::GangLeased {
            task,
            epoch,
            workers,
        } => Some((task, *epoch, workers.clone())),
        _ => None,
    }
}

fn step_index(job: &Job, name: &str) -> Option<usize> {
    job.steps.iter().position(|s| s.name == name)
}

fn lease(
    job: &Job,
    index: usize,
    task: &TaskId,
    epoch: u64,
    error: Option<String>,
) -> Option<SpanRecord> {
    let trace = job.trace_id();
    let (at, workers) = job.history[..index].iter().rev().find_map(|e| {
        let (t, ep, workers) = starts_lease(&e.what)?;
        (t == task && ep == epoch).then_some((e.at, workers))
    })?;
    let step = job.steps.get(task.step as usize)?;
    // A lease ends within its step's run: the step's current one.
    let attempt = step.attempts;
    let task_text = task.to_string();
    Some(SpanRecord {
        name: "lease",
        span: traces::lease_span(trace, &task_text, epoch),
        parent: Some(traces::step_span(trace, task.step as usize, attempt)),
        start: at,
        end: job.history[index].at,
        attributes: vec![
            ("job_id", job.id.clone()),
            ("step", step.name.clone()),
            ("task", task_text),
            ("shard", task.shard.to_string()),
            ("epoch", epoch.to_string()),
            ("worker", workers.first().cloned().unwrap_or_default()),
            ("workers", workers.join(",")),
        ],
        error,
    })
}

fn step(job: &Job, index: usize, name: &str, error: Option<String>) -> Option<SpanRecord> {
    let trace = job.trace_id();
    let position = step_index(job, name)?;
    let started = job.history[..=index]
        .iter()
        .rev()
        .find(|e| matches!(&e.what, EventKind::PhaseStarted { phase } if phase == name))?;
    let attempt = job.steps[position].attempts;
    Some(SpanRecord {
        name: "step",
        span: traces::step_span(trace, position, attempt),
        parent: Some(traces::job_span(trace)),
        start: started.at,
        end: job.history[index].at,
        attributes: vec![
            ("job_id", job.id.clone()),
            ("step", name.to_string()),
            ("attempt", attempt.to_string()),
        ],
        error,
    })
}

/// The job's end: its root span (the first time it ends), and the steps and leases it
/// left open (a failure or a cancel).
fn job_ended(job: &Job, index: usize) -> Vec<SpanRecord> {
    let history = &job.history[..index];
    let error = match &job.history[index].what {
        EventKind::JobFailed { error } => Some(error.clone()),
        EventKind::JobCancelled => Some("cancelled".to_string()),
        _ => None,
    };
    // One pass over the history: what started and has not ended, in start order.
    let (mut steps, mut leases) = (Vec::new(), Vec::new());
    for event in history {
        match &event.what {
            EventKind::PhaseStarted { phase } => {
                steps.retain(|p| p != &phase);
                steps.push(phase);
            }
            EventKind::PhaseSucceeded { phase } => steps.retain(|p| p != &phase),
            what => {
                if let Some((task, epoch, _)) = starts_lease(what) {
                    leases.push((task, epoch));
                } else if let Some(ended) = ends_lease(what) {
                    leases.retain(|open| *open != ended);
                }
            }
        }
    }
    let mut spans = Vec::new();
    for phase in steps {
        let why = error.clone().or_else(|| Some("did not finish".into()));
        spans.extend(step(job, index, phase, why));
    }
    for (task, epoch) in leases {
        let why = error.clone().or_else(|| Some("ended with the job".into()));
        spans.extend(lease(job, index, task, epoch, why));
    }
    let ended_before = history.iter().any(|e| {
        matches!(
            e.what,
            EventKind::JobSucceeded | EventKind::JobFailed { .. } | EventKind::JobCancelled
        )
    });
    if !ended_before {
        spans.push(SpanRecord {
            name: "job",
            span: traces::job_span(job.trace_id()),
            parent: None,
            start: job.submitted_at,
            end: job.history[index].at,
            attributes: vec![
                ("job_id", job.id.clone()),
                ("job_name", job.spec.name.clone()),
                ("state", job.state.to_string()),
            ],
            error,
        });
    }
    spans
}

/// Sends the coordinator's spans to an OTLP collector, batched on a thread of its own.
#[derive(Debug)]
pub struct TraceExport {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

impl TraceExport {
    /// Call inside the Tokio runtime that will carry the exports.
    pub fn start(endpoint: &str, instance: String) -> anyhow::Result<Self> {
        let mut processor = BatchSpanProcessor::builder(traces::exporter(endpoint)?).build();
        processor.set_resource(&traces::resource("outloud-coordinator", instance));
        let scope = InstrumentationScope::builder("outloud-coordinator").build();
        Ok(Self { processor, scope })
    }

    /// Exports the spans that the new history events `events` (job id, index) end.
    pub fn events(&self, scheduler: &Scheduler, events: &[(String, usize)]) {
        for (job_id, index) in events {
            if let Some(job) = scheduler.job(job_id) {
                for record in ended_by(job, *index) {
                    self.processor.on_end(self.span_data(job, record));
                }
            }
        }
    }

    fn span_data(&self, job: &Job, record: SpanRecord) -> SpanData {
        let trace = job.trace_id();
        let time = |ms: Millis| UNIX_EPOCH + Duration::from_millis(ms);
        SpanData {
            span_context: SpanContext::new(
                trace,
                record.span,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: record.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(record.name),
            start_time: time(record.start),
            end_time: time(record.end),
            attributes: record
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: match record.error {
                Some(why) => Status::error(why),
                None => Status::Ok,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// Sends what is queued; blocks until the collector answered or gave up.
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(error = %e, "traces not all exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{done, scheduler, worker};
    use std::collections::HashSet;

    /// Every span the job's history ends, event by event.
    fn all_spans(job: &Job) -> Vec<SpanRecord> {
        (0..job.history.len())
            .flat_map(|i| ended_by(job, i))
            .collect()
    }

    #[test]
    fn a_lost_lease_and_its_re_lease_are_two_spans_under_one_step_under_the_job() {
        let mut s = scheduler();
        let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
        let yaml = "name: t\nstorage: /tmp/x\nphases: [{name: one, kind: noop}]\n";
        let id = s
            .submit(outloud_core::spec::parse(yaml, "t.yaml").unwrap(), 0)
            .unwrap();
        let first = s.lease(&a, 1).unwrap().unwrap();
        // `a` falls silent: its lease is lost, and `b` takes the task.
        assert_eq!(s.expire(5_000).len(), 1);
        s.heartbeat(&b, &[], 5_000).unwrap();
        let second = s.lease(&b, 5_001).unwrap().unwrap();
        done(&mut s, &b, &second, 6_000);
        let job = s.job(&id).unwrap();
        let spans = all_spans(job);

        let names: Vec<&str> = spans.iter().map(|s| s.name).collect();
        assert_eq!(names, ["lease", "lease", "step", "job"]);
        let unique: HashSet<SpanId> = spans.iter().map(|s| s.span).collect();
        assert_eq!(unique.len(), spans.len(), "no span is exported twice");
        let (lost, won, step, root) = (&spans[0], &spans[1], &spans[2], &spans[3]);
        assert!(
            lost.error.as_deref().unwrap().starts_with("lost"),
            "{lost:?}"
        );
        assert_eq!(
            (won.error.as_deref(), won.start, won.end),
            (None, 5_001, 6_000)
        );
        assert_eq!(lost.parent, Some(step.span));
        assert_eq!(won.parent, Some(step.span));
        assert_eq!((step.parent, root.parent), (Some(root.span), None));
        assert_eq!(root.start, 0);
        // Each worker was told its own lease's span.
        for (assignment, span) in [(&first, lost), (&second, won)] {
            let parent = traces::parse_traceparent(&assignment.traceparent).unwrap();
            assert_eq!(parent.trace_id(), job.trace_id());
            assert_eq!(parent.span_id(), span.span);
        }
    }
}
