//! Phase 1, language bootstrapping: a causal LM learns from text alone.
//!
//! The text of the phase's sources becomes one token stream; each step trains on
//! `batch_size` random windows of it (the loop itself is [`crate::fit`]).

use outloud_core::task::Metrics;
use tch::{Device, Kind, Tensor, nn};

use crate::context::{TaskContext, TaskOutput};
use crate::data::read_corpus;
use crate::error::WorkerError;
use crate::fit::{self, Consumed, Fit, WEIGHT_DECAY};
use crate::inputs;
use crate::model::{Gpt, GptConfig};
use crate::optim::AdamW;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

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
    let phase = ctx.train()?;
    let shape = GptConfig::from(phase.model);
    let corpus = ctx
        .runtime
        .block_on(read_corpus(ctx.storage(), &phase.data))?;
    let resumed = ctx.runtime.block_on(inputs::resume_point(ctx));
    let tokenizer = match &resumed {
        Some(loaded) => Tokenizer::from_json(&loaded.tokenizer)?,
        None => Tokenizer::train(&corpus.documents, shape.vocab_size)?,
    };
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
    let mut vs = nn::VarStore::new(ctx.device);
    let model = Gpt::new(&vs.root(), shape);
    fit::set_precision(&mut vs);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY);
    let start = match &resumed {
        Some(loaded) => inputs::restore(&vs, &mut optimizer, loaded)?,
        None => Metrics::default(),
    };
    let fit = Fit {
        ctx,
        root: ctx.output_root()?,
        tokenizer_json: tokenizer.to_json()?,
        model: shape,
        vision: None,
    };
    let tokens = phase.batch_size as u64 * context as u64;
    let words = (tokens as f64 * words_per_token).round() as u64;
    fit.run(&vs, &mut optimizer, start, resumed.is_some(), |step| {
        let (x, y) = batch(
            &data,
            phase.seed,
            step,
            phase.batch_size as i64,
            context,
            ctx.device,
        );
        Ok((model.loss(&x, &y), Consumed { tokens, words }))
    })
}
