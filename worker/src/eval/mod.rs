//! Zero-shot evaluation: an eval step scores a phase's final checkpoint on the job's
//! benchmarks, the way the BabyLM pipeline scores them.
//!
//! - [`benchmarks`]: finding benchmark files (BabyLM `evaluation_data` layout) and
//!   reading their items into candidates.
//! - [`devbench`]: DevBench task manifests read as picture-choice items.
//! - [`score`]: tokenizing candidates as lm-evaluation-harness does, and batched
//!   summed log-likelihoods.
//! - [`results`]: accuracy per file and benchmark; the JSON written to storage.
//!
//! A checkpoint without a vision path (after phase 1) scores Winoground text-only and
//! skips benchmarks that need pictures (VQA, picture choice).

pub mod benchmarks;
pub mod devbench;
pub mod results;
pub mod score;

use std::collections::BTreeMap;
use std::time::Instant;

use outloud_core::storage::Location;
use outloud_core::task::Metrics;
use outloud_core::task_spec::{BenchmarkFiles, EvaluateSpec, Work};
use tch::{Device, Tensor, nn};

use crate::checkpoint::Loaded;
use crate::context::{TaskContext, TaskOutput};
use crate::error::WorkerError;
use crate::loaders::{self, Skipped};
use crate::model::Gpt;
use crate::tokenizer::Tokenizer;
use crate::visual::VisualInputs;
use crate::vlm::{VisionPath, Vlm};
use crate::{data, inputs};
use benchmarks::{Benchmark, BenchmarkFile, Ignored};
use results::{BenchmarkResult, EvalResults, FileResult};
use score::{Scorer, Text};

/// Pictures turned into visual tokens per forward pass of the encoder.
const PICTURES_PER_BATCH: usize = 64;

/// A checkpoint ready to score: its model (with the vision path when it has one) and
/// its tokenizer.
pub struct EvalModel {
    pub tokenizer: Tokenizer,
    model: Model,
    /// Keeps the weights alive.
    _vs: nn::VarStore,
}

// One per eval step: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Model {
    Text(Gpt),
    Seeing(Vlm, VisionPath),
}

impl EvalModel {
    pub fn from_checkpoint(loaded: &Loaded, device: Device) -> Result<Self, WorkerError> {
        let vs = nn::VarStore::new(device);
        let config = loaded.manifest.model;
        let model = match loaded.manifest.vision {
            Some(vision) => Model::Seeing(Vlm::new(&vs.root(), config, vision.config()), vision),
            None => Model::Text(Gpt::new(&vs.root(), config)),
        };
        inputs::load_weights(&vs, &loaded.weights, |_| true)?;
        Ok(Self {
            tokenizer: Tokenizer::from_json(&loaded.tokenizer)?,
            model,
            _vs: vs,
        })
    }

    pub fn lm(&self) -> &Gpt {
        match &self.model {
            Model::Text(lm) => lm,
            Model::Seeing(vlm, _) => &vlm.lm,
        }
    }

    pub fn vision(&self) -> Option<&VisionPath> {
        self.seeing().map(|(_, vision)| vision)
    }

    /// The vision-language model and its vision path, when the checkpoint has one.
    pub fn seeing(&self) -> Option<(&Vlm, &VisionPath)> {
        match &self.model {
            Model::Text(_) => None,
            Model::Seeing(vlm, vision) => Some((vlm, vision)),
        }
    }

    /// Why this model cannot score `benchmark`, if it cannot.
    pub fn cannot_score(&self, benchmark: &Benchmark) -> Option<String> {
        let blind = self.vision().is_none();
        (blind && benchmark.files.iter().any(|f| f.format.needs_pictures()))
            .then(|| "needs pictures; this checkpoint has no vision path".to_string())
    }

    /// Visual tokens (N, C) for each encoder input, in batches.
    fn visual_tokens(&self, inputs: &[Tensor]) -> Option<Tensor> {
        let Model::Seeing(vlm, _) = &self.model else {
            return None;
        };
        let device = self.lm().device();
        let chunks: Vec<Tensor> = inputs
            .chunks(PICTURES_PER_BATCH)
            .map(|chunk| {
                let batch = Tensor::stack(chunk, 0).to_device(device);
                tch::no_grad(|| vlm.visual_tokens(&batch))
            })
            .collect();
        (!chunks.is_empty()).then(|| Tensor::cat(&chunks, 0))
    }
}

/// Pictures a benchmark names, read and encoded once.
#[derive(Default)]
pub struct Pictures {
    rows: BTreeMap<String, usize>,
    tokens: Option<Tensor>,
    pub skipped: Skipped,
}

impl Pictures {
    /// Reads every picture `benchmark` names, through `inputs` (pixels, or features).
    pub async fn read(
        model: &EvalModel,
        benchmark: &Benchmark,
        inputs: &VisualInputs,
    ) -> Result<Self, WorkerError> {
        let mut pictures = Self::default();
        let Some(vision) = model.vision() else {
            return Ok(pictures);
        };
        let urls: std::collections::BTreeSet<&str> = benchmark
            .files
            .iter()
            .flat_map(|f| &f.items)
            .flat_map(|i| &i.candidates)
            .filter_map(|c| c.image.as_deref())
            .collect();
        let mut encoder_inputs = Vec::new();
        for url in urls {
            let bytes = match Location::open(url) {
                Ok(location) => location.get().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let pixels = bytes.and_then(|b| loaders::decode(&b, vision.image_size));
            match pixels.map(|p| inputs.for_picture(url, p)) {
                Ok(Some(input)) => {
                    pictures.rows.insert(url.to_string(), encoder_inputs.len());
                    encoder_inputs.push(input);
                }
                Ok(None) => pictures.skipped.add(url, "no precomputed features"),
                Err(reason) => pictures.skipped.add(url, reason),
            }
        }
        pictures.tokens = model.visual_tokens(&encoder_inputs);
        Ok(pictures)
    }
}

/// Scores one benchmark with `model`, `batch_size` sequences per forward pass.
pub fn score_benchmark(
    model: &EvalModel,
    benchmark: &Benchmark,
    pictures: &Pictures,
    batch_size: usize,
) -> Result<BenchmarkResult, WorkerError> {
    let seeing = model.vision().is_some();
    if let Some(reason) = model.cannot_score(benchmark) {
        return Ok(BenchmarkResult::skipped(&benchmark.name, reason));
    }
    // All files in one pool: batches stay full and similar lengths meet.
    let prepared: Vec<Prepared> = benchmark
        .files
        .iter()
        .map(|file| prepare(file, pictures, seeing))
        .collect();
    let texts: Vec<Text> = prepared
        .iter()
        .flat_map(|p| p.texts.iter().cloned())
        .collect();
    let visual = pictures.tokens.as_ref().map_or(0, |t| t.size()[1] as usize);
    let window = model.lm().config.context as usize;
    let requests = score::requests(&model.tokenizer, &texts, window, visual)?;
    let scorer = Scorer {
        lm: model.lm(),
        batch_size,
    };
    let mut flat = scorer
        .score(&requests, pictures.tokens.as_ref())
        .into_iter();
    let files = benchmark
        .files
        .iter()
        .zip(&prepared)
        .map(|(file, prepared)| {
            let scores = prepared
                .shapes
                .iter()
                .map(|&n| flat.by_ref().take(n).collect())
                .collect();
            FileResult::new(&file.name, file.format, scores, &prepared.unusable)
        })
        .collect();
    let with_pictures = seeing && !pictures.rows.is_empty();
    Ok(BenchmarkResult::scored(
        &benchmark.name,
        with_pictures,
        files,
    ))
}

/// A file's candidates as texts to score, how many each usable item has, and the items
/// left out.
struct Prepared<'a> {
    texts: Vec<Text<'a>>,
    shapes: Vec<usize>,
    unusable: Vec<String>,
}

fn prepare<'a>(file: &'a BenchmarkFile, pictures: &Pictures, seeing: bool) -> Prepared<'a> {
    let mut prepared = Prepared {
        texts: Vec::new(),
        shapes: Vec::new(),
        unusable: file.unusable.clone(),
    };
    for (i, item) in file.items.iter().enumerate() {
        let wanted = seeing && item.candidates.iter().any(|c| c.image.is_some());
        let rows: Option<Vec<Option<usize>>> = if wanted {
            let row =
                |c: &benchmarks::Candidate| c.image.as_ref().and_then(|u| pictures.rows.get(u));
            item.candidates
                .iter()
                .map(|c| row(c).map(|&r| Some(r)))
                .collect()
        } else {
            Some(vec![None; item.candidates.len()])
        };
        let Some(rows) = rows else {
            let reason = format!("item {}: its picture could not be read", i + 1);
            prepared.unusable.push(reason);
            continue;
        };
        for (candidate, picture) in item.candidates.iter().zip(rows) {
            prepared.texts.push(Text {
                context: &candidate.context,
                continuation: &candidate.continuation,
                picture,
            });
        }
        prepared.shapes.push(item.candidates.len());
    }
    prepared
}

/// Every benchmark the step names, found and read.
async fn find_benchmarks(
    storage: &str,
    evaluation: &EvaluateSpec,
) -> Result<(Vec<Benchmark>, Ignored), WorkerError> {
    let (mut found, mut ignored) = (Vec::new(), Vec::new());
    for source in &evaluation.benchmarks {
        let root = match &source.files {
            BenchmarkFiles::Url(url) => Location::open_source(url).await?,
            BenchmarkFiles::World(world) => data::source_root(storage, world)
                .await?
                .join(crate::world::EVAL_FOLDER),
        };
        let images = source.images.as_deref().map(Location::open).transpose()?;
        let (benchmarks, skipped) =
            benchmarks::discover(&root, images.as_ref(), source.limit).await?;
        found.extend(benchmarks);
        ignored.extend(skipped);
    }
    Ok((found, ignored))
}

/// Scores every benchmark with `model`, `batch_size` sequences per forward pass;
/// `scored` hears of each result as it comes (and may stop the evaluation).
pub fn evaluate(
    model: &EvalModel,
    benchmarks: &[Benchmark],
    inputs: &VisualInputs,
    batch_size: usize,
    runtime: &tokio::runtime::Handle,
    mut scored: impl FnMut(&BenchmarkResult) -> Result<(), WorkerError>,
) -> Result<Vec<BenchmarkResult>, WorkerError> {
    let mut results = Vec::new();
    for benchmark in benchmarks {
        let _span = tracing::info_span!("eval", benchmark = %benchmark.name).entered();
        let pictures = runtime.block_on(Pictures::read(model, benchmark, inputs))?;
        let result = score_benchmark(model, benchmark, &pictures, batch_size)?;
        tracing::info!(benchmark = %result.name, accuracy = ?result.accuracy, items = result.items, skipped = ?result.skipped, "benchmark scored");
        scored(&result)?;
        results.push(result);
    }
    Ok(results)
}

/// The eval step: scores the evaluated phase's final checkpoint, writes the results
/// beside the job's phases and answers their summary as the task's results.
pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let started = Instant::now();
    let Work::Evaluate(evaluation) = &ctx.assignment.spec.work else {
        return Err(WorkerError::Config("not an eval step".into()));
    };
    let loaded = inputs::input_checkpoint(ctx, "the evaluated phase's final checkpoint")?;
    let url = ctx.assignment.input_checkpoint.clone().unwrap_or_default();
    inputs::require_finite(&loaded, &url)?;
    let model = EvalModel::from_checkpoint(&loaded, ctx.device)?;
    let batch_size = evaluation.batch_size as usize;
    let (benchmarks, ignored) = ctx
        .runtime
        .block_on(find_benchmarks(ctx.storage(), evaluation))?;
    let visual = match model.vision() {
        Some(vision) => ctx.runtime.block_on(VisualInputs::load(
            ctx.storage(),
            &evaluation.features,
            vision,
        ))?,
        None => VisualInputs::pixels(),
    };
    let total: usize = benchmarks
        .iter()
        .filter(|b| model.cannot_score(b).is_none())
        .flat_map(|b| &b.files)
        .map(|f| f.items.len())
        .sum();
    let mut metrics = Metrics {
        total_items: total as u64,
        ..Metrics::default()
    };
    let scored = evaluate(
        &model,
        &benchmarks,
        &visual,
        batch_size,
        &ctx.runtime,
        |result| {
            ctx.check_stop()?;
            metrics.items += result.items as u64;
            ctx.report(metrics, None, None);
            Ok(())
        },
    )?;
    let results = EvalResults {
        job: ctx.assignment.job_id.clone(),
        phase: loaded.manifest.phase.clone(),
        checkpoint: url.clone(),
        step: loaded.manifest.step,
        seconds: started.elapsed().as_secs_f64(),
        benchmarks: scored,
        ignored,
    };
    let place = ctx.output_root()?.join("results.json");
    let json = serde_json::to_vec_pretty(&results).map_err(|e| WorkerError::Data(e.to_string()))?;
    ctx.runtime.block_on(place.put(json))?;
    let non_finite: usize = results
        .benchmarks
        .iter()
        .flat_map(|b| &b.files)
        .map(|f| f.non_finite)
        .sum();
    if non_finite > 0 {
        return Err(WorkerError::Data(format!(
            "{non_finite} items scored non-finite log-likelihoods (NaN or infinite) with \
             checkpoint {url}: its scores mean nothing; per-item results, those items \
             counted wrong, are in {}",
            place.url()
        )));
    }
    Ok(TaskOutput {
        output: place.url().to_string(),
        metrics,
        results: results.summary(),
    })
}

#[cfg(test)]
mod tests;
