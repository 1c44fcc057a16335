//! Fine-tuning one task and predicting its validation file, as the 2025 pipeline does:
//! shuffled batches (seeded), AdamW with a cosine schedule after a warm-up, an
//! evaluation of the validation file after every epoch, and the predictions of the
//! best epoch (by F1 or accuracy) kept, one per line in line order.

use tch::{Device, Kind, Tensor, nn};

use super::classifier::Classifier;
use super::data::{Example, Split};
use super::score::{accuracy, binary_f1};
use super::tasks::{GlueTask, Selection, Settings};
use crate::error::WorkerError;
use crate::optim::{AdamW, learning_rate};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

/// Sequences per forward pass when predicting.
const PREDICT_BATCH: usize = 64;

/// What fine-tuning one task gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// One per line of the validation file, in line order.
    pub predictions: Vec<u32>,
    pub accuracy: Option<f64>,
    pub f1: Option<f64>,
    /// The epoch (1-based) whose predictions were kept; 0: before any training.
    pub best_epoch: u32,
    pub steps: u64,
    /// Validation accuracy before the first step (the classifier's head is random).
    pub initial_accuracy: Option<f64>,
}

/// An input as token ids: the pair's tokens, one after the other, cut to `limit` the
/// way Hugging Face's `longest_first` cuts a pair (a token at a time off the end of
/// the longer one).
pub fn encode_pair(
    tokenizer: &Tokenizer,
    example: &Example,
    limit: usize,
) -> Result<Vec<i64>, WorkerError> {
    let mut first = tokenizer.encode(&example.first)?;
    let mut second = tokenizer.encode(&example.second)?;
    while first.len() + second.len() > limit {
        if first.len() > second.len() {
            first.pop();
        } else {
            second.pop();
        }
    }
    Ok(first.into_iter().chain(second).map(i64::from).collect())
}

/// Tokens an input may have: the task's sequence length, cut to the model's context.
fn input_limit(model: &Classifier, settings: &Settings) -> usize {
    settings
        .sequence_length
        .min(model.gpt.config.context as usize)
        .max(2)
}

/// Right-padded ids (B, T) and each row's last real token (B).
fn batch(rows: &[&Vec<i64>], pad: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut flat = Vec::with_capacity(rows.len() * width);
    let mut last = Vec::with_capacity(rows.len());
    for row in rows {
        flat.extend_from_slice(row);
        flat.extend(std::iter::repeat_n(pad, width - row.len()));
        last.push(row.len().max(1) as i64 - 1);
    }
    let ids = Tensor::from_slice(&flat).view([rows.len() as i64, width as i64]);
    (
        ids.to_device(device),
        Tensor::from_slice(&last).to_device(device),
    )
}

/// What is fine-tuned: the classifier, the store holding its variables, and the
/// checkpoint's tokenizer.
pub struct Tunable {
    pub model: Classifier,
    pub vs: nn::VarStore,
    pub tokenizer: Tokenizer,
}

/// The first `rows` training examples as the model sees them before any step (no
/// dropout): their ids, each row's last real token, labels, class logits and mean
/// loss. What `scripts/glue_reference.py` recomputes in PyTorch.
pub fn first_batch(
    tunable: &Tunable,
    train: &Split,
    settings: &Settings,
    rows: usize,
) -> Result<serde_json::Value, WorkerError> {
    let limit = input_limit(&tunable.model, settings);
    let (examples, labels): (Vec<&Example>, Vec<i64>) = train
        .labelled()
        .take(rows)
        .map(|(e, l)| (e, i64::from(l)))
        .unzip();
    let ids: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| encode_pair(&tunable.tokenizer, e, limit))
        .collect::<Result<_, _>>()?;
    let pad = i64::from(tunable.tokenizer.end_of_text());
    let device = tunable.vs.device();
    let (batch_ids, last) = batch(&ids.iter().collect::<Vec<_>>(), pad, device);
    let (logits, loss) = tch::no_grad(|| {
        let logits = tunable.model.forward(&batch_ids, &last, false);
        let targets = Tensor::from_slice(&labels).to_device(device);
        let loss = logits.cross_entropy_for_logits(&targets).double_value(&[]);
        (logits.to_device(Device::Cpu), loss)
    });
    let logits: Vec<Vec<f32>> =
        Vec::try_from(logits).map_err(|e| WorkerError::Config(format!("reading logits: {e}")))?;
    let texts: Vec<[&str; 2]> = examples
        .iter()
        .map(|e| [e.first.as_str(), e.second.as_str()])
        .collect();
    Ok(serde_json::json!({
        "texts": texts, "ids": ids, "labels": labels, "logits": logits, "loss": loss,
        "limit": limit,
    }))
}

/// Fine-tunes `tunable` on `train` and predicts `valid`. `progress` hears (optimizer
/// step, of steps, training loss) after every step; an error from it stops training.
pub fn finetune(
    tunable: &Tunable,
    task: GlueTask,
    train: &Split,
    valid: &Split,
    settings: &Settings,
    mut progress: impl FnMut(u64, u64, f64) -> Result<(), WorkerError>,
) -> Result<Outcome, WorkerError> {
    let Tunable {
        model,
        vs,
        tokenizer,
    } = tunable;
    let device = vs.device();
    let limit = input_limit(model, settings);
    let pad = i64::from(tokenizer.end_of_text());
    let encode = |e: &Example| encode_pair(tokenizer, e, limit);
    let train_rows: Vec<(Vec<i64>, i64)> = train
        .labelled()
        .map(|(e, l)| Ok((encode(e)?, i64::from(l))))
        .collect::<Result<_, WorkerError>>()?;
    if train_rows.is_empty() {
        return Err(WorkerError::Data(format!(
            "{}: no labelled training example",
            task.name()
        )));
    }
    let valid_rows: Vec<Option<Vec<i64>>> = valid
        .lines
        .iter()
        .map(|line| line.as_ref().ok().map(encode).transpose())
        .collect::<Result<_, WorkerError>>()?;
    let labels = valid.labels();
    let majority = majority_label(&train_rows, task.labels());
    let predict = || predict(model, &valid_rows, majority, pad, device);
    let score = |predictions: &[u32]| match task.select_by() {
        Selection::Accuracy => accuracy(predictions, &labels),
        Selection::F1 => binary_f1(predictions, &labels),
    };

    let batches_per_epoch = train_rows.len().div_ceil(settings.batch_size.max(1)) as u64;
    let planned = batches_per_epoch * u64::from(settings.epochs);
    let total = settings.max_steps.map_or(planned, |m| m.min(planned));
    let warmup = (settings.warmup_proportion * total as f64).round() as u64;
    let mut optimizer = AdamW::new(vs, settings.weight_decay).with_betas(0.9, 0.999);
    let mut rng = Rng::new(settings.seed);

    let initial = predict()?;
    let initial_accuracy = accuracy(&initial, &labels);
    let (mut best, mut best_score, mut best_epoch) = (initial, None::<f64>, 0);
    let mut step = 0;
    for epoch in 1..=settings.epochs {
        if step >= total {
            break;
        }
        let mut order: Vec<usize> = (0..train_rows.len()).collect();
        rng.shuffle(&mut order);
        for chunk in order.chunks(settings.batch_size.max(1)) {
            if step >= total {
                break;
            }
            let rows: Vec<&Vec<i64>> = chunk.iter().map(|&i| &train_rows[i].0).collect();
            let targets: Vec<i64> = chunk.iter().map(|&i| train_rows[i].1).collect();
            let lr = learning_rate(step, total, warmup, settings.learning_rate);
            let loss = train_step(model, &mut optimizer, &rows, &targets, pad, lr);
            step += 1;
            progress(step, total, loss)?;
        }
        let predictions = predict()?;
        let scored = score(&predictions);
        if best_score.is_none() || scored > best_score {
            (best, best_score, best_epoch) = (predictions, scored, epoch);
        }
    }
    Ok(Outcome {
        accuracy: accuracy(&best, &labels),
        f1: binary_f1(&best, &labels),
        predictions: best,
        best_epoch,
        steps: step,
        initial_accuracy,
    })
}

/// One optimizer step on a batch of inputs and their classes; answers the loss.
pub fn train_step(
    model: &Classifier,
    optimizer: &mut AdamW,
    rows: &[&Vec<i64>],
    classes: &[i64],
    pad: i64,
    lr: f64,
) -> f64 {
    let device = model.gpt.device();
    let (ids, last) = batch(rows, pad, device);
    let logits = model.forward(&ids, &last, true);
    let targets = Tensor::from_slice(classes).to_device(device);
    let loss = logits.cross_entropy_for_logits(&targets);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step(lr);
    loss.double_value(&[])
}

/// A class per validation line: the model's argmax, or the training set's most common
/// label for a line that could not be read (the pipeline wants one per line).
pub fn predict(
    model: &Classifier,
    rows: &[Option<Vec<i64>>],
    fallback: u32,
    pad: i64,
    device: Device,
) -> Result<Vec<u32>, WorkerError> {
    let mut predictions = vec![fallback; rows.len()];
    let readable: Vec<(usize, &Vec<i64>)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
        .collect();
    tch::no_grad(|| {
        for chunk in readable.chunks(PREDICT_BATCH) {
            let rows: Vec<&Vec<i64>> = chunk.iter().map(|(_, r)| *r).collect();
            let (ids, last) = batch(&rows, pad, device);
            let classes = model
                .forward(&ids, &last, false)
                .argmax(-1, false)
                .to_kind(Kind::Int64)
                .to_device(Device::Cpu);
            let classes: Vec<i64> = Vec::try_from(classes)
                .map_err(|e| WorkerError::Config(format!("reading predictions: {e}")))?;
            for ((line, _), class) in chunk.iter().zip(classes) {
                predictions[*line] = class as u32;
            }
        }
        Ok(predictions)
    })
}

fn majority_label(rows: &[(Vec<i64>, i64)], labels: u32) -> u32 {
    let mut counts = vec![0usize; labels as usize];
    for (_, label) in rows {
        counts[*label as usize] += 1;
    }
    (0..labels)
        .max_by_key(|&l| (counts[l as usize], std::cmp::Reverse(l)))
        .unwrap_or(0)
}
