//! GLUE in the report: for each fine-tuning step (a phase's checkpoint, per run), each
//! task's accuracy (F1 beside it for MRPC and QQP) and the mean over the tasks that ran,
//! saying how many it covers; a task that did not run says why and is left out of the
//! mean. Beside it, GIT's and Flamingo's GLUE: means over the 11 tasks of the 2024
//! pipeline, so not directly comparable.

use outloud_core::results::{GlueScore, percent};
use serde::Serialize;

use crate::scheduler::{Job, StepKind};

/// The 2024 baselines (GIT, Flamingo): GLUE means over 11 tasks.
pub const BASELINES_2024: (f64, f64) = (65.5, 69.5);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlueColumn {
    /// The fine-tuning step (`<phase>.glue`).
    pub step: String,
    /// Mean accuracy over the tasks that ran; None until one has.
    pub mean: Option<f64>,
    pub tasks_run: usize,
    pub tasks: Vec<GlueScore>,
}

/// A column per GLUE step that has reported anything.
pub fn columns(job: &Job) -> Vec<GlueColumn> {
    job.steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Finetune { .. }))
        .map(|step| {
            let mut tasks = step.results().glue;
            tasks.sort_by(|a, b| a.task.cmp(&b.task));
            let accuracies: Vec<Option<f64>> = tasks.iter().map(|t| t.accuracy).collect();
            GlueColumn {
                step: step.name.clone(),
                mean: super::mean_sd(&accuracies).0,
                tasks_run: accuracies.iter().flatten().count(),
                tasks,
            }
        })
        .filter(|c| !c.tasks.is_empty())
        .collect()
}

/// The GLUE lines of `outloud report`: a row per step; with `detail`, a row per task.
pub fn table(columns: &[GlueColumn], detail: bool) -> String {
    if columns.is_empty() {
        return String::new();
    }
    let (git, flamingo) = BASELINES_2024;
    let mut out = format!(
        "\n{:<32} {:>9} {:>7}   GIT {git:.1}, Flamingo {flamingo:.1} (2024: means over 11 tasks, not directly comparable)\n",
        "GLUE (accuracy, %)", "MEAN", "TASKS"
    );
    for column in columns {
        let of = column.tasks.len();
        out += &format!(
            "{:<32} {:>9} {:>7}\n",
            column.step,
            percent(column.mean),
            format!("{}/{of}", column.tasks_run)
        );
        for task in &column.tasks {
            let line = match &task.not_run {
                Some(why) => format!("not run: {why}"),
                None => {
                    let f1 = task
                        .f1
                        .map_or(String::new(), |f| format!("  F1 {}", percent(Some(f))));
                    let unreadable = match task.malformed {
                        0 => String::new(),
                        n => format!("  {n} lines unreadable"),
                    };
                    format!(
                        "{:>9} of {} (majority {}){f1}{unreadable}",
                        percent(task.accuracy),
                        task.items,
                        percent(task.majority)
                    )
                }
            };
            if detail || task.not_run.is_some() {
                out += &format!("  {:<30} {line}\n", task.task);
            }
        }
    }
    out
}
