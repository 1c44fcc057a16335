//! What the CLI shows: job summaries for listings and plain-text tables. The full job
//! document (`outloud status --json`) is the scheduler's [`Job`] itself.

use serde::{Deserialize, Serialize};

use outloud_core::results::TaskResults;

use crate::report::{cost, ledger};
use crate::scheduler::{Job, Metrics, RunState, Step, StepKind, TaskState, Worker};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSummary {
    pub name: String,
    pub state: RunState,
    pub metrics: Metrics,
    pub first_loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub state: RunState,
    pub submitted_at: u64,
    pub finished_at: Option<u64>,
    pub error: Option<String>,
    pub steps: Vec<StepSummary>,
}

impl JobSummary {
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id.clone(),
            state: job.state,
            submitted_at: job.submitted_at,
            finished_at: job.finished_at,
            error: job.error.clone(),
            steps: job
                .steps
                .iter()
                .map(|p| StepSummary {
                    name: p.name.clone(),
                    state: p.state,
                    metrics: p.metrics(),
                    first_loss: p.first_loss(),
                })
                .collect(),
        }
    }
}

/// `outloud status JOB --json`: the whole job, with each phase's metrics summed up and
/// the id of its trace.
pub fn job_json(job: &Job) -> serde_json::Value {
    // Serializing our own domain types cannot fail.
    let mut value = serde_json::to_value(job).expect("jobs serialize to JSON");
    value["trace_id"] = job.trace_id().to_string().into();
    let steps = value["steps"].as_array_mut().into_iter().flatten();
    for (phase, json) in job.steps.iter().zip(steps) {
        json["metrics"] = serde_json::to_value(phase.metrics()).expect("metrics serialize");
        json["first_loss"] = serde_json::to_value(phase.first_loss()).expect("numbers serialize");
        json["results"] = serde_json::to_value(phase.results()).expect("results serialize");
        json["planned_words"] =
            serde_json::to_value(planned_words(job, phase)).expect("numbers serialize");
    }
    value
}

/// `outloud status JOB`: the job, then a row per phase.
pub fn job_table(job: &Job) -> String {
    let mut out = format!("job {}  {}\n", job.id, job.state);
    if let Some(error) = &job.error {
        out += &format!("error: {error}\n");
    }
    out += &format!(
        "{:<22} {:<10} {:>5} {:>13} {:>10} {:>10} {:>12} {:>22}\n",
        "STEP", "STATE", "TRIES", "PROGRESS", "FIRST LOSS", "LOSS", "TOKENS", "WORDS USED/PLANNED"
    );
    for step in &job.steps {
        let m = step.metrics();
        // Eval steps count items scored, prepare steps shards; neither has a loss.
        let (progress, trains) = match step.kind {
            StepKind::Train { .. } => (format!("{}/{}", m.step, m.total_steps), true),
            StepKind::Evaluate { .. } => (format!("{}/{}", m.items, m.total_items), false),
            StepKind::Prepare | StepKind::Synthesize { .. } | StepKind::Finetune { .. } => {
                let done = step
                    .tasks
                    .iter()
                    .filter(|t| t.run_state() == RunState::Succeeded);
                (format!("{}/{}", done.count(), step.tasks.len()), false)
            }
        };
        let planned = planned_words(job, step).map_or("-".into(), |w| w.to_string());
        let loss = |l: Option<f64>| match l {
            Some(l) if trains => format!("{l:.3}"),
            _ => "-".into(),
        };
        out += &format!(
            "{:<22} {:<10} {:>5} {:>13} {:>10} {:>10} {:>12} {:>22}\n",
            step.name,
            step.state.to_string(),
            step.attempts,
            progress,
            loss(step.first_loss()),
            loss(Some(m.loss)),
            m.tokens,
            format!("{}/{planned}", m.words)
        );
    }
    for step in &job.steps {
        let shown = results_line(&step.results());
        let label = match step.kind {
            StepKind::Prepare => "ready",
            _ => "scores",
        };
        if !shown.is_empty() {
            out += &format!("{} {label}: {shown}\n", step.name);
        }
    }
    for step in &job.steps {
        for task in step
            .tasks
            .iter()
            .filter(|t| t.run_state() == RunState::Pending)
        {
            if let Some(why) = &task.waiting {
                out += &format!("{} {why}\n", step.name);
            }
        }
    }
    out += &ledger::table(&ledger::ledger(job), job.spec.word_budget);
    let planned = job.spec.largest_path_words().map_or(0, |(_, words)| words);
    out += &format!(
        "word budget: {planned} of {} words planned (the most on one path)\n",
        job.spec.word_budget
    );
    out += &cost::table(&cost::rows(job), cost::wall_seconds(job));
    out
}

/// Benchmarks' accuracy (`outloud report` has the paradigms), probes with their chance
/// levels, and skipped pictures, on one line.
pub fn results_line(results: &TaskResults) -> String {
    let mut shown: Vec<String> = results
        .overall()
        .map(|b| format!("{} {:.3}", b.benchmark, b.accuracy))
        .collect();
    for probe in &results.probes {
        let chance = probe
            .chance
            .map_or(String::new(), |c| format!(" (chance {c:.3})"));
        shown.push(format!("{} {:.3}{chance}", probe.name, probe.value));
    }
    if results.counts.images_skipped > 0 || !results.probes.is_empty() {
        shown.push(format!("images skipped {}", results.counts.images_skipped));
    }
    for source in &results.sources {
        shown.push(format!("{} {} files", source.name, source.files));
    }
    for task in &results.glue {
        shown.push(match (&task.not_run, task.accuracy) {
            (Some(why), _) => format!("{} not run: {why}", task.task),
            (None, accuracy) => {
                format!("{} {}", task.task, outloud_core::results::percent(accuracy))
            }
        });
    }
    let made = &results.counts.synthesis;
    if !made.is_empty() {
        shown.push(format!(
            "{} captions of {} pictures, {} kept (removed: {} short, {} long, {} duplicates, {} unlikely)",
            made.captions, made.pictures, made.kept, made.too_short, made.too_long, made.duplicates, made.unlikely
        ));
    }
    shown.join(", ")
}

/// Words a training step plans to consume (other steps consume none).
fn planned_words(job: &Job, step: &Step) -> Option<u64> {
    match step.kind {
        StepKind::Train { phase } => job.spec.phases.get(phase as usize)?.words,
        _ => None,
    }
}

pub fn jobs_table(jobs: &[JobSummary]) -> String {
    let mut out = format!("{:<28} {:<10} {}\n", "JOB", "STATE", "STEPS");
    for job in jobs {
        let phases: Vec<String> = job
            .steps
            .iter()
            .map(|p| format!("{}:{}", p.name, p.state))
            .collect();
        out += &format!(
            "{:<28} {:<10} {}\n",
            job.id,
            job.state.to_string(),
            phases.join(" ")
        );
    }
    out
}

/// The gangs training now: each rank's worker and device under the lease's epoch, and
/// what rank 0 last said of its all-reduces.
pub fn gangs_table(job: &Job, workers: &[Worker]) -> String {
    let device = |id: &str| {
        workers
            .iter()
            .find(|w| w.id == id)
            .map_or("?".to_string(), |w| w.info.device.clone())
    };
    let mut out = String::new();
    for step in &job.steps {
        for task in &step.tasks {
            let TaskState::Leased { worker, ranks, .. } = &task.state else {
                continue;
            };
            if ranks.is_empty() && step.gang.is_none() {
                continue;
            }
            let members: Vec<String> = std::iter::once(worker)
                .chain(ranks.iter().map(|r| &r.worker))
                .enumerate()
                .map(|(rank, w)| format!("rank {rank} {w} ({})", device(w)))
                .collect();
            let m = task.metrics;
            out += &format!(
                "{} gang epoch {}: {}; all-reduce {:.1} s, {:.1} MiB\n",
                step.name,
                task.epoch,
                members.join(", "),
                m.allreduce_seconds,
                m.allreduce_bytes as f64 / f64::from(1u32 << 20)
            );
        }
    }
    out
}

pub fn workers_table(workers: &[Worker]) -> String {
    let mut out = format!(
        "{:<28} {:<8} {:<32} {:>8} {:<6} {}\n",
        "WORKER", "DEVICE", "MODEL", "MEMORY", "ALIVE", "LEASES"
    );
    for w in workers {
        let leases: Vec<String> = w.leases.iter().map(ToString::to_string).collect();
        let model: String = w.info.device_name.chars().take(32).collect();
        out += &format!(
            "{:<28} {:<8} {:<32} {:>8} {:<6} {}\n",
            w.id,
            w.info.device,
            model,
            gib(w.info.device_memory_bytes),
            w.alive,
            leases.join(" ")
        );
    }
    out
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Scheduler, SchedulerConfig, WorkerInfo};

    #[test]
    fn status_says_why_a_gang_waits() {
        let mut s = Scheduler::new(SchedulerConfig {
            lease_timeout_ms: 1_000,
            instance: 0,
        });
        let yaml = "name: g\nstorage: /tmp/g\n\
            phases: [{name: l, kind: language, data: [t], steps: 1, world_size: 2}]\n\
            data: [{name: t, kind: generated_text, words: 9}]\n";
        let job = s
            .submit(outloud_core::spec::parse(yaml, "g.yaml").unwrap(), 0)
            .unwrap();
        let w = s.register(WorkerInfo::for_tests("a"), 0);
        let prepare = s.lease(&w, 0).unwrap().unwrap();
        let done = s.complete(
            &w,
            &prepare.lease,
            Metrics::default(),
            String::new(),
            Default::default(),
            0,
        );
        done.unwrap();
        assert!(
            s.lease(&w, 10).unwrap().is_none(),
            "one worker is half a gang"
        );
        let table = job_table(s.job(&job).unwrap());
        assert!(
            table.contains("l waiting for a gang of 2 Cpu workers: 1 idle now"),
            "{table}"
        );
        // A second worker: the gang forms, and status names its ranks and devices.
        let mut cpu = WorkerInfo::for_tests("c");
        cpu.device = "cpu".into();
        let v = s.register(cpu, 20);
        let zero = s.lease(&v, 20).unwrap().unwrap();
        let job = s.job(&job).unwrap();
        let workers: Vec<Worker> = s.workers().cloned().collect();
        let gangs = gangs_table(job, &workers);
        let expected = format!(
            "l gang epoch {}: rank 0 {v} (cpu), rank 1 {w} (",
            zero.lease.epoch
        );
        assert!(gangs.starts_with(&expected), "{gangs}");
        assert!(!job_table(job).contains("waiting"), "{}", job_table(job));
    }
}
