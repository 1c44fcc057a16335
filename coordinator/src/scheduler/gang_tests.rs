//! Gangs and placement in the state machine: all ranks or none, waiting that holds
//! nothing and says why, revocation of the whole gang, min/max with a grace period,
//! device kinds never mixed, and only rank 0 commits.

use super::*;
use outloud_core::spec;

const TIMEOUT: u64 = 1_000;

fn scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig {
        lease_timeout_ms: TIMEOUT,
        instance: 0,
    })
}

/// One language phase on `gang` (spec text such as `world_size: 3`, `device: cuda`),
/// its prepare step done by a cpu worker; answers the job and that worker.
fn gang_job(s: &mut Scheduler, gang: &str) -> (String, String) {
    let yaml = format!(
        "name: g\nstorage: /tmp/g\ndata: [{{name: t, kind: generated_text, words: 9}}]\n\
         phases: [{{name: l, kind: language, data: [t], steps: 1, {gang}}}]\n"
    );
    let job = s.submit(spec::parse(&yaml, "g.yaml").unwrap(), 0).unwrap();
    let w = s.register(WorkerInfo::for_tests("a"), 0);
    let a = s.lease(&w, 0).unwrap().unwrap();
    let done = s.complete(
        &w,
        &a.lease,
        Metrics::default(),
        String::new(),
        Default::default(),
        0,
    );
    done.unwrap();
    // It asks for more at once, as a worker does.
    let _ = s.lease(&w, 0).unwrap();
    (job, w)
}

fn worker(s: &mut Scheduler, name: &str, device: &str, now: Millis) -> String {
    let mut info = WorkerInfo::for_tests(name);
    info.device = device.into();
    s.register(info, now)
}

fn train_task(s: &Scheduler, job: &str) -> Task {
    s.job(job).unwrap().step("l").unwrap().tasks[0].clone()
}

#[test]
fn a_gang_is_granted_whole_or_not_at_all_and_waits_holding_nothing() {
    let mut s = scheduler();
    let (job, a) = gang_job(&mut s, "world_size: 3");
    let b = worker(&mut s, "b", "cpu", 10);
    // Two workers for three ranks: nothing is granted, nobody holds anything, and the
    // task says why.
    assert!(s.lease(&a, 20).unwrap().is_none());
    assert!(s.lease(&b, 20).unwrap().is_none());
    let task = train_task(&s, &job);
    assert_eq!(task.state, TaskState::Pending);
    assert!(s.workers().all(|w| w.leases.is_empty()));
    let why = task.waiting.unwrap();
    assert!(why.contains("gang of 3") && why.contains("2 idle"), "{why}");
    // A third: the poll that forms the gang makes its worker rank 0 and holds all three.
    let c = worker(&mut s, "c", "cpu", 30);
    let zero = s.lease(&c, 30).unwrap().unwrap();
    assert_eq!((zero.rank, zero.world_size), (0, 3));
    for w in [&a, &b, &c] {
        assert_eq!(
            s.worker(w).unwrap().leases,
            std::slice::from_ref(&zero.lease.task),
            "{w}"
        );
    }
    // The others are handed their ranks at their next poll, under the same epoch.
    let one = s.lease(&a, 40).unwrap().unwrap();
    let two = s.lease(&b, 40).unwrap().unwrap();
    assert_eq!((one.rank, two.rank), (1, 2));
    assert_eq!(one.lease, zero.lease);
    assert_eq!(one.output_root, zero.output_root);
    assert!(s.lease(&a, 50).unwrap().is_none(), "a rank is handed once");
    // Only rank 0 commits.
    let output = format!("{}/final", one.output_root);
    let refused = s.complete(
        &a,
        &one.lease,
        Metrics::default(),
        output.clone(),
        Default::default(),
        60,
    );
    assert!(matches!(
        refused,
        Err(SchedulerError::NotRankZero { rank: 1, .. })
    ));
    s.complete(
        &c,
        &zero.lease,
        Metrics::default(),
        output,
        Default::default(),
        60,
    )
    .unwrap();
    assert!(s.workers().all(|w| w.leases.is_empty()));
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
}

#[test]
fn losing_one_rank_revokes_the_gang_and_the_next_grant_has_a_new_epoch() {
    let mut s = scheduler();
    let (job, a) = gang_job(&mut s, "world_size: 2");
    let b = worker(&mut s, "b", "cpu", 10);
    let zero = s.lease(&b, 10).unwrap().unwrap();
    let one = s.lease(&a, 10).unwrap().unwrap();
    assert_eq!((zero.rank, one.rank), (0, 1));
    // Rank 1 goes silent: both leases end; rank 0 is told to stop.
    s.heartbeat(&b, &[], 900).unwrap();
    let lost = s.expire(1_500);
    assert_eq!(lost.len(), 1);
    assert_eq!(
        s.heartbeat(&b, std::slice::from_ref(&zero.lease), 1_500)
            .unwrap(),
        std::slice::from_ref(&zero.lease)
    );
    assert!(s.workers().all(|w| w.leases.is_empty()));
    let task = train_task(&s, &job);
    assert_eq!(
        (task.state.clone(), task.lost_leases),
        (TaskState::Pending, 1)
    );
    // Re-formed from the workers there are: b asks again (a, silent, is not idle), then
    // c: a new epoch for every rank.
    assert!(s.lease(&b, 1_500).unwrap().is_none());
    let c = worker(&mut s, "c", "cpu", 1_500);
    let again = s.lease(&c, 1_500).unwrap().unwrap();
    assert_eq!(again.world_size, 2);
    assert!(again.lease.epoch > zero.lease.epoch);
    let history = &s.job(&job).unwrap().history;
    let revoked = history.iter().any(|e| {
        matches!(&e.what, EventKind::LeaseLost { worker, reason, .. }
            if *worker == b && reason.contains("gang was revoked"))
    });
    assert!(revoked, "{history:?}");
}

#[test]
fn a_range_waits_its_grace_then_starts_with_what_it_has() {
    let mut s = scheduler();
    let (job, a) = gang_job(
        &mut s,
        "min_world_size: 2, max_world_size: 4, gang_grace_ms: 500",
    );
    let b = worker(&mut s, "b", "cpu", 0);
    assert!(
        s.lease(&a, 100).unwrap().is_none(),
        "within the grace it waits for 4"
    );
    s.heartbeat(&b, &[], 550).unwrap();
    let zero = s.lease(&a, 700).unwrap().unwrap();
    assert_eq!(zero.world_size, 2);
    assert!(train_task(&s, &job).waiting.is_none());
    // One worker alone never makes a gang of at least 2, however long it waits.
    let mut s = scheduler();
    let (_, lonely) = gang_job(
        &mut s,
        "min_world_size: 2, max_world_size: 4, gang_grace_ms: 500",
    );
    assert!(s.lease(&lonely, 5_000).unwrap().is_none());
}

#[test]
fn device_kinds_are_never_mixed_and_steps_are_placed_by_kind() {
    let mut s = scheduler();
    let (job, cpu) = gang_job(&mut s, "world_size: 2, device: cuda");
    let gpu = worker(&mut s, "gpu", "cuda(0)", 0);
    assert!(
        s.lease(&cpu, 10).unwrap().is_none(),
        "a cpu worker never takes a cuda step"
    );
    assert!(
        s.lease(&gpu, 10).unwrap().is_none(),
        "the idle cpu worker does not count"
    );
    assert!(train_task(&s, &job).waiting.unwrap().contains("Cuda"));
    let gpu2 = worker(&mut s, "gpu2", "cuda(1)", 20);
    let zero = s.lease(&gpu2, 20).unwrap().unwrap();
    assert_eq!(zero.world_size, 2);
    assert!(s.worker(&cpu).unwrap().leases.is_empty());
    assert_eq!(s.worker(&gpu).unwrap().leases.len(), 1);
}

#[test]
fn ranks_meet_under_their_epoch_and_a_revoked_gang_never_meets_the_next() {
    let mut s = scheduler();
    let (job, a) = gang_job(&mut s, "world_size: 2");
    let b = worker(&mut s, "b", "cpu", 10);
    let zero = s.lease(&b, 20).unwrap().unwrap();
    let one = s.lease(&a, 20).unwrap().unwrap();
    assert_eq!((zero.rank, one.rank), (0, 1));
    // Rank 0 publishes first: nothing yet; again (a retry): still nothing.
    for _ in 0..2 {
        let heard = s.rendezvous(&b, &zero.lease, b"zero".to_vec(), 30).unwrap();
        assert_eq!(heard, None);
    }
    let heard = s.rendezvous(&a, &one.lease, b"one".to_vec(), 40).unwrap();
    let both = Some(vec![b"zero".to_vec(), b"one".to_vec()]);
    assert_eq!(heard, both);
    assert_eq!(
        s.rendezvous(&b, &zero.lease, b"zero".to_vec(), 50).unwrap(),
        both
    );
    // A stranger's lease is refused.
    let c = worker(&mut s, "c", "cpu", 50);
    assert!(s.rendezvous(&c, &zero.lease, Vec::new(), 50).is_err());
    // Rank 1 fails: the gang is revoked, its lease refused, and the next gang meets
    // afresh under the new epoch.
    s.fail(
        &a,
        &one.lease,
        "collective timed out".into(),
        Failure::Retryable,
        60,
    )
    .unwrap();
    assert!(s.rendezvous(&b, &zero.lease, b"zero".to_vec(), 70).is_err());
    // Released from the revoked gang, a and b are not idle until they ask again (a
    // dead rank never would): c asking alone forms nothing.
    assert!(s.lease(&c, 65).unwrap().is_none());
    let next = s.lease(&b, 70).unwrap().unwrap();
    assert_eq!((next.rank, next.lease.epoch), (0, zero.lease.epoch + 1));
    assert!(
        s.worker(&a).unwrap().leases.is_empty(),
        "a never asked again"
    );
    let other = s.lease(&c, 80).unwrap().unwrap();
    assert_eq!((other.rank, &other.lease), (1, &next.lease));
    // Nothing of the revoked gang's meeting is carried over.
    assert_eq!(
        s.rendezvous(&b, &next.lease, b"b".to_vec(), 90).unwrap(),
        None
    );
    assert_eq!(train_task(&s, &job).epoch, next.lease.epoch);
}

#[test]
fn a_worker_silent_for_more_than_a_few_polls_is_not_idle() {
    let mut s = Scheduler::new(SchedulerConfig {
        lease_timeout_ms: 60_000,
        instance: 0,
    });
    let (job, a) = gang_job(&mut s, "world_size: 2");
    // b last polled long ago: stopped or dead, its lease timeout not yet past.
    let b = worker(&mut s, "b", "cpu", 0);
    let later = gangs::IDLE_WITHIN_MS + 1;
    assert!(s.lease(&a, later).unwrap().is_none());
    let why = train_task(&s, &job).waiting.unwrap();
    assert!(why.contains("1 idle now"), "{why}");
    // Once it polls again it counts.
    assert!(s.lease(&b, later + 1).unwrap().is_some());
}

#[test]
fn a_step_needing_more_device_memory_than_a_worker_has_is_never_placed_there() {
    let mut s = scheduler();
    let (job, small) = gang_job(&mut s, "device_memory_gb: 2");
    // The prepare worker has 1 GiB: it is not given the training task, which says why.
    assert!(s.lease(&small, 10).unwrap().is_none());
    let why = train_task(&s, &job).waiting.unwrap();
    assert!(why.contains("2.0 GiB of device memory"), "{why}");
    let mut info = WorkerInfo::for_tests("big");
    info.device_memory_bytes = 4 << 30;
    let big = s.register(info, 20);
    let granted = s.lease(&big, 20).unwrap().unwrap();
    assert_eq!(granted.step, "l");
    assert!(train_task(&s, &job).waiting.is_none());
    // A gang needs every rank to fit: one big and one small worker make no gang of 2.
    let mut s = scheduler();
    let (job, small) = gang_job(&mut s, "world_size: 2, device_memory_gb: 2");
    let mut info = WorkerInfo::for_tests("big");
    info.device_memory_bytes = 4 << 30;
    let big = s.register(info, 20);
    assert!(s.lease(&big, 20).unwrap().is_none());
    assert!(s.lease(&small, 20).unwrap().is_none());
    assert_eq!(train_task(&s, &job).state, TaskState::Pending);
}
