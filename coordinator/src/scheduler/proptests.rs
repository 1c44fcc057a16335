//! Random sequences of calls against the pure scheduler, checking after every call the
//! invariants the rest of the system relies on: a task is held by the workers its state
//! names (one, or two with a straggler's duplicate), each under its own epoch, epochs never go back, work that succeeded is never
//! lost or committed twice, and a finished job holds no lease.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use outloud_core::spec;

#[derive(Debug, Clone)]
enum Call {
    Register,
    Submit(u8),
    Lease(u8),
    Progress(u8, u8),
    Complete(u8, u8),
    Fail(u8, u8, u8),
    Heartbeat(u8),
    Expire(u16),
    /// Time passes without an expiry sweep (stragglers straggle).
    Wait(u16),
    Cancel(u8),
    Retry(u8),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => Just(Call::Register),
        1 => any::<u8>().prop_map(Call::Submit),
        4 => any::<u8>().prop_map(Call::Lease),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(w, l)| Call::Progress(w, l)),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(w, l)| Call::Complete(w, l)),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(w, l, k)| Call::Fail(w, l, k)),
        1 => any::<u8>().prop_map(Call::Heartbeat),
        1 => (0u16..3_000).prop_map(Call::Expire),
        1 => (0u16..3_000).prop_map(Call::Wait),
        1 => any::<u8>().prop_map(Call::Cancel),
        1 => any::<u8>().prop_map(Call::Retry),
    ]
}

/// Specs of several shapes: shards, a chain, branches, data (a prepare step), a
/// synthesize step, and a gang.
fn spec_of(choice: u8) -> JobSpec {
    let yaml = match choice % 5 {
        4 => {
            "name: e\nstorage: /tmp/p\ndata: [{name: t, kind: generated_text, words: 9}]\n\
             phases: [{name: g, kind: language, data: [t], steps: 1, min_world_size: 2, max_world_size: 3, gang_grace_ms: 500}]\n"
        }
        0 => {
            "name: a\nstorage: /tmp/p\nphases: [{name: one, kind: noop, shards: 3, max_attempts: 2}, {name: two, kind: noop}]\n"
        }
        1 => {
            "name: b\nstorage: /tmp/p\nphases: [{name: r, kind: noop}, {name: x, kind: noop, max_attempts: 1}, {name: y, kind: noop, from: r, shards: 2}]\n"
        }
        3 => {
            "name: d\nstorage: /tmp/p\ndata: [{name: b, kind: picture_book, pictures: 9}]\n\
             model: {preset: tiny, vision: {image_size: 16, patch_size: 8, d_model: 32, n_layers: 1, n_heads: 2}}\n\
             phases: [{name: v, kind: noop}, {name: d, kind: self_synthesis, synthesis: {images: b, shards: 3}, data: [b], steps: 1}]\n"
        }
        _ => {
            "name: c\nstorage: /tmp/p\ndata: [{name: t, kind: generated_text, words: 9}, {name: u, kind: generated_text, words: 9}]\nphases: [{name: l, kind: language, data: [t, u], steps: 1}]\n"
        }
    };
    spec::parse(yaml, "p.yaml").unwrap()
}

fn pick<T: Clone>(items: &[T], index: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[index as usize % items.len()].clone())
}

/// Checks every invariant; `committed` remembers each succeeded task's output.
fn check(
    s: &Scheduler,
    committed: &mut BTreeMap<TaskId, String>,
    epochs: &mut BTreeMap<TaskId, u64>,
) {
    let mut holders: BTreeMap<TaskId, Vec<String>> = BTreeMap::new();
    for worker in s.workers() {
        for task in &worker.leases {
            let held = holders.entry(task.clone()).or_default();
            assert!(
                !held.contains(&worker.id),
                "{task} is held twice by {}",
                worker.id
            );
            held.push(worker.id.clone());
        }
    }
    let mut succeeded_events = 0;
    for job in s.jobs() {
        for step in &job.steps {
            for task in &step.tasks {
                let before = epochs.insert(task.id.clone(), task.epoch).unwrap_or(0);
                assert!(task.epoch >= before, "{}: epoch went back", task.id);
                match &task.state {
                    TaskState::Leased { duplicate, .. } => {
                        let mut expected = task.holders();
                        let mut held = holders.get(&task.id).cloned().unwrap_or_default();
                        expected.sort();
                        held.sort();
                        assert_eq!(held, expected, "{}: leases not held", task.id);
                        if let Some(d) = duplicate {
                            assert!(d.epoch > task.epoch, "{}: duplicate epoch", task.id);
                        }
                        assert!(
                            !job.state.is_finished(),
                            "{}: leased in a finished job",
                            task.id
                        );
                    }
                    TaskState::Succeeded { output } => {
                        // What is committed is the committing lease's own attempt.
                        let root = step.attempt_root(&task.id, task.epoch);
                        assert!(
                            !step.fences_outputs()
                                || outloud_core::storage::is_within(output, &root),
                            "{}: committed {output} outside {root}",
                            task.id
                        );
                        let first = committed
                            .entry(task.id.clone())
                            .or_insert_with(|| output.clone());
                        assert_eq!(first, output, "{}: committed twice", task.id);
                        assert!(!holders.contains_key(&task.id));
                    }
                    _ => assert!(
                        !holders.contains_key(&task.id),
                        "{}: held but not leased",
                        task.id
                    ),
                }
            }
        }
        succeeded_events += job
            .history
            .iter()
            .filter(|e| matches!(e.what, EventKind::TaskSucceeded { .. }))
            .count();
    }
    for (id, _) in committed.iter() {
        let task = s.job(&id.job).and_then(|j| j.task(id)).unwrap();
        assert!(
            matches!(task.state, TaskState::Succeeded { .. }),
            "{id}: completed work lost"
        );
    }
    assert_eq!(
        succeeded_events,
        committed.len(),
        "each success is committed once"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_calls_keep_the_scheduler_consistent(calls in prop::collection::vec(call(), 1..300)) {
        let mut s = Scheduler::new(SchedulerConfig { lease_timeout_ms: 1_000, instance: 0 });
        let (mut now, mut workers, mut jobs, mut leases) = (0u64, Vec::new(), Vec::new(), Vec::new());
        let (mut committed, mut epochs) = (BTreeMap::new(), BTreeMap::new());
        // Per task: the newest epoch handed out, and the gang ranks handed under it.
        let mut issued: BTreeMap<TaskId, (u64, Vec<u32>)> = BTreeMap::new();
        for call in calls {
            now += 10;
            match call {
                Call::Register => workers.push(s.register(WorkerInfo::for_tests("h"), now)),
                Call::Submit(c) => jobs.push(s.submit(spec_of(c), now).unwrap()),
                Call::Lease(w) => {
                    if let Some(w) = pick(&workers, w)
                        && let Ok(Some(a)) = s.lease(&w, now)
                    {
                        // Every lease, duplicates and retries included, gets an epoch
                        // (and so a folder) no lease of the task had before; only the
                        // ranks of one gang share one, each rank handed once.
                        let (epoch, ranks) = issued.entry(a.lease.task.clone()).or_default();
                        let fresh = a.lease.epoch > *epoch;
                        let same_gang = a.lease.epoch == *epoch && a.rank > 0 && !ranks.contains(&a.rank);
                        prop_assert!(fresh || same_gang, "{}: epoch {} rank {} again", a.lease.task, a.lease.epoch, a.rank);
                        if fresh {
                            (*epoch, *ranks) = (a.lease.epoch, Vec::new());
                        }
                        ranks.push(a.rank);
                        leases.push((w, a.lease, a.output_root));
                    }
                }
                Call::Progress(w, l) => {
                    if let (Some(w), Some((_, lease, root))) = (pick(&workers, w), pick(&leases, l)) {
                        let url = format!("{root}/checkpoints/step-1");
                        let checkpoint = CheckpointRef { url, step: 1 };
                        let _ = s.report_progress(&w, &lease, Metrics::default(), Some(checkpoint), None, now);
                    }
                }
                Call::Complete(w, l) => {
                    // Usually the holder, sometimes another worker or a stale lease.
                    // Usually in its own folder, sometimes in another lease's.
                    if let Some((holder, lease, root)) = pick(&leases, l) {
                        let root = if w % 5 == 0 { pick(&leases, w / 5).unwrap().2 } else { root };
                        let w = if w % 4 == 0 { pick(&workers, w).unwrap() } else { holder };
                        let output = format!("{root}/final");
                        let _ = s.complete(&w, &lease, Metrics::default(), output, Default::default(), now);
                    }
                }
                Call::Fail(w, l, kind) => {
                    if let (Some(w), Some((_, lease, _))) = (pick(&workers, w), pick(&leases, l)) {
                        let failure = [Failure::Fatal, Failure::Retryable, Failure::HandedBack][kind as usize % 3];
                        let _ = s.fail(&w, &lease, "boom".into(), failure, now);
                    }
                }
                Call::Heartbeat(w) => {
                    if let Some(w) = pick(&workers, w) {
                        let held: Vec<LeaseRef> = leases.iter().filter(|(h, _, _)| *h == w).map(|(_, l, _)| l.clone()).collect();
                        let _ = s.heartbeat(&w, &held, now);
                    }
                }
                Call::Expire(by) => {
                    now += u64::from(by);
                    s.expire(now);
                }
                Call::Wait(by) => now += u64::from(by),
                Call::Cancel(j) => {
                    if let Some(j) = pick(&jobs, j) {
                        let _ = s.cancel(&j, now);
                    }
                }
                Call::Retry(j) => {
                    if let Some(j) = pick(&jobs, j) {
                        let _ = s.retry(&j, None, now);
                    }
                }
            }
            let _ = s.take_changes();
            check(&s, &mut committed, &mut epochs);
        }
    }
}
