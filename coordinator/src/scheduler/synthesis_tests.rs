//! Self-synthesis in the state machine: rounds of sharded synthesize steps and the
//! training steps that read what their shards committed, exactly once each.

use super::*;
use outloud_core::spec;
use outloud_core::task_spec::Work;

fn dreaming(rounds: u32, shards: u32) -> JobSpec {
    spec::parse(&dreaming_yaml(rounds, shards), "dream.yaml").unwrap()
}

fn dreaming_yaml(rounds: u32, shards: u32) -> String {
    format!(
        "\
name: dream
storage: /tmp/d
data:
  - {{name: book, kind: picture_book, pictures: 40}}
model: {{preset: tiny, vision: {{encoder: vit, image_size: 16, patch_size: 8, d_model: 32, n_layers: 1, n_heads: 2}}}}
phases:
  - {{name: language, kind: language, data: [book], steps: 1}}
  - {{name: captions, kind: vision_language, data: [book], steps: 1}}
  - name: dreaming
    kind: self_synthesis
    rounds: {rounds}
    synthesis: {{images: book, shards: {shards}}}
    data: [{{source: dreaming, weight: 0.5}}, {{source: book, weight: 0.5}}]
    steps: 1
  - {{name: tasks, kind: tasks, data: [book], steps: 1}}
"
    )
}

fn scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig {
        lease_timeout_ms: 1_000,
        instance: 0,
    })
}

fn finish(s: &mut Scheduler, w: &str, a: &Assignment, output: &str) {
    finish_at(s, w, a, output, 1);
}

/// What the scheduler answers a commit of `a`'s own captions by `w` at `now`.
fn commit_of(
    s: &mut Scheduler,
    w: &str,
    a: &Assignment,
    now: Millis,
) -> Result<(), SchedulerError> {
    commit(s, w, a, "captions.jsonl", now)
}

fn commit(
    s: &mut Scheduler,
    w: &str,
    a: &Assignment,
    output: &str,
    now: Millis,
) -> Result<(), SchedulerError> {
    let output = format!("{}/{output}", a.output_root);
    s.complete(
        w,
        &a.lease,
        Metrics::default(),
        output,
        Default::default(),
        now,
    )
}

fn finish_at(s: &mut Scheduler, w: &str, a: &Assignment, output: &str, now: Millis) {
    commit(s, w, a, output, now).unwrap();
}

#[test]
fn rounds_expand_into_synthesize_and_train_steps() {
    let mut s = scheduler();
    let job = s.submit(dreaming(2, 3), 0).unwrap();
    let job = s.job(&job).unwrap();
    let steps: Vec<(&str, usize)> = job
        .steps
        .iter()
        .map(|st| (st.name.as_str(), st.tasks.len()))
        .collect();
    assert_eq!(
        steps,
        [
            ("prepare", 1),
            ("language", 1),
            ("captions", 1),
            ("dreaming.r1.synthesize", 3),
            ("dreaming.r1", 1),
            ("dreaming.r2.synthesize", 3),
            ("dreaming", 1),
            ("tasks", 1),
        ]
    );
    // Round 2 dreams with round 1's model; tasks start from the last round's.
    let source = |name: &str| {
        job.checkpoint_source(job.steps.iter().position(|st| st.name == name).unwrap())
            .map(|st| st.name.as_str())
    };
    assert_eq!(source("dreaming.r1.synthesize"), Some("captions"));
    assert_eq!(source("dreaming.r1"), Some("captions"));
    assert_eq!(source("dreaming.r2.synthesize"), Some("dreaming.r1"));
    assert_eq!(source("dreaming"), Some("dreaming.r1"));
    assert_eq!(source("tasks"), Some("dreaming"));
}

#[test]
fn training_reads_exactly_the_outputs_each_shard_committed() {
    let mut s = scheduler();
    s.submit(dreaming(1, 4), 0).unwrap();
    let (w1, w2) = (
        s.register(WorkerInfo::for_tests("a"), 0),
        s.register(WorkerInfo::for_tests("b"), 0),
    );
    for _ in 0..3 {
        let a = s.lease(&w1, 1).unwrap().unwrap();
        finish(&mut s, &w1, &a, "final");
    }
    // Four shards leased at once on two workers.
    let shards: Vec<(String, Assignment)> = (0..4)
        .map(|i| {
            let w = if i % 2 == 0 { &w1 } else { &w2 };
            (w.clone(), s.lease(w, 2).unwrap().unwrap())
        })
        .collect();
    assert!(
        shards
            .iter()
            .all(|(_, a)| matches!(a.spec.work, Work::Synthesize(_)))
    );
    assert!(
        s.lease(&w1, 2).unwrap().is_none(),
        "training waits for every shard"
    );
    // Shard 0's first lease expires while its worker goes on (a zombie); the shard is
    // leased again and committed by the new lease. The zombie's commit is refused.
    let (zombie_worker, zombie) = shards[0].clone();
    s.heartbeat(&w2, &[], 1_500).unwrap();
    for (w, a) in &shards[1..] {
        if *w == w2 {
            finish(&mut s, w, a, "captions.jsonl");
        }
    }
    s.expire(2_100);
    let w3 = s.register(WorkerInfo::for_tests("c"), 2_100);
    let mut again = Vec::new();
    while let Some(a) = s.lease(&w3, 2_100).unwrap() {
        again.push(a);
    }
    assert!(again.iter().any(|a| a.lease.task == zombie.lease.task));
    for a in &again {
        finish(&mut s, &w3, a, "captions.jsonl");
    }
    let late = commit_of(&mut s, &zombie_worker, &zombie, 2_200);
    assert!(matches!(late, Err(SchedulerError::StaleLease { .. })));
    // The training step gets one committed file per shard: the newer lease's for shard 0.
    let train = s.lease(&w3, 2_300).unwrap().unwrap();
    assert_eq!(train.step, "dreaming");
    let Work::Train(spec) = &train.spec.work else {
        panic!("{:?}", train.spec.work)
    };
    let dreams = spec.data.iter().find(|d| d.name == "dreaming").unwrap();
    assert_eq!(dreams.parts.len(), 4, "{:?}", dreams.parts);
    assert_eq!(dreams.weight, Some(0.5));
    let shard_zero = dreams
        .parts
        .iter()
        .find(|p| p.contains("/shard-0/"))
        .unwrap();
    assert!(shard_zero.contains("/attempt-2/"), "{shard_zero}");
    let distinct: std::collections::BTreeSet<_> = dreams.parts.iter().collect();
    assert_eq!(distinct.len(), 4);
}

#[test]
fn seeds_run_every_branch_once_per_seed_apart() {
    let mut spec = dreaming(1, 2);
    spec.seeds = vec![4, 9];
    spec.phases[1].seed = 100;
    let mut s = scheduler();
    let job = s.submit(spec, 0).unwrap();
    let job = s.job(&job).unwrap();
    let names: Vec<&str> = job.steps.iter().map(|st| st.name.as_str()).collect();
    let run = |seed| {
        [
            "language",
            "captions",
            "dreaming.synthesize",
            "dreaming",
            "tasks",
        ]
        .map(|n| format!("seed{seed}/{n}"))
    };
    let expected: Vec<String> = std::iter::once("prepare".to_string())
        .chain(run(4))
        .chain(run(9))
        .collect();
    assert_eq!(names, expected);
    // Each run reads the one prepare step and only its own steps, at its own seeds.
    for (index, step) in job.steps.iter().enumerate().skip(1) {
        let seed = step.seed.unwrap();
        assert!(step.name.starts_with(&format!("seed{seed}/")));
        for input in &step.inputs {
            let read = &job.steps[input.step()];
            assert!(read.name == "prepare" || read.seed == Some(seed), "{index}");
        }
        let phase_seed = match &step.work.work {
            Work::Train(t) => t.seed,
            Work::Synthesize(y) => y.seed,
            _ => continue,
        };
        let own = if step.name.ends_with("/captions") {
            100
        } else {
            0
        };
        assert_eq!(phase_seed, own + seed, "{}", step.name);
    }
    // Run 9's tasks start from run 9's dreaming.
    let tasks = names.iter().position(|n| *n == "seed9/tasks").unwrap();
    assert_eq!(job.checkpoint_source(tasks).unwrap().name, "seed9/dreaming");
}

#[test]
fn seeds_are_checked() {
    let yaml = format!("seeds: [1, 2, 1]\n{}", dreaming_yaml(1, 1));
    let error = spec::parse(&yaml, "s.yaml").unwrap_err().to_string();
    assert!(
        error.contains("s.yaml:1:") && error.contains("seeds[2]: seed 1 is listed twice"),
        "{error}"
    );
    let many: Vec<String> = (0..17).map(|s| s.to_string()).collect();
    let yaml = format!("seeds: [{}]\n{}", many.join(", "), dreaming_yaml(1, 1));
    let error = spec::parse(&yaml, "s.yaml").unwrap_err().to_string();
    assert!(
        error.contains("seeds: must be at most 16, got 17 seeds"),
        "{error}"
    );
}

/// Three workers each leasing one of three synthesize shards at `t`, after the steps
/// before them ran.
fn three_shards_leased(s: &mut Scheduler, t: Millis) -> Vec<(String, Assignment)> {
    s.submit(dreaming(1, 3), 0).unwrap();
    let workers: Vec<String> = ["a", "b", "c"]
        .map(|h| s.register(WorkerInfo::for_tests(h), 0))
        .into();
    for _ in 0..3 {
        let a = s.lease(&workers[0], 1).unwrap().unwrap();
        finish(s, &workers[0], &a, "final");
    }
    workers
        .into_iter()
        .map(|w| {
            let a = s.lease(&w, t).unwrap().unwrap();
            assert!(matches!(a.spec.work, Work::Synthesize(_)));
            (w, a)
        })
        .collect()
}

#[test]
fn a_straggler_gets_a_duplicate_and_the_first_commit_wins() {
    let mut s = scheduler();
    let leased = three_shards_leased(&mut s, 10);
    let (slow, straggler) = leased[0].clone();
    let alive = |s: &mut Scheduler, t| {
        for (w, _) in &leased {
            s.heartbeat(w, &[], t).unwrap();
        }
    };
    // Shards 1 and 2 take 900 ms; nothing straggles before 2 s (the minimum).
    alive(&mut s, 900);
    finish_at(&mut s, &leased[1].0, &leased[1].1, "captions.jsonl", 910);
    finish_at(&mut s, &leased[2].0, &leased[2].1, "captions.jsonl", 910);
    let idle = leased[2].0.clone();
    assert!(s.lease(&idle, 1_500).unwrap().is_none());
    assert!(
        s.lease(&slow, 2_500).unwrap().is_none(),
        "never its own duplicate"
    );
    // Past 2 s, the idle worker gets a duplicate of shard 0 in a folder of its own.
    alive(&mut s, 2_500);
    let duplicate = s.lease(&idle, 2_500).unwrap().unwrap();
    assert_eq!(duplicate.lease.task, straggler.lease.task);
    assert_eq!(duplicate.lease.epoch, straggler.lease.epoch + 1);
    assert_ne!(duplicate.output_root, straggler.output_root);
    assert!(
        s.lease(&leased[1].0, 2_500).unwrap().is_none(),
        "one duplicate at most"
    );
    // The duplicate commits first; the straggler is told to stop and its commit is
    // refused.
    finish_at(&mut s, &idle, &duplicate, "captions.jsonl", 2_600);
    let told = s
        .heartbeat(&slow, std::slice::from_ref(&straggler.lease), 2_600)
        .unwrap();
    assert_eq!(told, std::slice::from_ref(&straggler.lease));
    let late = commit_of(&mut s, &slow, &straggler, 2_700);
    assert!(matches!(late, Err(SchedulerError::StaleLease { .. })));
    let job = s.jobs().next().unwrap();
    let task = job.task(&straggler.lease.task).unwrap();
    assert_eq!(
        task.output(),
        Some(format!("{}/captions.jsonl", duplicate.output_root).as_str())
    );
    assert_eq!(task.took_ms, Some(100));
    assert!(s.worker(&slow).unwrap().leases.is_empty());
    let step = job.step("dreaming.synthesize").unwrap();
    assert_eq!(step.state, RunState::Succeeded);
    let lost = job.history.iter().any(|e| {
        matches!(&e.what, EventKind::LeaseLost { worker, reason, .. }
            if *worker == slow && reason.contains("committed the task first"))
    });
    assert!(lost, "{:?}", job.history);
}

/// Shards 1 and 2 committed at once; at 2.5 s the idle worker got a duplicate of shard
/// 0: (straggler's worker, its lease), (duplicate's worker, its lease).
fn duplicated() -> (Scheduler, [(String, Assignment); 2]) {
    let mut s = scheduler();
    let leased = three_shards_leased(&mut s, 10);
    finish(&mut s, &leased[1].0, &leased[1].1, "captions.jsonl");
    finish(&mut s, &leased[2].0, &leased[2].1, "captions.jsonl");
    s.heartbeat(&leased[0].0, &[], 2_500).unwrap();
    let idle = leased[2].0.clone();
    let duplicate = s.lease(&idle, 2_500).unwrap().unwrap();
    (s, [leased[0].clone(), (idle, duplicate)])
}

#[test]
fn losing_one_of_two_attempts_leaves_the_other_running() {
    // The duplicate's worker dies: the straggler goes on and commits.
    let (mut s, [(slow, straggler), (idle, duplicate)]) = duplicated();
    s.fail(
        &idle,
        &duplicate.lease,
        "bad picture".into(),
        Failure::Fatal,
        2_600,
    )
    .unwrap();
    assert_eq!(s.jobs().next().unwrap().state, RunState::Running);
    finish(&mut s, &slow, &straggler, "captions.jsonl");
    let task = s
        .jobs()
        .next()
        .unwrap()
        .task(&straggler.lease.task)
        .unwrap()
        .clone();
    assert!(task.output().unwrap().starts_with(&straggler.output_root));
    assert_eq!(task.lost_leases, 0);

    // The straggler's worker dies: the duplicate takes its place and commits.
    let (mut s, [(_, straggler), (idle, duplicate)]) = duplicated();
    s.heartbeat(&idle, &[], 3_400).unwrap();
    let lost = s.expire(3_600);
    assert_eq!(lost, std::slice::from_ref(&straggler.lease));
    let other = s.register(WorkerInfo::for_tests("d"), 3_600);
    assert!(
        s.lease(&other, 3_600).unwrap().is_none(),
        "nothing to lease again"
    );
    finish(&mut s, &idle, &duplicate, "captions.jsonl");
    let job = s.jobs().next().unwrap();
    let task = job.task(&straggler.lease.task).unwrap();
    assert!(task.output().unwrap().starts_with(&duplicate.output_root));
    assert_eq!(task.epoch, duplicate.lease.epoch);
}

#[test]
fn a_retried_shard_never_reuses_a_dropped_duplicates_epoch() {
    let (mut s, [(slow, straggler), (idle, duplicate)]) = duplicated();
    let failure = |s: &mut Scheduler, w: &str, a: &Assignment, how| {
        s.fail(w, &a.lease, "boom".into(), how, 2_600).unwrap();
    };
    failure(&mut s, &idle, &duplicate, Failure::Retryable);
    failure(&mut s, &slow, &straggler, Failure::Fatal);
    let job = s.jobs().next().unwrap().id.clone();
    s.retry(&job, None, 2_700).unwrap();
    let again = s.lease(&idle, 2_700).unwrap().unwrap();
    assert_eq!(again.lease.task, straggler.lease.task);
    assert!(again.lease.epoch > duplicate.lease.epoch, "{again:?}");
    assert_ne!(again.output_root, duplicate.output_root);
}
