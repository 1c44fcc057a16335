//! The graph of steps in the state machine: eval steps beside the next phase, sharded
//! steps and the steps that read them, branches, and retries.

use super::tests::{done, evaluates, output, scheduler, worker};
use super::*;
use outloud_core::spec;

fn evaluated_spec() -> JobSpec {
    let yaml = "\
name: test
storage: /tmp/x
data: [{name: t, kind: generated_text, words: 100}]
evaluation: {benchmarks: [{path: /tmp/eval}], max_attempts: 1}
phases:
  - {name: one, kind: language, data: [t], steps: 1}
  - {name: two, kind: language, data: [t], steps: 1, eval: false}
  - {name: three, kind: language, data: [t], steps: 1}
";
    spec::parse(yaml, "test.yaml").unwrap()
}

#[test]
fn eval_steps_follow_their_phase_beside_the_next_one() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(evaluated_spec(), 0).unwrap();
    let names: Vec<&str> = s
        .job(&job)
        .unwrap()
        .steps
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["prepare", "one", "one.eval", "two", "three", "three.eval"]
    );
    // Data first: nothing else starts before the prepare step has succeeded.
    let prepare = s.lease(&w, 1).unwrap().unwrap();
    assert_eq!(prepare.step, "prepare");
    assert!(s.lease(&w, 1).unwrap().is_none());
    done(&mut s, &w, &prepare, 1);
    let one = s.lease(&w, 1).unwrap().unwrap();
    assert!(s.lease(&w, 1).unwrap().is_none());
    done(&mut s, &w, &one, 2);
    // The eval step and the next phase are ready together; both start from phase one's output.
    let mut ready = [
        s.lease(&w, 3).unwrap().unwrap(),
        s.lease(&w, 3).unwrap().unwrap(),
    ];
    ready.sort_by_key(|a| a.step.clone());
    let (eval, two) = (&ready[0], &ready[1]);
    assert_eq!((eval.step.as_str(), evaluates(eval)), ("one.eval", true));
    assert_eq!((two.step.as_str(), evaluates(two)), ("two", false));
    assert_eq!(two.spec.train_spec().unwrap().steps, 1);
    let one_output = output(&one);
    assert_eq!(eval.input_checkpoint.as_deref(), Some(&*one_output));
    assert_eq!(two.input_checkpoint.as_deref(), Some(&*one_output));
    // Step three waits for two, never for an eval step.
    done(&mut s, &w, two, 4);
    let three = s.lease(&w, 5).unwrap().unwrap();
    assert_eq!(three.step, "three");
    assert_eq!(three.input_checkpoint, Some(output(two)));
    done(&mut s, &w, &three, 6);
    let last_eval = s.lease(&w, 7).unwrap().unwrap();
    assert_eq!(last_eval.step, "three.eval");
    assert_eq!(last_eval.input_checkpoint, Some(output(&three)));
    done(&mut s, &w, &last_eval, 8);
    // Every phase is done but one.eval: the job waits for it.
    assert_eq!(s.job(&job).unwrap().state, RunState::Running);
    done(&mut s, &w, &ready[0], 9);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
}

#[test]
fn a_failing_eval_step_is_recorded_and_training_goes_on() {
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(evaluated_spec(), 0).unwrap();
    let prepare = s.lease(&w, 1).unwrap().unwrap();
    done(&mut s, &w, &prepare, 1);
    let one = s.lease(&w, 1).unwrap().unwrap();
    done(&mut s, &w, &one, 2);
    let mut later = Vec::new();
    let eval = loop {
        let a = s.lease(&w, 3).unwrap().unwrap();
        if evaluates(&a) {
            break a;
        }
        later.push(a);
    };
    s.fail(&w, &eval.lease, "oom".into(), Failure::Retryable, 4)
        .unwrap();
    // max_attempts: 1 in `evaluation`: one lost lease fails the step, not the job.
    let j = s.job(&job).unwrap();
    assert_eq!(
        (j.state, j.steps[2].state),
        (RunState::Running, RunState::Failed)
    );
    for a in later {
        done(&mut s, &w, &a, 5);
    }
    while let Some(a) = s.lease(&w, 6).unwrap() {
        done(&mut s, &w, &a, 7);
    }
    let j = s.job(&job).unwrap();
    assert_eq!(j.state, RunState::Succeeded);
    assert_eq!(j.steps[2].state, RunState::Failed);
    assert!(
        j.steps
            .iter()
            .filter(|p| !p.is_evaluation())
            .all(|p| p.state == RunState::Succeeded)
    );
}

fn parsed(yaml: &str) -> JobSpec {
    spec::parse(yaml, "test.yaml").unwrap()
}

#[test]
fn shards_spread_over_workers_and_a_step_reading_them_waits_for_all() {
    let mut s = scheduler();
    let job = s
        .submit(
            parsed(
                "name: t\nstorage: /tmp/x\ndata:\n\
                 - {name: a, kind: generated_text, words: 9}\n\
                 - {name: b, kind: generated_text, words: 9}\n\
                 - {name: c, kind: generated_text, words: 9}\n\
                 phases: [{name: one, kind: language, data: [a, b, c], steps: 1}]\n",
            ),
            0,
        )
        .unwrap();
    let workers: Vec<String> = ["a", "b", "c"].iter().map(|n| worker(&mut s, n)).collect();
    let shards: Vec<Assignment> = workers
        .iter()
        .map(|w| s.lease(w, 1).unwrap().expect("a shard for every worker"))
        .collect();
    let mut leased: Vec<u32> = shards.iter().map(|a| a.lease.task.shard).collect();
    leased.sort();
    assert_eq!(leased, [0, 1, 2], "each shard leased once");
    assert!(shards.iter().all(|a| a.step == "prepare"));
    for (w, a) in workers.iter().zip(&shards).take(2) {
        done(&mut s, w, a, 2);
        assert!(
            s.lease(w, 2).unwrap().is_none(),
            "`one` waits for every shard"
        );
    }
    // A shard commits once: a second completion is refused.
    let again = s.complete(
        &workers[0],
        &shards[0].lease,
        Metrics::default(),
        "x".into(),
        Default::default(),
        3,
    );
    assert!(matches!(again, Err(SchedulerError::StaleLease { .. })));
    done(&mut s, &workers[2], &shards[2], 3);
    let one = s.lease(&workers[0], 4).unwrap().unwrap();
    assert_eq!(one.step, "one");
    let prepare = &s.job(&job).unwrap().steps[0];
    let outputs: Vec<&TaskState> = prepare.tasks.iter().map(|t| &t.state).collect();
    assert!(
        outputs
            .iter()
            .all(|o| matches!(o, TaskState::Succeeded { .. })),
        "{outputs:?}"
    );
}

/// root -> a -> a2, root -> b: a tree of no-op phases.
fn tree() -> JobSpec {
    parsed(
        "name: t\nstorage: /tmp/x\nphases:\n\
         - {name: root, kind: noop}\n\
         - {name: a, kind: noop}\n\
         - {name: a2, kind: noop, max_attempts: 1}\n\
         - {name: b, kind: noop, from: root}\n",
    )
}

#[test]
fn branches_lease_in_parallel() {
    let mut s = scheduler();
    s.submit(tree(), 0).unwrap();
    let (w1, w2) = (worker(&mut s, "1"), worker(&mut s, "2"));
    let root = s.lease(&w1, 1).unwrap().unwrap();
    assert!(s.lease(&w2, 1).unwrap().is_none());
    done(&mut s, &w1, &root, 2);
    let first = s.lease(&w1, 3).unwrap().unwrap();
    let second = s.lease(&w2, 3).unwrap().unwrap();
    let mut both = [first.step.clone(), second.step.clone()];
    both.sort();
    assert_eq!(both, ["a", "b"], "both branches run at once");
    assert_eq!(first.input_checkpoint, second.input_checkpoint);
    done(&mut s, &w1, &first, 4);
    done(&mut s, &w2, &second, 4);
    let a2 = s.lease(&w1, 5).unwrap().unwrap();
    assert_eq!(a2.step, "a2");
    assert_eq!(
        a2.input_step.as_deref(),
        Some("a"),
        "whose manifest the worker checks"
    );
    let a = if first.step == "a" { &first } else { &second };
    assert_eq!(a2.input_checkpoint, Some(output(a)));
}

#[test]
fn a_retried_step_runs_again_with_its_dependants_and_nothing_else() {
    let mut s = scheduler();
    let job = s.submit(tree(), 0).unwrap();
    let w = worker(&mut s, "w");
    let root = s.lease(&w, 1).unwrap().unwrap();
    done(&mut s, &w, &root, 2);
    let mut ready = [
        s.lease(&w, 3).unwrap().unwrap(),
        s.lease(&w, 3).unwrap().unwrap(),
    ];
    ready.sort_by_key(|a| a.step.clone());
    let [a, b] = ready;
    done(&mut s, &w, &b, 4);
    s.fail(&w, &a.lease, "disk full".into(), Failure::Fatal, 6)
        .unwrap();
    let failed = s.job(&job).unwrap();
    let states: Vec<RunState> = failed.steps.iter().map(|st| st.state).collect();
    use RunState::{Cancelled, Failed, Succeeded};
    assert_eq!(states, [Succeeded, Failed, Cancelled, Succeeded]);
    let before = s.job(&job).unwrap().clone();

    let again = s.retry(&job, Some("a"), 7).unwrap();
    assert_eq!(again, ["a", "a2"]);
    let j = s.job(&job).unwrap();
    assert_eq!((j.state, j.error.as_deref()), (RunState::Running, None));
    for kept in ["root", "b"] {
        let index = j.steps.iter().position(|st| st.name == kept).unwrap();
        assert_eq!(
            j.steps[index], before.steps[index],
            "{kept} is kept as it was"
        );
    }
    let attempts: Vec<u32> = j.steps.iter().map(|st| st.attempts).collect();
    assert_eq!(attempts, [1, 2, 2, 1]);
    // The old run's reports stay refused; the new run starts from root's output.
    let stale = s.complete(
        &w,
        &a.lease,
        Metrics::default(),
        "x".into(),
        Default::default(),
        8,
    );
    assert!(matches!(stale, Err(SchedulerError::StaleLease { .. })));
    let a_again = s.lease(&w, 8).unwrap().unwrap();
    assert_eq!(a_again.step, "a");
    assert!(a_again.lease.epoch > a.lease.epoch);
    assert_eq!(a_again.input_checkpoint, a.input_checkpoint);
    assert!(s.lease(&w, 8).unwrap().is_none(), "nothing else runs again");
    done(&mut s, &w, &a_again, 9);
    let a2 = s.lease(&w, 10).unwrap().unwrap();
    done(&mut s, &w, &a2, 11);
    assert_eq!(s.job(&job).unwrap().state, RunState::Succeeded);
    assert!(matches!(
        s.retry(&job, Some("b"), 12),
        Err(SchedulerError::NotRetryable(_))
    ));
}

#[test]
fn glue_steps_follow_the_last_phase_of_a_branch_or_the_phases_named_a_task_a_shard() {
    let spec = |after: &str| {
        let yaml = format!(
            "name: test\nstorage: /tmp/x\ndata: [{{name: t, kind: generated_text, words: 100}}]\n\
             evaluation: {{glue: {{path: /tmp/glue, tasks: [rte, wsc, mrpc]{after}}}}}\n\
             phases:\n  - {{name: one, kind: language, data: [t], steps: 1}}\n\
             \x20 - {{name: two, kind: language, data: [t], steps: 1}}\n"
        );
        spec::parse(&yaml, "test.yaml").unwrap()
    };
    let mut s = scheduler();
    let w = worker(&mut s, "a");
    let job = s.submit(spec(""), 0).unwrap();
    let steps = &s.job(&job).unwrap().steps;
    let names: Vec<&str> = steps.iter().map(|p| p.name.as_str()).collect();
    // No zero-shot benchmarks: no eval steps; GLUE after the branch's last phase only.
    assert_eq!(names, ["prepare", "one", "two", "two.glue"]);
    let glue = &steps[3];
    assert_eq!(glue.kind, StepKind::Finetune { phase: 1 });
    assert_eq!(glue.tasks.len(), 3, "a task a shard");
    assert_eq!(glue.inputs, [Input::Checkpoint(2)]);
    let mut other = scheduler();
    let named = other.submit(spec(", after: [one, two]"), 0).unwrap();
    let names: Vec<String> = other
        .job(&named)
        .unwrap()
        .steps
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["prepare", "one", "one.glue", "two", "two.glue"]);
    // The shards lease like any others once the phase's checkpoint is committed, each
    // told its task by its shard and handed the phase's final checkpoint.
    for step in ["prepare", "one", "two"] {
        let a = s.lease(&w, 1).unwrap().unwrap();
        assert_eq!(a.step, step);
        done(&mut s, &w, &a, 2);
    }
    let leased: Vec<Assignment> = (0..3).map(|_| s.lease(&w, 3).unwrap().unwrap()).collect();
    let shards: Vec<u32> = leased.iter().map(|a| a.lease.task.shard).collect();
    assert_eq!(shards, [0, 1, 2]);
    for a in &leased {
        assert_eq!(a.step, "two.glue");
        assert!(
            a.input_checkpoint
                .as_deref()
                .unwrap()
                .contains("/two/attempt-"),
            "{a:?}"
        );
        assert!(matches!(
            a.spec.work,
            outloud_core::task_spec::Work::Finetune(_)
        ));
    }
    let bad = "name: test\nstorage: /tmp/x\nevaluation: {glue: {path: /g, tasks: [rte, cola], after: [nine]}}\nphases: [{name: one, kind: noop}]\n";
    let refused = spec::parse(bad, "bad.yaml").unwrap_err().to_string();
    assert!(
        refused.contains("evaluation.glue.tasks[1]: no GLUE task `cola`"),
        "{refused}"
    );
    assert!(
        refused.contains("evaluation.glue.after[0]: no phase named `nine`"),
        "{refused}"
    );
}
