//! Checkpoints a task reads: its own newest one to resume from, and the input checkpoint
//! its step names (the previous phase's final one to start from, or the one an eval step
//! scores); and loading their weights into a model. Training, evaluation and the probes
//! all read checkpoints through here.

use std::collections::HashMap;

use outloud_core::storage::Location;
use outloud_core::task::Metrics;
use tch::{Tensor, nn};

use crate::checkpoint::{self, Loaded, retention};
use crate::context::TaskContext;
use crate::error::WorkerError;
use crate::optim::AdamW;

/// Where training resumes: the newest checkpoint of this task that verifies, else
/// nothing. The coordinator names the newest one reported; if it is corrupt or
/// incomplete it is refused (never loaded) and older ones of this task are tried, newest
/// first, whichever earlier attempt wrote them.
pub async fn resume_point(ctx: &TaskContext) -> Option<Loaded> {
    let newest = ctx.assignment.resume_checkpoint.as_deref()?;
    if let Some(loaded) = verified(newest).await {
        return Some(loaded);
    }
    // Only now list the task's folders: the newest verifies nearly always.
    if let Ok(folder) = ctx.task_folder() {
        for url in older_checkpoints(&folder, newest).await {
            if let Some(loaded) = verified(&url).await {
                return Some(loaded);
            }
        }
    }
    tracing::warn!("no checkpoint verifies; starting over");
    None
}

/// The checkpoint at `url`, if it verifies.
async fn verified(url: &str) -> Option<Loaded> {
    let location = Location::open(url).ok()?;
    match checkpoint::load(&location).await {
        Ok(loaded) => Some(loaded),
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint refused; trying an older one");
            None
        }
    }
}

/// Checkpoint folders of every attempt under `task_folder` from before `newest`'s
/// step, newest first (the latest attempt first among equal steps).
async fn older_checkpoints(task_folder: &Location, newest: &str) -> Vec<String> {
    let (Ok(found), Some(limit)) = (
        retention::committed(task_folder).await,
        retention::checkpoint_step(newest),
    ) else {
        return Vec::new();
    };
    found
        .into_iter()
        .filter(|c| c.step < limit)
        .map(|c| c.url)
        .collect()
}

/// The checkpoint the step names as its input, verified; `what` says what it is for.
/// One of this job must be written by the step the coordinator says wrote it; one the
/// phase imports from outside the job (`init_from`: another job's checkpoint, or a
/// folder `outloud export` wrote) is vouched for by its manifest alone, and what this
/// phase writes records where it came from.
pub fn input_checkpoint(ctx: &TaskContext, what: &str) -> Result<Loaded, WorkerError> {
    let a = &ctx.assignment;
    let url = a.input_checkpoint.as_deref().ok_or_else(|| {
        WorkerError::Config(format!("step `{}` needs {what}, and there is none", a.step))
    })?;
    let loaded = ctx
        .runtime
        .block_on(checkpoint::load(&Location::open(url)?))?;
    match a.input_step.as_deref() {
        Some(step) => check_origin(&loaded.manifest, url, &a.job_id, step)?,
        None => {
            let m = &loaded.manifest;
            tracing::info!(%url, job = %m.job, phase = %m.phase, step = m.step, "imported");
        }
    }
    Ok(loaded)
}

/// The checkpoint a `language` phase imports, if it does (its input checkpoint from
/// within the job, the phase before it, is only an ordering: it starts from scratch).
pub fn imported(ctx: &TaskContext) -> Result<Option<Loaded>, WorkerError> {
    match ctx.assignment.imported_checkpoint() {
        Some(_) => input_checkpoint(ctx, "the checkpoint it imports").map(Some),
        None => Ok(None),
    }
}

/// Refuses a checkpoint whose manifest names another job, or another step than `step`.
pub fn check_origin(
    manifest: &checkpoint::Manifest,
    url: &str,
    job: &str,
    step: &str,
) -> Result<(), WorkerError> {
    if manifest.job == job && manifest.phase == step {
        return Ok(());
    }
    Err(WorkerError::Checkpoint {
        url: url.into(),
        reason: format!(
            "written by job `{}` step `{}`, not by job `{job}` step `{step}`: refused",
            manifest.job, manifest.phase
        ),
    })
}

/// Names of the weights holding a NaN or an infinity: such a checkpoint cannot be
/// trained on or scored honestly.
pub fn non_finite_weights(weights: &[(String, Tensor)]) -> Vec<String> {
    weights
        .iter()
        .filter(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Refuses a checkpoint with non-finite weights, naming a few of them.
pub fn require_finite(loaded: &crate::checkpoint::Loaded, url: &str) -> Result<(), WorkerError> {
    let broken = non_finite_weights(&loaded.weights);
    if broken.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = broken.iter().take(3).map(String::as_str).collect();
    Err(WorkerError::Data(format!(
        "checkpoint {url} has non-finite weights in {} tensors ({}{}): it cannot be scored",
        broken.len(),
        shown.join(", "),
        if broken.len() > 3 { ", ..." } else { "" }
    )))
}

/// Overwrites every variable of `vs` whose name `wanted` accepts with the saved tensor of
/// the same name; answers how many were loaded.
pub fn load_weights(
    vs: &nn::VarStore,
    saved: &[(String, Tensor)],
    wanted: impl Fn(&str) -> bool,
) -> Result<usize, WorkerError> {
    let saved: HashMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| {
        let mut loaded = 0;
        for (name, mut var) in vs.variables().into_iter().filter(|(n, _)| wanted(n)) {
            let source = saved
                .get(name.as_str())
                .ok_or_else(|| WorkerError::Config(format!("checkpoint lacks weight `{name}`")))?;
            if source.size() != var.size() {
                return Err(WorkerError::Config(format!(
                    "weight `{name}` is {:?} in the checkpoint, {:?} in the model",
                    source.size(),
                    var.size()
                )));
            }
            var.copy_(source);
            loaded += 1;
        }
        Ok(loaded)
    })
}

/// Restores weights, optimizer moments and counters from a checkpoint of this step.
pub fn restore(
    vs: &nn::VarStore,
    optimizer: &mut AdamW,
    loaded: &Loaded,
) -> Result<Metrics, WorkerError> {
    load_weights(vs, &loaded.weights, |_| true)?;
    if let Some(state) = &loaded.optimizer {
        optimizer
            .load_state(state, loaded.manifest.step as i64)
            .map_err(WorkerError::Config)?;
    }
    tracing::info!(step = loaded.manifest.step, "resumed from checkpoint");
    let m = &loaded.manifest;
    Ok(Metrics {
        step: m.step,
        total_steps: m.total_steps,
        loss: m.loss,
        tokens: m.tokens,
        words: m.words,
        synthetic_words: m.synthetic_words,
        ..Metrics::default()
    })
}

/// Where a phase that continues an earlier one starts.
pub enum Start {
    /// Its own checkpoint: a lease that resumes.
    Resume(Loaded),
    /// The previous phase's final checkpoint.
    HandOver(Loaded),
}

impl Start {
    pub fn find(ctx: &TaskContext) -> Result<Self, WorkerError> {
        if let Some(loaded) = ctx.runtime.block_on(resume_point(ctx)) {
            return Ok(Start::Resume(loaded));
        }
        let previous = input_checkpoint(ctx, "the previous phase's final checkpoint")?;
        Ok(Start::HandOver(previous))
    }

    pub fn checkpoint(&self) -> &Loaded {
        match self {
            Start::Resume(loaded) | Start::HandOver(loaded) => loaded,
        }
    }
}

/// Loads the previous phase's weights: all of them after a phase that saw pictures,
/// else the language model's only (the vision path starts fresh).
pub fn hand_over(vs: &nn::VarStore, previous: &Loaded) -> Result<(), WorkerError> {
    let with_vision = previous.manifest.vision.is_some();
    let wanted = |name: &str| with_vision || !crate::vlm::in_vision_path(name);
    let loaded = load_weights(vs, &previous.weights, wanted)?;
    tracing::info!(loaded, from_phase = %previous.manifest.phase, "weights handed over");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_another_job_or_step_is_refused() {
        let manifest: checkpoint::Manifest = serde_json::from_value(serde_json::json!({
            "format": checkpoint::FORMAT, "job": "j-1", "phase": "language", "step": 1,
            "total_steps": 1, "model": crate::model::test_config(8), "loss": 0.0,
            "tokens": 0, "words": 0, "files": {}
        }))
        .unwrap();
        check_origin(&manifest, "u", "j-1", "language").unwrap();
        let other_job = check_origin(&manifest, "u", "j-2", "language").unwrap_err();
        assert!(
            other_job.to_string().contains("written by job `j-1`"),
            "{other_job}"
        );
        assert!(check_origin(&manifest, "u", "j-1", "vision").is_err());
    }
}
