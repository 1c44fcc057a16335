//! Phase 1, language bootstrapping: a causal LM learns from text alone.
//!
//! Each source's text becomes a token stream; each step trains on `batch_size` random
//! windows, each from a source drawn at the phase's weights ([`crate::mix`]); the loop
//! itself is [`crate::fit`].

use outloud_core::task::Metrics;
use tch::nn;

use crate::context::{TaskContext, TaskOutput};
use crate::data::read_corpus;
use crate::error::WorkerError;
use crate::fit::{self, Fit, Loss, WEIGHT_DECAY};
use crate::mix::{Mixture, TextStream, text_batch};
use crate::model::{Gpt, GptConfig};
use crate::optim::AdamW;
use crate::tokenizer::Tokenizer;
use crate::{inputs, token_shards};

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let phase = ctx.train()?;
    let shape = GptConfig::from(phase.model);
    let mut sources = Vec::new();
    let mut checksums = std::collections::BTreeMap::new();
    for source in &phase.data {
        let corpus = read_corpus(ctx.storage(), std::slice::from_ref(source));
        let corpus = ctx.runtime.block_on(corpus)?;
        checksums.extend(corpus.checksums);
        sources.push(corpus.documents);
    }
    let resumed = ctx.runtime.block_on(inputs::resume_point(ctx));
    // A phase that imports a checkpoint continues its model, tokenizer and ledger.
    let imported = match resumed {
        Some(_) => None,
        None => inputs::imported(ctx)?,
    };
    let tokenizer = match resumed.as_ref().or(imported.as_ref()) {
        Some(loaded) => Tokenizer::from_json(&loaded.tokenizer)?,
        None => Tokenizer::train(&sources.concat(), shape.vocab_size)?,
    };
    let context = shape.context as i64;
    let mut ledger = resumed
        .as_ref()
        .or(imported.as_ref())
        .map(|l| l.ledger.clone())
        .unwrap_or_default();
    let streams = phase
        .data
        .iter()
        .zip(&sources)
        .map(|(source, docs)| {
            let tokens = token_shards::tokens(&ctx.runtime, ctx.storage(), &tokenizer, docs)?;
            let stream = TextStream::new(tokens, &source.name, docs, context, false)?;
            Ok(stream.counted_in(&mut ledger, source))
        })
        .collect::<Result<Vec<_>, WorkerError>>()?;
    let mixture = Mixture::of_streams(&phase.data, &streams);
    tracing::info!(
        shares = ?mixture.shares(),
        vocab = tokenizer.vocab_size(),
        "corpus ready"
    );

    tch::manual_seed(phase.seed as i64);
    let mut vs = nn::VarStore::new(ctx.device);
    let model = Gpt::new(&vs.root(), shape);
    fit::set_precision(&mut vs);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY);
    let start = match (&resumed, &imported) {
        (Some(loaded), _) => inputs::restore(&vs, &mut optimizer, loaded)?,
        (None, Some(loaded)) => {
            inputs::hand_over(&vs, loaded)?;
            Metrics::default()
        }
        (None, None) => Metrics::default(),
    };
    let mut fit = Fit::new(ctx, &tokenizer, shape, None, ledger)?;
    fit.provenance.data = checksums;
    let (rows, draws, device) = (phase.batch_size as usize, fit.draw_seed, ctx.device);
    fit.run(
        &vs,
        &mut optimizer,
        start,
        resumed.is_some(),
        move |step| {
            let b = text_batch(&streams, &mixture, draws, step, rows, context, device);
            Ok(((b.inputs, b.targets), b.consumed))
        },
        |(inputs, targets)| Loss {
            mean: model.loss(inputs, targets),
            weight: targets.numel() as f64,
        },
    )
}
