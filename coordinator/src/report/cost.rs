//! The cost ledger in the report: per step, the device time its tasks' leases took (CPU
//! thread-seconds, GPU-seconds per model; every attempt counted, [`DeviceTime`]) and
//! the tokens and words it trained on; and the job's wall time. The seed paper's open
//! question is what the curriculum costs against plain pretraining: this answers it
//! per phase.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scheduler::{GPU_SECONDS, Job};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostRow {
    pub step: String,
    /// Device kind -> device-seconds, over every lease of its tasks that ended.
    pub device_seconds: BTreeMap<String, f64>,
    pub tokens: u64,
    pub words: u64,
    pub synthetic_words: u64,
    /// GPU energy over every attempt, where NVML measured it (joules).
    pub gpu_energy_joules: Option<f64>,
    /// The most GPU memory one of its attempts had in use.
    pub peak_gpu_memory_bytes: Option<u64>,
}

/// A row per step that has spent device time.
pub fn rows(job: &Job) -> Vec<CostRow> {
    job.steps
        .iter()
        .filter_map(|step| {
            let time = step.cost();
            let metrics = step.metrics();
            (!time.seconds.is_empty()).then(|| CostRow {
                step: step.name.clone(),
                gpu_energy_joules: time.energy_joules(),
                peak_gpu_memory_bytes: Some(time.peak_gpu_memory_bytes).filter(|b| *b > 0),
                device_seconds: time.seconds,
                tokens: metrics.tokens,
                words: metrics.words,
                synthetic_words: metrics.synthetic_words,
            })
        })
        .collect()
}

/// The job's wall time, once it has finished.
pub fn wall_seconds(job: &Job) -> Option<f64> {
    let finished = job.finished_at?;
    Some(finished.saturating_sub(job.submitted_at) as f64 / 1e3)
}

/// A line per step and device kind, then the totals.
pub fn table(rows: &[CostRow], wall: Option<f64>) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<32} {:<28} {:>12} {:>12} {:>12}\n",
        "COST", "DEVICE", "DEVICE-S", "TOKENS", "WORDS"
    );
    let mut total: BTreeMap<&str, f64> = BTreeMap::new();
    for row in rows {
        for (i, (kind, seconds)) in row.device_seconds.iter().enumerate() {
            *total.entry(kind).or_default() += seconds;
            let (tokens, words) = match i {
                0 => (row.tokens.to_string(), row.words.to_string()),
                _ => (String::new(), String::new()),
            };
            out += &format!(
                "{:<32} {:<28} {:>12.1} {:>12} {:>12}\n",
                row.step, kind, seconds, tokens, words
            );
        }
    }
    for (kind, seconds) in total {
        out += &format!("{:<32} {:<28} {:>12.1}\n", "(job)", kind, seconds);
    }
    for row in rows {
        if let Some(joules) = row.gpu_energy_joules {
            out += &format!(
                "{:<32} {:<28} {:>12.1}\n",
                row.step,
                "GPU energy kJ",
                joules / 1e3
            );
        }
        if let Some(bytes) = row.peak_gpu_memory_bytes {
            let gib = bytes as f64 / f64::from(1u32 << 30);
            out += &format!(
                "{:<32} {:<28} {:>12.2}\n",
                row.step, "peak GPU memory GiB", gib
            );
        }
    }
    if rows.iter().all(|r| r.gpu_energy_joules.is_none())
        && rows
            .iter()
            .any(|r| r.device_seconds.keys().any(|k| k.starts_with(GPU_SECONDS)))
    {
        out += "(GPU energy: NVML did not report it on these GPUs)\n";
    }
    if let Some(wall) = wall {
        out += &format!("{:<32} {:<28} {:>12.1}\n", "(job)", "wall-clock s", wall);
    }
    out
}
