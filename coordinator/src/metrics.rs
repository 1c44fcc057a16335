//! Prometheus metrics: what the coordinator has done (counters since it started) and
//! what its jobs are doing now (per-phase step, loss, tokens, words and device time), in
//! the text exposition format, served on `GET /metrics` of the coordinator's HTTP
//! listener (`server::http`). The Outloud job is the label `job_id`:
//! `job` is Prometheus's own (the scrape job).

use std::fmt::Write;

use crate::scheduler::{RunState, Scheduler};

/// Label values escape backslashes, quotes and newlines.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The exposition text for the scheduler as it is now.
pub fn render(scheduler: &Scheduler) -> String {
    let mut out = String::new();
    let t = scheduler.tallies();
    for (name, help, value) in [
        (
            "outloud_jobs_submitted_total",
            "Jobs accepted.",
            t.jobs_submitted,
        ),
        (
            "outloud_leases_granted_total",
            "Task leases handed to workers.",
            t.leases_granted,
        ),
        (
            "outloud_leases_lost_total",
            "Leases that ended without success (expired, handed back).",
            t.leases_lost,
        ),
        (
            "outloud_tasks_succeeded_total",
            "Tasks completed.",
            t.tasks_succeeded,
        ),
        (
            "outloud_tasks_failed_total",
            "Tasks failed for good.",
            t.tasks_failed,
        ),
        (
            "outloud_checkpoints_total",
            "Checkpoints reported by workers.",
            t.checkpoints,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(&mut out, "outloud_jobs", "gauge", "Jobs by state.");
    for state in [
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ] {
        let n = scheduler.jobs().filter(|j| j.state == state).count();
        let _ = writeln!(out, "outloud_jobs{{state=\"{state}\"}} {n}");
    }
    family(
        &mut out,
        "outloud_workers",
        "gauge",
        "Registered workers by liveness.",
    );
    for alive in [true, false] {
        let n = scheduler.workers().filter(|w| w.alive == alive).count();
        let _ = writeln!(out, "outloud_workers{{alive=\"{alive}\"}} {n}");
    }
    render_phases(&mut out, scheduler);
    render_cost(&mut out, scheduler);
    out
}

/// Device time of unfinished jobs' steps, by device kind (the cost ledger).
fn render_cost(out: &mut String, scheduler: &Scheduler) {
    let name = "outloud_phase_device_seconds";
    let help = "Device-seconds the phase's ended leases took (CPU thread-s, GPU-s per model).";
    family(out, name, "gauge", help);
    let energy = "outloud_phase_gpu_energy_joules";
    let mut energies = String::new();
    for job in scheduler.jobs().filter(|j| !j.state.is_finished()) {
        for row in crate::report::cost::rows(job) {
            if let Some(joules) = row.gpu_energy_joules {
                let _ = writeln!(
                    energies,
                    "{energy}{{job_id=\"{}\",phase=\"{}\"}} {joules}",
                    label(&job.id),
                    label(&row.step)
                );
            }
            for (device, seconds) in &row.device_seconds {
                let _ = writeln!(
                    out,
                    "{name}{{job_id=\"{}\",phase=\"{}\",device=\"{}\"}} {seconds}",
                    label(&job.id),
                    label(&row.step),
                    label(device)
                );
            }
        }
    }
    let help = "GPU energy the phase's attempts drew, as NVML measured it.";
    family(out, energy, "gauge", help);
    out.push_str(&energies);
}

/// Per-phase progress of unfinished jobs.
fn render_phases(out: &mut String, scheduler: &Scheduler) {
    type Pick = fn(&crate::scheduler::Metrics) -> f64;
    let series: [(&str, &str, Pick); 7] = [
        ("outloud_phase_step", "Optimizer steps done.", |m| {
            m.step as f64
        }),
        (
            "outloud_phase_total_steps",
            "Optimizer steps planned.",
            |m| m.total_steps as f64,
        ),
        ("outloud_phase_loss", "Latest training loss.", |m| m.loss),
        ("outloud_phase_tokens", "Tokens consumed.", |m| {
            m.tokens as f64
        }),
        ("outloud_phase_words", "Words consumed.", |m| m.words as f64),
        (
            "outloud_phase_allreduce_seconds",
            "Seconds rank 0 of the phase's gang spent in all-reduces (this lease).",
            |m| m.allreduce_seconds,
        ),
        (
            "outloud_phase_allreduce_bytes",
            "Bytes rank 0 of the phase's gang all-reduced (this lease).",
            |m| m.allreduce_bytes as f64,
        ),
    ];
    for (name, help, pick) in series {
        family(out, name, "gauge", help);
        for job in scheduler.jobs().filter(|j| !j.state.is_finished()) {
            for phase in &job.steps {
                let value = pick(&phase.metrics());
                let _ = writeln!(
                    out,
                    "{name}{{job_id=\"{}\",phase=\"{}\"}} {value}",
                    label(&job.id),
                    label(&phase.name)
                );
            }
        }
    }
}
