//! Phase 3b: the model trains its language part on the captions it dreamed, mixed with
//! real text at the phase's weights. It starts from the checkpoint that dreamed (or its
//! own, when resuming); the vision path is carried over untouched, so the next phase
//! still sees.

use outloud_core::task::Metrics;
use outloud_core::task_spec::DataInput;
use tch::{Device, Tensor, nn};

use super::filters::Caption;
use crate::context::{TaskContext, TaskOutput};
use crate::data::read_corpus;
use crate::error::WorkerError;
use crate::fit::{self, Consumed, Fit, WEIGHT_DECAY};
use crate::inputs::{self, Start};
use crate::mix::Mixture;
use crate::optim::AdamW;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::vlm::{VisionPath, Vlm};

/// One source's text as tokens, and how many words a token stands for.
struct Stream {
    tokens: Tensor,
    words_per_token: f64,
}

/// The documents of one source: a synthesize step's committed captions, or real text.
async fn documents(storage: &str, source: &DataInput) -> Result<Vec<String>, WorkerError> {
    if source.parts.is_empty() {
        return Ok(read_corpus(storage, std::slice::from_ref(source))
            .await?
            .documents);
    }
    let mut captions = Vec::new();
    for part in &source.parts {
        let bytes = outloud_core::storage::Location::open(part)?.get().await?;
        for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: Caption = serde_json::from_str(line)
                .map_err(|e| WorkerError::Data(format!("{part}:{}: {e}", i + 1)))?;
            captions.push(row.caption);
        }
    }
    // One caption per line: each is its own text, ended by end-of-text.
    Ok(vec![captions.join("\n")])
}

fn stream(
    tokenizer: &Tokenizer,
    name: &str,
    docs: &[String],
    context: i64,
) -> Result<Stream, WorkerError> {
    let tokens = tokenizer.encode_stream(docs)?;
    let words: usize = docs.iter().map(|d| d.split_whitespace().count()).sum();
    if (tokens.len() as i64) < context + 2 {
        return Err(WorkerError::Data(format!(
            "source `{name}` has {} tokens, too few for a context of {context}",
            tokens.len()
        )));
    }
    Ok(Stream {
        words_per_token: words as f64 / tokens.len() as f64,
        tokens: Tensor::from_slice(&tokens),
    })
}

/// The (inputs, targets) batch of `step` and the words it holds: each row a random
/// window of the source the mixture draws for it.
fn batch(
    streams: &[Stream],
    mixture: &Mixture,
    seed: u64,
    step: u64,
    rows: usize,
    context: i64,
    device: Device,
) -> (Tensor, Tensor, u64) {
    let mut rng = Rng::for_stream(seed, step);
    let mut windows = Vec::with_capacity(rows);
    let mut words = 0.0;
    for _ in 0..rows {
        let source = &streams[mixture.pick(&mut rng)];
        let span = source.tokens.size()[0] - context - 1;
        let start = rng.below(span as u64) as i64;
        windows.push(source.tokens.narrow(0, start, context + 1));
        words += source.words_per_token * context as f64;
    }
    let windows = Tensor::stack(&windows, 0).to_device(device);
    (
        windows.narrow(1, 0, context),
        windows.narrow(1, 1, context),
        words.round() as u64,
    )
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let phase = ctx.train()?;
    let start_from = Start::find(ctx)?;
    let loaded = start_from.checkpoint();
    let vision: VisionPath = loaded.manifest.vision.ok_or_else(|| {
        WorkerError::Config("self-synthesis starts from a checkpoint with a vision path".into())
    })?;
    let shape = loaded.manifest.model;
    let tokenizer = Tokenizer::from_json(&loaded.tokenizer)?;
    let context = shape.context as i64;
    let mut streams = Vec::new();
    for source in &phase.data {
        let docs = ctx.runtime.block_on(documents(ctx.storage(), source))?;
        streams.push(stream(&tokenizer, &source.name, &docs, context)?);
    }
    let weights: Vec<f64> = phase.data.iter().map(|d| d.weight).collect();
    let mixture = Mixture::new(&weights);
    tracing::info!(sources = streams.len(), ?weights, "text mixture ready");

    tch::manual_seed(phase.seed as i64);
    let mut vs = nn::VarStore::new(ctx.device);
    let model = Vlm::new(&vs.root(), shape, vision.config());
    fit::set_precision(&mut vs);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY);
    let (start, resumed) = match &start_from {
        Start::Resume(loaded) => (inputs::restore(&vs, &mut optimizer, loaded)?, true),
        Start::HandOver(previous) => {
            inputs::load_weights(&vs, &previous.weights, |_| true)?;
            (Metrics::default(), false)
        }
    };
    // The vision path is carried over as it was: no gradient, no weight decay.
    for (name, var) in vs.variables() {
        if name.starts_with("vision.") || name.starts_with("projector.") {
            let _ = var.set_requires_grad(false);
        }
    }
    let fit = Fit {
        ctx,
        root: ctx.output_root()?,
        tokenizer_json: tokenizer.to_json()?,
        model: shape,
        vision: Some(vision),
    };
    let rows = phase.batch_size as usize;
    fit.run(&vs, &mut optimizer, start, resumed, |step| {
        let (x, y, words) = batch(
            &streams, &mixture, phase.seed, step, rows, context, ctx.device,
        );
        let tokens = (rows as i64 * context) as u64;
        Ok((model.lm.loss(&x, &y), Consumed { tokens, words }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_draw_sources_at_their_weights_and_repeat_by_seed() {
        // Two sources told apart by their tokens: all 1s and all 2s.
        let streams = [1i64, 2].map(|id| Stream {
            tokens: Tensor::from_slice(&vec![id; 64]),
            words_per_token: 1.0,
        });
        let mixture = Mixture::new(&[0.25, 0.75]);
        let draw = |seed| {
            let (x, _, _) = batch(&streams, &mixture, seed, 3, 4_000, 8, Device::Cpu);
            x
        };
        let x = draw(5);
        assert!(
            x.equal(&draw(5)),
            "the same seed and step draw the same batch"
        );
        let first: Vec<i64> = Vec::try_from(x.select(1, 0)).unwrap();
        let share = first.iter().filter(|&&t| t == 1).count() as f64 / first.len() as f64;
        let sd = (0.25f64 * 0.75 / 4_000.0).sqrt();
        assert!((share - 0.25).abs() < 4.0 * sd, "{share}");
    }
}
