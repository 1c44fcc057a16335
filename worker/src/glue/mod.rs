//! GLUE: fine-tuning evaluation (issue 17). Each task fine-tunes its own copy of a
//! checkpoint with a classification head and predicts its validation file.
//!
//! - [`tasks`]: the 7 tasks of the 2025 pipeline, their inputs and defaults.
//! - [`data`]: reading a split (malformed lines named, bad labels refused).
//! - [`classifier`]: the GPT with the pipeline's classification head.
//! - [`finetune`]: training, the best epoch's predictions.
//! - [`score`]: accuracy, binary F1, the `predictions.json` layout.
//! - [`job`]: a GLUE step's task (a task a shard), inside a job.

pub mod classifier;
pub mod data;
pub mod finetune;
pub mod job;
pub mod score;
pub mod tasks;

use outloud_core::results::GlueScore;
use outloud_core::storage::Location;
use tch::{Device, nn};

use crate::checkpoint::Loaded;
use crate::error::WorkerError;
use crate::tokenizer::Tokenizer;
use classifier::{Classifier, HEAD};
use data::Split;
use finetune::{Outcome, Tunable};
use tasks::{GlueTask, Selection, Settings};

/// The task's training and validation splits from `folder`; Err(why) when it cannot
/// run (a file is missing).
pub async fn read_splits(
    folder: &Location,
    task: GlueTask,
) -> Result<Result<(Split, Split), String>, WorkerError> {
    let mut splits = Vec::new();
    for (file, missing) in [
        (task.train_file(), "no training data"),
        (task.valid_file(), "no validation data"),
    ] {
        let location = folder.join(&file);
        if !location.exists().await? {
            return Ok(Err(missing.into()));
        }
        let bytes = location.get().await?;
        let text = String::from_utf8_lossy(&bytes);
        splits.push(data::parse(task, &file, &text).map_err(WorkerError::Data)?);
    }
    let valid = splits.pop().expect("two splits");
    let train = splits.pop().expect("two splits");
    Ok(Ok((train, valid)))
}

/// `loaded`'s GPT with a fresh head for `task` (seeded by the task's settings), on
/// `device`.
pub fn tunable(
    loaded: &Loaded,
    task: GlueTask,
    settings: &Settings,
    device: Device,
) -> Result<Tunable, WorkerError> {
    // The head's first weights, the dropout masks: the task's seed decides them.
    tch::manual_seed(settings.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(
        &vs.root(),
        loaded.manifest.model,
        task.labels(),
        settings.classifier_dropout,
    );
    crate::inputs::load_weights(&vs, &loaded.weights, |name| !name.starts_with(HEAD))?;
    Ok(Tunable {
        model,
        vs,
        tokenizer: Tokenizer::from_json(&loaded.tokenizer)?,
    })
}

/// The typed result of a task that ran: its scores on the validation file, and how
/// many lines of its files could not be read (each named in the log).
pub fn score_of(task: GlueTask, train: &Split, valid: &Split, outcome: &Outcome) -> GlueScore {
    let malformed: Vec<String> = train
        .malformed()
        .into_iter()
        .chain(valid.malformed())
        .collect();
    for line in &malformed {
        tracing::warn!(task = task.name(), "unreadable line {line}");
    }
    let labels = valid.labels();
    let labelled: Vec<u32> = labels.iter().flatten().copied().collect();
    let correct = outcome
        .predictions
        .iter()
        .zip(&labels)
        .filter(|(p, l)| l.is_some_and(|l| l == **p))
        .count();
    let most = (0..task.labels())
        .map(|c| labelled.iter().filter(|l| **l == c).count())
        .max()
        .unwrap_or(0);
    GlueScore {
        task: task.name().into(),
        items: labelled.len() as u64,
        correct: correct as u64,
        accuracy: outcome.accuracy,
        f1: matches!(task.select_by(), Selection::F1)
            .then_some(outcome.f1)
            .flatten(),
        majority: (!labelled.is_empty()).then(|| most as f64 / labelled.len() as f64),
        best_epoch: outcome.best_epoch,
        steps: outcome.steps,
        malformed: malformed.len() as u64,
        not_run: None,
        predictions: None,
    }
}

/// Writes `batch.json` ([`finetune::first_batch`] of 8 rows) and `head.safetensors`.
pub fn dump_first_batch(
    tunable: &Tunable,
    train: &data::Split,
    settings: &Settings,
    dump: &std::path::Path,
) -> Result<(), WorkerError> {
    let io = |e: std::io::Error| WorkerError::Config(format!("writing {}: {e}", dump.display()));
    std::fs::create_dir_all(dump).map_err(io)?;
    let batch = finetune::first_batch(tunable, train, settings, 8)?;
    std::fs::write(dump.join("batch.json"), batch.to_string()).map_err(io)?;
    let head: Vec<(String, tch::Tensor)> = tunable
        .vs
        .variables()
        .into_iter()
        .filter(|(name, _)| name.starts_with(HEAD))
        .collect();
    tch::Tensor::write_safetensors(&head, dump.join("head.safetensors"))
        .map_err(|e| WorkerError::Config(format!("writing the head: {e}")))
}

#[cfg(test)]
mod tests;
