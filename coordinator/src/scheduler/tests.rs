//! The state machine driven directly, without a network or a clock.

use super::*;
use outloud_core::spec;
use outloud_core::task_spec::Work;

const TIMEOUT: u64 = 1_000;

fn spec(phases: &[(&str, u32)]) -> JobSpec {
    let mut yaml = String::from("name: test\nstorage: /tmp/x\nphases:\n");
    for (name, shards) in phases {
        yaml += &format!("  - {{name: {name}, kind: noop, shards: {shards}, max_attempts: 2}}\n");
    }
    spec::parse(&yaml, "test.yaml").unwrap()
}

pub(crate) fn scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig {
        lease_timeout_ms: TIMEOUT,
        instance: 0,
    })
}

pub(crate) fn worker(s: &mut Scheduler, name: &str) -> String {
    s.register(WorkerInfo::for_tests(name), 0)
}

pub(super) fn evaluates(a: &Assignment) -> bool {
    matches!(a.spec.work, Work::Evaluate(_))
}

/// What a task commits: its final checkpoint, in its attempt's folder.
pub(crate) fn output(a: &Assignment) -> String {
    format!("{}/final", a.output_root)
}

pub(crate) fn done(s: &mut Scheduler, w: &str, a: &Assignment, now: Millis) {
    s.complete(
        w,
        &a.lease,
        Metrics::default(),
        output(a),
        Default::default(),
        now,
    )
    .unwrap();
}

#[test]
fn phases_run_in_order_and_the_job_succeeds() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 2), ("two", 1)]), 0).unwrap();
    let a = s.lease(&w, 1).unwrap().unwrap();
    let b = s.lease(&w, 1).unwrap().unwrap();
    assert_eq!((a.lease.task.step, b.lease.task.step), (0, 0));
    // Step two waits for both shards of phase one.
    assert!(s.lease(&w, 2).unwrap().is_none());
    done(&mut s, &w, &a, 3);
    assert!(s.lease(&w, 3).unwrap().is_none());
    done(&mut s, &w, &b, 4);
    let c = s.lease(&w, 5).unwrap().unwrap();
    assert_eq!(c.step, "two");
    assert_eq!(
        c.input_checkpoint.as_deref(),
        Some(&*format!("/tmp/x/jobs/{job}/one/shard-0/attempt-1/final"))
    );
    assert_eq!(s.job(&job).unwrap().state, RunState::Running);
    done(&mut s, &w, &c, 6);
    let j = s.job(&job).unwrap();
    assert_eq!(j.state, RunState::Succeeded);
    assert!(j.steps.iter().all(|p| p.state == RunState::Succeeded));
    assert_eq!(j.history.last().unwrap().what, EventKind::JobSucceeded);
}

#[test]
fn a_silent_worker_loses_its_lease_and_its_late_reports_are_refused() {
    let mut s = scheduler();
    let (w1, w2) = (worker(&mut s, "a"), worker(&mut s, "b"));
    let job = s.submit(spec(&[("one", 1)]), 0).unwrap();
    let first = s.lease(&w1, 0).unwrap().unwrap();
    let checkpoint = Some(CheckpointRef {
        url: format!("{}/checkpoints/step-10", first.output_root),
        step: 10,
    });
    let metrics = Metrics {
        step: 10,
        ..Metrics::default()
    };
    s.report_progress(&w1, &first.lease, metrics, checkpoint.clone(), None, 500)
        .unwrap();
    s.heartbeat(&w2, &[], 1_400).unwrap();
    // w1 last spoke at 500: at 1_501 its lease is gone, w2 is still fine.
    assert!(s.expire(1_500).is_empty());
    let lost = s.expire(1_501);
    assert_eq!(lost, vec![first.lease.clone()]);
    let second = s.lease(&w2, 1_600).unwrap().unwrap();
    assert_eq!(second.lease.epoch, first.lease.epoch + 1);
    assert_eq!(second.resume_checkpoint, checkpoint.map(|c| c.url));
    assert_ne!(
        second.output_root, first.output_root,
        "each lease writes apart"
    );
    // The zombie wakes up: every report under its old epoch is refused.
    let stale = s.report_progress(&w1, &first.lease, Metrics::default(), None, None, 1_700);
    assert!(matches!(stale, Err(SchedulerError::StaleLease { .. })));
    let stale = s.complete(
        &w1,
        &first.lease,
        Metrics::default(),
        output(&first),
        Default::default(),
        1_700,
    );
    assert!(matches!(stale, Err(SchedulerError::StaleLease { .. })));
    // Nor may the new lease commit (or report) what is not in its own folder.
    for elsewhere in [
        output(&first),
        format!("{}/../attempt-9", second.output_root),
    ] {
        let outside = s.complete(
            &w2,
            &second.lease,
            Metrics::default(),
            elsewhere.clone(),
            Default::default(),
            1_750,
        );
        assert!(
            matches!(outside, Err(SchedulerError::OutsideAttempt { .. })),
            "{elsewhere}: {outside:?}"
        );
        let elsewhere = CheckpointRef {
            url: elsewhere.clone(),
            step: 10,
        };
        let progress = s.report_progress(&w2, &second.lease, metrics, Some(elsewhere), None, 1_750);
        assert!(matches!(
            progress,
            Err(SchedulerError::OutsideAttempt { .. })
        ));
    }
    assert_eq!(
        s.heartbeat(&w1, std::slice::from_ref(&first.lease), 1_700)
            .unwrap(),
        vec![first.lease]
    );
    done(&mut s, &w2, &second, 1_800);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
}

#[test]
fn heartbeats_keep_a_lease_alive() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    s.submit(spec(&[("one", 1)]), 0).unwrap();
    let a = s.lease(&w, 0).unwrap().unwrap();
    for now in (500..10_000).step_by(500) {
        assert!(
            s.heartbeat(&w, std::slice::from_ref(&a.lease), now)
                .unwrap()
                .is_empty()
        );
        assert!(s.expire(now).is_empty());
    }
}

#[test]
fn a_task_out_of_attempts_fails_the_job() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 2)]), 0).unwrap();
    let a = s.lease(&w, 0).unwrap().unwrap();
    s.fail(&w, &a.lease, "oom".into(), Failure::Retryable, 1)
        .unwrap();
    let again = s.lease(&w, 2).unwrap().unwrap();
    // The other shard was queued before the retry.
    assert_ne!(again.lease.task, a.lease.task);
    let retry = s.lease(&w, 2).unwrap().unwrap();
    assert_eq!(retry.lease.task, a.lease.task);
    s.fail(&w, &retry.lease, "oom again".into(), Failure::Retryable, 3)
        .unwrap();
    let j = s.job(&job).unwrap();
    assert_eq!(j.state, RunState::Failed);
    assert!(
        j.error.as_deref().unwrap().contains("oom again"),
        "{:?}",
        j.error
    );
    // The other shard's lease was revoked.
    assert_eq!(
        s.heartbeat(&w, std::slice::from_ref(&again.lease), 4)
            .unwrap(),
        vec![again.lease]
    );
    assert!(s.worker(&w).unwrap().leases.is_empty());
}

#[test]
fn a_fatal_failure_fails_the_job_at_once() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 1)]), 0).unwrap();
    let a = s.lease(&w, 0).unwrap().unwrap();
    s.fail(&w, &a.lease, "bad data".into(), Failure::Fatal, 1)
        .unwrap();
    assert_eq!(s.job(&job).unwrap().state, RunState::Failed);
}

#[test]
fn cancel_revokes_leases_and_drops_ready_tasks() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 3)]), 0).unwrap();
    let a = s.lease(&w, 0).unwrap().unwrap();
    s.cancel(&job, 1).unwrap();
    assert_eq!(s.job(&job).unwrap().state, RunState::Cancelled);
    assert!(s.lease(&w, 2).unwrap().is_none());
    assert_eq!(
        s.heartbeat(&w, std::slice::from_ref(&a.lease), 2).unwrap(),
        vec![a.lease]
    );
    assert!(matches!(
        s.cancel(&job, 3),
        Err(SchedulerError::JobFinished(_))
    ));
}

#[test]
fn only_a_finished_job_no_other_job_imports_from_is_deleted() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 1)]), 0).unwrap();
    let running = s.delete(&job).unwrap_err().to_string();
    assert!(running.contains("outloud cancel"), "{running}");
    let a = s.lease(&w, 1).unwrap().unwrap();
    done(&mut s, &w, &a, 2);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);

    // Another job starts from its checkpoint: deleting it waits until that one succeeds.
    let mut importer = spec(&[("two", 1)]);
    importer.phases[0].init_from = Some(format!(
        "{}/one/attempt-1/final",
        s.job(&job).unwrap().folder()
    ));
    let importer = s.submit(importer, 3).unwrap();
    let used = s.delete(&job).unwrap_err().to_string();
    assert!(used.contains(&format!("job `{importer}`")), "{used}");
    s.cancel(&importer, 4).unwrap();
    assert!(
        s.delete(&job).is_err(),
        "a cancelled importer may be retried"
    );
    s.delete(&importer).unwrap();
    s.delete(&job).unwrap();
    assert!(s.job(&job).is_none());
    let deleted: Vec<String> = s
        .take_changes()
        .deleted
        .into_iter()
        .map(|d| d.job)
        .collect();
    assert_eq!(deleted, [importer, job]);
}

#[test]
fn restore_continues_where_the_last_process_stopped() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 2), ("two", 1)]), 0).unwrap();
    let a = s.lease(&w, 0).unwrap().unwrap();
    done(&mut s, &w, &a, 1);
    let b = s.lease(&w, 2).unwrap().unwrap();
    let jobs: Vec<Job> = s.jobs().cloned().collect();
    let workers: Vec<Worker> = s.workers().cloned().collect();
    let mut s = Scheduler::restore(s.config, jobs, workers, s.counters(), 50_000);
    // The live lease survives the restart and its worker gets a fresh timeout.
    assert!(s.expire(50_500).is_empty());
    done(&mut s, &w, &b, 50_600);
    let c = s.lease(&w, 50_700).unwrap().unwrap();
    assert_eq!(c.step, "two");
    done(&mut s, &w, &c, 50_800);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
    let next = s.submit(spec(&[("one", 1)]), 50_900).unwrap();
    assert_ne!(next, job, "ids are not reused after a restart");
}

#[test]
fn changes_name_exactly_what_moved() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 1)]), 0).unwrap();
    s.take_changes();
    s.heartbeat(&w, &[], 1).unwrap();
    assert!(s.take_changes().is_empty(), "heartbeats are not written");
    let a = s.lease(&w, 2).unwrap().unwrap();
    let changes = s.take_changes();
    assert_eq!(
        changes.tasks.into_iter().collect::<Vec<_>>(),
        vec![a.lease.task.clone()]
    );
    assert!(changes.jobs.contains(&job), "pending -> running");
    assert_eq!(changes.events.len(), 1);
}

#[test]
fn many_workers_drain_many_tasks_exactly_once() {
    let mut s = scheduler();
    let workers: Vec<String> = (0..10).map(|i| worker(&mut s, &format!("w{i}"))).collect();
    let job = s.submit(spec(&[("one", 500)]), 0).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut now = 1;
    'outer: loop {
        for w in &workers {
            now += 1;
            match s.lease(w, now).unwrap() {
                Some(a) => {
                    assert!(seen.insert(a.lease.task.clone()), "leased twice");
                    done(&mut s, w, &a, now);
                }
                None => break 'outer,
            }
        }
    }
    assert_eq!(seen.len(), 500);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
}

#[test]
fn tasks_handed_back_by_stopping_workers_do_not_use_up_attempts() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(&[("one", 1)]), 0).unwrap();
    // max_attempts is 2; five rolling restarts later the task still runs.
    for now in 0..5 {
        let a = s.lease(&w, now).unwrap().unwrap();
        s.fail(
            &w,
            &a.lease,
            "worker stopping".into(),
            Failure::HandedBack,
            now,
        )
        .unwrap();
    }
    let a = s.lease(&w, 10).unwrap().unwrap();
    assert_eq!(a.lease.epoch, 6);
    assert_eq!(s.job(&job).unwrap().steps[0].tasks[0].lost_leases, 0);
    done(&mut s, &w, &a, 11);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
}

#[test]
fn a_fatal_failure_releases_the_lease_and_expiry_never_revives_the_task() {
    let mut s = scheduler();
    let job = s.submit(spec(&[("one", 2)]), 0).unwrap();
    let w = worker(&mut s, "w");
    let a = s.lease(&w, 1).unwrap().unwrap();
    s.fail(&w, &a.lease, "bad data".into(), Failure::Fatal, 2)
        .unwrap();
    assert!(s.worker(&w).unwrap().leases.is_empty());
    s.expire(10 * TIMEOUT);
    let task = s.job(&job).unwrap().task(&a.lease.task).unwrap();
    assert!(matches!(task.state, TaskState::Failed { .. }), "{task:?}");
}

#[test]
fn departed_workers_are_forgotten_once_they_hold_nothing() {
    let mut s = scheduler();
    let (gone, busy) = (worker(&mut s, "gone"), worker(&mut s, "busy"));
    s.submit(spec(&[("one", 1)]), 0).unwrap();
    let held = s.lease(&busy, 1).unwrap().unwrap();
    let forget = TIMEOUT * FORGET_AFTER_TIMEOUTS;
    // `busy` keeps heartbeating; `gone` is silent.
    for now in (100..=forget + 200).step_by(100) {
        s.heartbeat(&busy, std::slice::from_ref(&held.lease), now)
            .unwrap();
        s.expire(now);
    }
    assert!(s.worker(&gone).is_none(), "forgotten");
    assert!(s.worker(&busy).is_some());
    assert!(
        s.take_changes().workers.contains(&gone),
        "the store deletes it"
    );
    assert!(matches!(
        s.lease(&gone, forget + 300),
        Err(SchedulerError::UnknownWorker(_))
    ));
}
