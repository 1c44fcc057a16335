//! Phase 3b: the model trains its language part on the captions it dreamed, mixed with
//! real text at the phase's weights. It starts from the checkpoint that dreamed (or its
//! own, when resuming); the vision path is carried over untouched, so the next phase
//! still sees.

use outloud_core::task_spec::DataInput;
use sha2::{Digest, Sha256};

use super::filters::Caption;
use crate::context::{TaskContext, TaskOutput};
use crate::data::read_corpus;
use crate::error::WorkerError;
use crate::fit::{Fit, Loss};
use crate::inputs::Start;
use crate::mix::{Mixture, TextStream, text_batch};
use crate::multimodal::{Started, start_vlm};
use crate::token_shards;
use crate::tokenizer::Tokenizer;
use crate::vlm::VisionPath;

/// The documents of one source (a synthesize step's committed captions, or real text),
/// and the SHA-256 of the bytes read.
async fn documents(
    storage: &str,
    source: &DataInput,
) -> Result<(Vec<String>, String), WorkerError> {
    if source.parts.is_empty() {
        let mut corpus = read_corpus(storage, std::slice::from_ref(source)).await?;
        let checksum = corpus.checksums.remove(&source.name).unwrap_or_default();
        return Ok((corpus.documents, checksum));
    }
    let mut captions = Vec::new();
    let mut hash = Sha256::new();
    for part in &source.parts {
        let bytes = outloud_core::storage::Location::open(part)?.get().await?;
        hash.update(&bytes);
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
    Ok((vec![captions.join("\n")], hex::encode(hash.finalize())))
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
    let mut ledger = loaded.ledger.clone();
    let mut streams = Vec::new();
    let mut checksums = std::collections::BTreeMap::new();
    for source in &phase.data {
        let (docs, checksum) = ctx.runtime.block_on(documents(ctx.storage(), source))?;
        checksums.insert(source.name.clone(), checksum);
        let synthetic = !source.parts.is_empty();
        // Captions this round dreamed are read once: only real text is kept tokenized.
        let tokens = if synthetic {
            tokenizer.encode_stream(&docs)?
        } else {
            token_shards::tokens(&ctx.runtime, ctx.storage(), &tokenizer, &docs)?
        };
        let stream = TextStream::new(tokens, &source.name, &docs, context, synthetic)?;
        streams.push(stream.counted_in(&mut ledger, source));
    }
    let mixture = Mixture::of_streams(&phase.data, &streams);
    tracing::info!(shares = ?mixture.shares(), "text mixture ready");

    // The vision path is carried over as it was: no gradient, no weight decay.
    let frozen = ["vision.", "projector."];
    let Started {
        vs,
        model,
        mut optimizer,
        start,
        resumed,
    } = start_vlm(ctx, shape, &vision, &start_from, &frozen)?;
    let mut fit = Fit::new(ctx, &tokenizer, shape, Some(vision), ledger)?;
    fit.provenance.data = checksums;
    let (rows, draws, device) = (phase.batch_size as usize, fit.draw_seed, ctx.device);
    fit.run(
        &vs,
        &mut optimizer,
        start,
        resumed,
        move |step| {
            let b = text_batch(&streams, &mixture, draws, step, rows, context, device);
            Ok(((b.inputs, b.targets), b.consumed))
        },
        |(inputs, targets)| Loss {
            mean: model.lm.loss(inputs, targets),
            weight: targets.numel() as f64,
        },
    )
}
