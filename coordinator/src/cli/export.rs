//! `outloud export JOB --phase NAME --to DIR`: a phase's final model as a folder the
//! Hugging Face ecosystem loads. The worker binary does the conversion (it links
//! libtorch; this one does not): `outloud-worker export CHECKPOINT --to DIR`. This side
//! finds the committed checkpoint and adds the job's scores to the model card.

use std::path::Path;

use crate::report::Report;
use crate::scheduler::{Job, TaskState};

/// The committed final checkpoint of `phase` in `job`.
fn final_checkpoint<'a>(job: &'a Job, phase: &str) -> anyhow::Result<&'a str> {
    let step = job
        .step(phase)
        .ok_or_else(|| anyhow::anyhow!("job {} has no step `{phase}`", job.id))?;
    match step.tasks.first().map(|t| &t.state) {
        Some(TaskState::Succeeded { output }) if !output.is_empty() => Ok(output),
        state => anyhow::bail!(
            "step `{phase}` of job {} has no final checkpoint (its task is {state:?})",
            job.id
        ),
    }
}

pub fn export(job: &Job, phase: &str, to: &Path) -> anyhow::Result<()> {
    let checkpoint = final_checkpoint(job, phase)?;
    let status = std::process::Command::new(super::local::worker_binary()?)
        .args(["export", checkpoint, "--to"])
        .arg(to)
        .status()?;
    anyhow::ensure!(status.success(), "outloud-worker export failed ({status})");
    let card = to.join("README.md");
    let mut text = std::fs::read_to_string(&card)?;
    text += &format!(
        "\n## Scores\n\nZero-shot, from `outloud report {}` (every phase of the job; this \
         model is `{phase}`):\n\n```\n{}```\n",
        job.id,
        Report::of(job).table(false)
    );
    std::fs::write(&card, text)?;
    println!("{phase} of {}: {checkpoint} -> {}", job.id, to.display());
    Ok(())
}
