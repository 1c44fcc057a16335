//! `outloud-model-bench glue`: examples per second fine-tuning and predicting one GLUE
//! task at a model shape, through the fine-tuner's own step and prediction code. It
//! writes the tokenizer and the token ids it used, so `scripts/bench_glue.py` runs
//! PyTorch on exactly the same inputs.

use std::path::Path;
use std::time::Instant;

use outloud_worker::glue::classifier::Classifier;
use outloud_worker::glue::data::{self, Example};
use outloud_worker::glue::finetune::{encode_pair, predict, train_step};
use outloud_worker::glue::tasks::GlueTask;
use outloud_worker::model::GptConfig;
use outloud_worker::optim::AdamW;
use outloud_worker::tokenizer::Tokenizer;
use serde_json::{Value, json};
use tch::{Device, nn};

use super::{median, sync};

/// What the benchmark is given.
pub struct Glue<'a> {
    pub config: GptConfig,
    pub device: Device,
    pub folder: &'a Path,
    pub task: GlueTask,
    pub batch: usize,
    pub steps: usize,
    pub out: &'a Path,
}

fn read(folder: &Path, task: GlueTask, file: String) -> anyhow::Result<Vec<Example>> {
    let text = std::fs::read_to_string(folder.join(&file))?;
    let split = data::parse(task, &file, &text).map_err(anyhow::Error::msg)?;
    Ok(split.examples().map(|(_, e)| e.clone()).collect())
}

pub fn run(glue: Glue) -> anyhow::Result<Value> {
    let Glue {
        config,
        device,
        folder,
        task,
        batch,
        steps,
        out,
    } = glue;
    let train = read(folder, task, task.train_file())?;
    let valid = read(folder, task, task.valid_file())?;
    let texts: Vec<String> = train
        .iter()
        .flat_map(|e| [e.first.clone(), e.second.clone()])
        .collect();
    let tokenizer = Tokenizer::train(&texts, config.vocab_size)?;
    let limit = config.context as usize;
    let encode = |rows: &[Example]| -> anyhow::Result<Vec<Vec<i64>>> {
        Ok(rows
            .iter()
            .map(|e| encode_pair(&tokenizer, e, limit))
            .collect::<Result<_, _>>()?)
    };
    // Warm-up steps first, then the timed ones, each on the next rows in file order.
    let warmup = 2;
    let needed = (warmup + steps) * batch;
    let train_rows: Vec<Example> = train.iter().cycle().take(needed).cloned().collect();
    let train_ids = encode(&train_rows)?;
    let classes: Vec<i64> = train_rows
        .iter()
        .map(|e| i64::from(e.label.unwrap_or(0)))
        .collect();
    let valid_ids = encode(&valid)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("tokenizer.json"), tokenizer.to_json()?)?;
    let inputs = json!({"train": train_ids, "classes": classes, "valid": valid_ids});
    std::fs::write(out.join("inputs.json"), inputs.to_string())?;

    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), config, task.labels(), 0.1);
    let mut optimizer = AdamW::new(&vs, 0.01).with_betas(0.9, 0.999);
    let pad = i64::from(tokenizer.end_of_text());
    let mut times = Vec::new();
    for step in 0..warmup + steps {
        let rows: Vec<&Vec<i64>> = train_ids[step * batch..(step + 1) * batch].iter().collect();
        let targets = &classes[step * batch..(step + 1) * batch];
        sync(device);
        let started = Instant::now();
        train_step(&model, &mut optimizer, &rows, targets, pad, 3e-5);
        sync(device);
        if step >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let train_seconds = median(times);
    let rows: Vec<Option<Vec<i64>>> = valid_ids.into_iter().map(Some).collect();
    let mut predict_times = Vec::new();
    for _ in 0..3 {
        sync(device);
        let started = Instant::now();
        predict(&model, &rows, 0, pad, device)?;
        sync(device);
        predict_times.push(started.elapsed().as_secs_f64());
    }
    let predict_seconds = median(predict_times);
    Ok(json!({
        "impl": "outloud (tch)", "what": "glue", "task": task.name(), "batch": batch,
        "steps": steps, "threads": tch::get_num_threads(),
        "train_examples_per_s": batch as f64 / train_seconds,
        "predict_examples_per_s": rows.len() as f64 / predict_seconds,
        "valid_examples": rows.len(),
    }))
}
