//! GLUE: fine-tuning evaluation (issue 17). Each task fine-tunes its own copy of a
//! checkpoint with a classification head and predicts its validation file.
//!
//! - [`tasks`]: the 7 tasks of the 2025 pipeline, their inputs and defaults.
//! - [`data`]: reading a split (malformed lines named, bad labels refused).
//! - [`classifier`]: the GPT with the pipeline's classification head.
//! - [`finetune`]: training, the best epoch's predictions.
//! - [`score`]: accuracy, binary F1, the `predictions.json` layout.

pub mod classifier;
pub mod data;
pub mod finetune;
pub mod score;
pub mod tasks;

use outloud_core::storage::Location;
use tch::{Device, nn};

use crate::checkpoint::Loaded;
use crate::error::WorkerError;
use crate::tokenizer::Tokenizer;
use classifier::{Classifier, HEAD};
use finetune::{Outcome, Tunable};
use tasks::{GlueTask, Settings};

/// What one task came to: scored, or why it did not run.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRun {
    Scored {
        outcome: Outcome,
        /// "line N: why" of the unusable lines, train then valid.
        malformed: Vec<String>,
    },
    NotRun(String),
}

/// Fine-tunes `loaded` on `task`'s files in `folder` and predicts its validation file.
/// With `dump`, the first batch before training and the head's first weights are
/// written there too (the PyTorch cross-check reads them).
pub async fn run_task(
    loaded: &Loaded,
    folder: &Location,
    task: GlueTask,
    settings: &Settings,
    device: Device,
    dump: Option<&std::path::Path>,
) -> Result<TaskRun, WorkerError> {
    let train_file = folder.join(&task.train_file());
    if !train_file.exists().await? {
        return Ok(TaskRun::NotRun("no training data".into()));
    }
    let valid_file = folder.join(&task.valid_file());
    if !valid_file.exists().await? {
        return Ok(TaskRun::NotRun("no validation data".into()));
    }
    let read = |location: &Location, name: String| {
        let location = location.clone();
        async move {
            let bytes = location.get().await?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            data::parse(task, &name, &text).map_err(WorkerError::Data)
        }
    };
    let train = read(&train_file, task.train_file()).await?;
    let valid = read(&valid_file, task.valid_file()).await?;
    let mut malformed = train.malformed();
    malformed.extend(valid.malformed());

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
    let tunable = Tunable {
        model,
        vs,
        tokenizer: Tokenizer::from_json(&loaded.tokenizer)?,
    };
    if let Some(dump) = dump {
        dump_first_batch(&tunable, &train, settings, dump)?;
    }
    let outcome = finetune::finetune(&tunable, task, &train, &valid, settings, |_, _, _| {})?;
    Ok(TaskRun::Scored { outcome, malformed })
}

/// Writes `batch.json` ([`finetune::first_batch`] of 8 rows) and `head.safetensors`.
fn dump_first_batch(
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
