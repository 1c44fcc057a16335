//! Phase 1, language bootstrapping: a causal LM learns from text alone.
//!
//! One loop, nanoGPT-style: resume or start -> (lr -> batch -> loss -> backward ->
//! clip -> step -> report -> checkpoint) per step -> final checkpoint. Batches are drawn
//! from a seeded generator per step, so a run resumed from step N sees exactly the
//! batches the lost run would have seen.

use outloud_coordinator::scheduler::Metrics;
use outloud_coordinator::storage::Location;
use tch::{Device, Kind, Tensor, nn};

use crate::checkpoint::{self, Manifest, ToSave};
use crate::data::read_corpus;
use crate::error::WorkerError;
use crate::model::Gpt;
use crate::optim::{AdamW, learning_rate};
use crate::rng::Rng;
use crate::task::{TaskContext, TaskOutput};
use crate::tokenizer::Tokenizer;

const WEIGHT_DECAY: f64 = 0.1;
const MAX_GRAD_NORM: f64 = 1.0;

/// Where the phase keeps its checkpoints: `<storage>/jobs/<job>/<phase>/`.
fn phase_root(ctx: &TaskContext) -> Result<Location, WorkerError> {
    let a = &ctx.assignment;
    Ok(Location::open(&a.spec.storage)?.join(&format!("jobs/{}/{}", a.job_id, a.phase)))
}

/// Where training starts: the newest checkpoint of this task that verifies, else nothing.
/// The coordinator names the newest one reported; if it is corrupt or incomplete it is
/// refused (never loaded) and older ones in the same folder are tried, newest first.
async fn resume_point(ctx: &TaskContext) -> Option<checkpoint::Loaded> {
    let newest = ctx.assignment.resume_checkpoint.as_deref()?;
    let mut candidates = vec![newest.to_string()];
    if let Ok(root) = phase_root(ctx) {
        candidates.extend(older_checkpoints(&root.join("checkpoints"), newest).await);
    }
    for url in candidates {
        let Ok(location) = Location::open(&url) else {
            continue;
        };
        match checkpoint::load(&location).await {
            Ok(loaded) => return Some(loaded),
            Err(e) => tracing::warn!(error = %e, "checkpoint refused; trying an older one"),
        }
    }
    tracing::warn!("no checkpoint verifies; starting over");
    None
}

/// Checkpoint folders under `folder` named before `newest` (names sort by step), newest first.
async fn older_checkpoints(folder: &Location, newest: &str) -> Vec<String> {
    let Ok(objects) = folder.list().await else {
        return Vec::new();
    };
    let mut found: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            o.url()
                .strip_suffix(&format!("/{}", checkpoint::MANIFEST_FILE))
        })
        .filter(|dir| *dir < newest)
        .map(str::to_string)
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found
}

/// Overwrites every variable of `vs` with the saved tensor of the same name.
pub fn load_weights(vs: &nn::VarStore, saved: &[(String, Tensor)]) -> Result<(), WorkerError> {
    let saved: std::collections::HashMap<&str, &Tensor> =
        saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
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
        }
        Ok(())
    })
}

/// The (inputs, targets) batch of `step`: `batch` random windows of the token stream.
fn batch(
    data: &Tensor,
    seed: u64,
    step: u64,
    batch: i64,
    context: i64,
    device: Device,
) -> (Tensor, Tensor) {
    let mut rng = Rng::for_stream(seed, step);
    let span = data.size()[0] - context - 1;
    let starts: Vec<i64> = (0..batch).map(|_| rng.below(span as u64) as i64).collect();
    let offsets = Tensor::arange(context + 1, (Kind::Int64, Device::Cpu));
    let index = Tensor::from_slice(&starts).view([batch, 1]) + offsets.view([1, context + 1]); // (B, T+1)
    let windows = data
        .index_select(0, &index.view([-1]))
        .view([batch, context + 1])
        .to_device(device);
    (windows.narrow(1, 0, context), windows.narrow(1, 1, context))
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let a = &ctx.assignment;
    let phase = &a.spec.phases[a.lease.task.phase as usize];
    let shape = a.spec.model.shape().map_err(WorkerError::Config)?;
    let root = phase_root(ctx)?;
    let corpus = ctx.runtime.block_on(read_corpus(&a.spec, &phase.data))?;
    let resumed = ctx.runtime.block_on(resume_point(ctx));
    let tokenizer = match &resumed {
        Some(loaded) => Tokenizer::from_json(&loaded.tokenizer)?,
        None => Tokenizer::train(&corpus.documents, shape.vocab_size)?,
    };
    let tokenizer_json = tokenizer.to_json()?;
    let stream = tokenizer.encode_stream(&corpus.documents)?;
    let context = shape.context as i64;
    if (stream.len() as i64) < 2 * (context + 1) {
        return Err(WorkerError::Data(format!(
            "{} tokens is too little text for a context of {context}",
            stream.len()
        )));
    }
    let words_per_token = corpus.words as f64 / stream.len() as f64;
    let data = Tensor::from_slice(&stream);
    tracing::info!(
        documents = corpus.documents.len(),
        words = corpus.words,
        tokens = stream.len(),
        vocab = tokenizer.vocab_size(),
        "corpus ready"
    );

    tch::manual_seed(phase.seed as i64);
    let vs = nn::VarStore::new(ctx.device);
    let model = Gpt::new(&vs.root(), shape);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY);
    let mut start = 0;
    if let Some(loaded) = &resumed {
        load_weights(&vs, &loaded.weights)?;
        if let Some(state) = &loaded.optimizer {
            optimizer
                .load_state(state, loaded.manifest.step as i64)
                .map_err(WorkerError::Config)?;
        }
        start = loaded.manifest.step;
        tracing::info!(step = start, "resumed from checkpoint");
    }

    let tokens_per_step = phase.batch_size as u64 * context as u64;
    let mut metrics = Metrics {
        step: start,
        total_steps: phase.steps,
        tokens: start * tokens_per_step,
        ..Metrics::default()
    };
    metrics.words = (metrics.tokens as f64 * words_per_token) as u64;
    let mut window = LossWindow::default();
    let mut resumed_from = resumed.as_ref().map(|l| l.manifest.step);
    for step in start..phase.steps {
        ctx.check_stop()?;
        let lr = learning_rate(step, phase.steps, phase.warmup_steps, phase.learning_rate);
        let (x, y) = batch(
            &data,
            phase.seed,
            step,
            phase.batch_size as i64,
            context,
            ctx.device,
        );
        optimizer.zero_grad();
        let loss = model.loss(&x, &y);
        loss.backward();
        optimizer.clip_grad_norm(MAX_GRAD_NORM);
        optimizer.step(lr);
        window.add(loss.double_value(&[]));

        metrics.step = step + 1;
        metrics.tokens += tokens_per_step;
        metrics.words = (metrics.tokens as f64 * words_per_token) as u64;
        let checkpoint_due =
            metrics.step.is_multiple_of(phase.checkpoint_every) && metrics.step < phase.steps;
        let first = step == start;
        if checkpoint_due || first || window.due() {
            metrics.loss = window.take();
            let checkpoint = if checkpoint_due {
                let location = root.join(&format!("checkpoints/step-{:06}", metrics.step));
                let manifest = manifest(ctx, &metrics, shape);
                let pieces = ToSave {
                    weights: named(&vs),
                    optimizer: Some(optimizer.state()),
                    tokenizer: &tokenizer_json,
                };
                ctx.runtime
                    .block_on(checkpoint::save(&location, pieces, manifest))?;
                Some(location.url().to_string())
            } else {
                None
            };
            ctx.report(metrics, checkpoint, resumed_from.take());
        }
    }
    if window.count > 0 {
        metrics.loss = window.take();
    }
    let location = root.join("final");
    let pieces = ToSave {
        weights: named(&vs),
        optimizer: Some(optimizer.state()),
        tokenizer: &tokenizer_json,
    };
    ctx.runtime.block_on(checkpoint::save(
        &location,
        pieces,
        manifest(ctx, &metrics, shape),
    ))?;
    Ok(TaskOutput {
        output: location.url().to_string(),
        metrics,
    })
}

fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn manifest(ctx: &TaskContext, metrics: &Metrics, model: crate::model::GptConfig) -> Manifest {
    Manifest {
        format: checkpoint::FORMAT.into(),
        job: ctx.assignment.job_id.clone(),
        phase: ctx.assignment.phase.clone(),
        step: metrics.step,
        total_steps: metrics.total_steps,
        model,
        loss: metrics.loss,
        tokens: metrics.tokens,
        words: metrics.words,
        files: Default::default(),
    }
}

/// Mean loss since the last report, and when the next report is due.
#[derive(Default)]
struct LossWindow {
    sum: f64,
    count: u32,
    since: Option<std::time::Instant>,
}

impl LossWindow {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);

    fn add(&mut self, loss: f64) {
        self.sum += loss;
        self.count += 1;
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= Self::EVERY)
    }

    fn take(&mut self) -> f64 {
        let mean = self.sum / self.count.max(1) as f64;
        *self = Self::default();
        mean
    }
}
