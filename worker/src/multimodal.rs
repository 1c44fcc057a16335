//! Phases 2 and 4: the model learns from pictures. Phase 2 (`vision_language`) learns to
//! caption images, phase 4 (`tasks`) to answer questions about them, each taught only
//! the answer ([`crate::prompts`]).
//!
//! Phase 2 starts from phase 1's final checkpoint: the language model's weights load as
//! saved, the vision path starts fresh. Phase 4 starts from phase 2's, vision included
//! ([`crate::inputs`]). Each source is a pool of examples drawn at the phase's weights;
//! phase 4 may replay phase 2's captions beside its questions (`as: captions`).

use std::collections::BTreeMap;

use outloud_core::spec::{DataKind, ReadAs};
use outloud_core::task::Metrics;
use outloud_core::task_spec::{DataInput, TrainKind};
use tch::{Device, Kind, Tensor, nn};

use crate::context::{TaskContext, TaskOutput};
use crate::data;
use crate::error::WorkerError;
use crate::fit::{self, Consumed, Fit, Loss, WEIGHT_DECAY};
use crate::inputs::{self, Start};
use crate::ledger::{self, Seen};
use crate::loaders;
use crate::mix::Mixture;
use crate::optim::AdamW;
use crate::probes;
use crate::prompts::{Example, caption_example, question_example};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::visual::VisualInputs;
use crate::vlm::{EncoderKind, IGNORE, VisionPath, Vlm};

/// A batch of pictures (B, 3, S, S), ids and targets (B, T), right-padded; the words
/// it teaches, and which examples it holds (for the word ledger).
struct Batch {
    pixels: Tensor,
    ids: Tensor,
    targets: Tensor,
    words: u64,
    seen: Vec<Seen>,
}

/// What a phase's batches draw from: a pool of examples per source, each pool's number
/// in the word ledger, and the mixture that picks a pool per row.
struct Draws<'a> {
    pools: &'a [Vec<Example>],
    counted: &'a [usize],
    mixture: &'a Mixture,
}

/// The batch of `step`. Each row draws its source at the phase's weights, then an
/// example of that source.
fn batch(draws: &Draws, seed: u64, step: u64, size: usize, pad: i64, device: Device) -> Batch {
    let mut rng = Rng::for_stream(seed, step);
    let mut seen = Vec::with_capacity(size);
    let chosen: Vec<&Example> = (0..size)
        .map(|_| {
            let source = draws.mixture.pick(&mut rng);
            let pool = &draws.pools[source];
            let index = rng.below(pool.len() as u64);
            let example = &pool[index as usize];
            seen.push(Seen {
                source: draws.counted[source],
                start: index,
                len: 1,
                words_per_unit: example.words as f64,
            });
            example
        })
        .collect();
    let longest = chosen.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for example in &chosen {
        for t in 0..longest {
            let id = example.ids.get(t).copied();
            ids.push(id.unwrap_or(pad));
            targets.push(match id {
                Some(id) if t >= example.taught_from => id,
                _ => IGNORE,
            });
        }
    }
    let shape = [size as i64, longest as i64];
    let pixels = Tensor::stack(
        &chosen
            .iter()
            .map(|e| e.pixels.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    )
    .to_device(device);
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let targets = Tensor::from_slice(&targets).view(shape).to_device(device);
    Batch {
        pixels,
        ids,
        targets,
        words: chosen.iter().map(|e| e.words).sum(),
        seen,
    }
}

/// Whether `source` gives this phase captions (else questions): what the spec says
/// (`as`), else what its kind holds, a world giving phase 2 captions and phase 4
/// questions.
fn reads_captions(kind: TrainKind, source: &DataInput) -> bool {
    match source.read_as {
        Some(ReadAs::Captions) => true,
        Some(ReadAs::Questions) => false,
        None => match source.kind {
            DataKind::ImageCaptions => true,
            DataKind::PictureBook => kind == TrainKind::VisionLanguage,
            _ => false,
        },
    }
}

/// A phase's examples: a pool per source, the weight the spec gives each, and how many
/// pictures were skipped.
struct Pools {
    pools: Vec<Vec<Example>>,
    /// Each pool's name in the word ledger.
    keys: Vec<String>,
    weights: Vec<Option<f64>>,
    skipped: u64,
    /// Each source read, as `name#captions` or `name#questions` -> SHA-256 of what was
    /// read of it (its files and pictures).
    checksums: BTreeMap<String, String>,
}

/// Reads the phase's training examples, a pool per source.
fn examples(
    ctx: &TaskContext,
    tokenizer: &Tokenizer,
    image_size: u32,
    inputs: &VisualInputs,
) -> Result<Pools, WorkerError> {
    let train = ctx.train()?;
    let (mut pools, mut weights, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let mut skipped = 0;
    let mut checksums = inputs.checksums.clone();
    for source in &train.data {
        if source.kind == DataKind::ImageFeatures {
            continue; // read by VisualInputs
        }
        let mut out = Vec::new();
        let (root, read) = ctx
            .runtime
            .block_on(data::source_root(ctx.storage(), source))?
            .logging_reads();
        let book = source.kind == DataKind::PictureBook;
        let captions = reads_captions(train.kind, source);
        let unit = if captions { "captions" } else { "questions" };
        keys.push(ledger::key(source, unit));
        if captions {
            let location = if book {
                root.join("captions/train.jsonl")
            } else {
                root
            };
            let (pairs, lost) = ctx
                .runtime
                .block_on(loaders::captioned(&location, image_size))?;
            skipped += lost.count;
            for pair in pairs {
                match inputs.for_picture(&pair.key, pair.pixels) {
                    Some(input) => out.push(caption_example(tokenizer, input, &pair.caption)?),
                    None => skipped += 1,
                }
            }
        } else {
            let location = if book {
                root.join("vqa/train.jsonl")
            } else {
                root
            };
            let (asked, lost) = ctx
                .runtime
                .block_on(loaders::questions(&location, image_size))?;
            skipped += lost.count;
            for item in asked {
                match inputs.for_picture(&item.key, item.pixels) {
                    Some(input) => out.push(question_example(
                        tokenizer,
                        input,
                        &item.question,
                        &item.answer,
                    )?),
                    None => skipped += 1,
                }
            }
        }
        if out.is_empty() {
            return Err(WorkerError::Data(format!(
                "step `{}` found no usable examples in source `{}`",
                ctx.assignment.step, source.name
            )));
        }
        weights.push(source.weight);
        pools.push(out);
        let name = format!("{}#{unit}", source.name);
        checksums.extend(read.digest().map(|sha| (name, sha)));
    }
    if pools.is_empty() {
        return Err(WorkerError::Data(format!(
            "step `{}` found no usable examples",
            ctx.assignment.step
        )));
    }
    Ok(Pools {
        pools,
        keys,
        weights,
        skipped,
        checksums,
    })
}

/// A vision-language model and its optimizer, started as `start_from` says: resumed
/// from its own checkpoint, or handed the previous phase's weights
/// ([`inputs::hand_over`]).
pub(crate) struct Started {
    pub vs: nn::VarStore,
    pub model: Vlm,
    pub optimizer: AdamW,
    pub start: Metrics,
    pub resumed: bool,
}

pub(crate) fn start_vlm(
    ctx: &TaskContext,
    shape: crate::model::GptConfig,
    vision: &VisionPath,
    start_from: &Start,
    frozen: &[&str],
) -> Result<Started, WorkerError> {
    tch::manual_seed(ctx.train()?.seed as i64);
    let mut vs = nn::VarStore::new(ctx.device);
    let model = Vlm::new(&vs.root(), shape, vision.config());
    fit::set_precision(&mut vs);
    fit::freeze(&vs, frozen);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY);
    let (start, resumed) = match start_from {
        Start::Resume(loaded) => (inputs::restore(&vs, &mut optimizer, loaded)?, true),
        Start::HandOver(previous) => {
            inputs::hand_over(&vs, previous)?;
            (Metrics::default(), false)
        }
    };
    Ok(Started {
        vs,
        model,
        optimizer,
        start,
        resumed,
    })
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let phase = ctx.train()?;
    let shape = phase.model.into();
    let vision: VisionPath = phase
        .vision
        .ok_or_else(|| WorkerError::Config("this phase needs `model.vision`".into()))?
        .into();
    let start_from = Start::find(ctx)?;
    let tokenizer = Tokenizer::from_json(&start_from.checkpoint().tokenizer)?;

    let Started {
        vs,
        model,
        mut optimizer,
        start,
        resumed,
    } = start_vlm(
        ctx,
        shape,
        &vision,
        &start_from,
        if vision.frozen { &["vision."] } else { &[] },
    )?;
    let inputs = ctx
        .runtime
        .block_on(VisualInputs::load(ctx.storage(), &phase.data, &vision))?;
    let Pools {
        pools,
        keys,
        weights: given,
        skipped,
        checksums,
    } = examples(ctx, &tokenizer, vision.image_size, &inputs)?;
    let mut ledger = start_from.checkpoint().ledger.clone();
    let counted: Vec<usize> = keys
        .iter()
        .zip(&pools)
        .map(|(key, pool)| ledger.register(key, pool.len() as u64))
        .collect();
    let sizes: Vec<f64> = pools.iter().map(|p| p.len() as f64).collect();
    let mixture = Mixture::of(&given, &sizes);
    let all = || pools.iter().flatten();
    let longest = all().map(|e| e.ids.len()).max().unwrap_or(0) as u32;
    let visual_tokens = match vision.encoder {
        EncoderKind::Vit => vision.vit_tokens(),
        EncoderKind::Features => pools[0][0].pixels.size()[0] as u32,
    };
    if longest + visual_tokens > shape.context {
        return Err(WorkerError::Config(format!(
            "{} visual tokens and {longest} text tokens exceed the context of {}",
            visual_tokens, shape.context
        )));
    }
    tracing::info!(
        examples = all().count(),
        shares = ?mixture.shares(),
        skipped,
        "examples ready"
    );
    let mut fit = Fit::new(ctx, &tokenizer, shape, Some(vision), ledger)?;
    fit.provenance.data = checksums;
    let pad = tokenizer.end_of_text() as i64;
    let seed = fit.draw_seed;
    let (rows, device) = (phase.batch_size as usize, ctx.device);
    let taught = |targets: &Tensor| targets.ne(IGNORE).sum(Kind::Int64).int64_value(&[]);
    let mut output = fit.run(
        &vs,
        &mut optimizer,
        start,
        resumed,
        move |step| {
            let draws = Draws {
                pools: &pools,
                counted: &counted,
                mixture: &mixture,
            };
            let b = batch(&draws, seed, step, rows, pad, device);
            let consumed = Consumed {
                tokens: taught(&b.targets) as u64,
                words: b.words,
                synthetic_words: 0,
                seen: b.seen,
            };
            Ok(((b.pixels, b.ids, b.targets), consumed))
        },
        |(pixels, ids, targets)| Loss {
            mean: model.loss(pixels, ids, targets),
            weight: taught(targets) as f64,
        },
    )?;
    output.results.counts.images_skipped = skipped;
    output.results.probes.extend(probes::after_phase(
        ctx,
        &model,
        &tokenizer,
        vision.image_size,
        &inputs,
    )?);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, Loaded};
    use crate::model::Gpt;

    #[test]
    fn the_hand_over_loads_exactly_the_saved_language_model() {
        let lm = crate::model::test_config(64);
        let before = nn::VarStore::new(Device::Cpu);
        let _ = Gpt::new(&before.root(), lm);
        let saved: Vec<(String, Tensor)> = before.variables().into_iter().collect();
        let manifest: checkpoint::Manifest = serde_json::from_value(serde_json::json!({
            "format": checkpoint::FORMAT, "job": "j", "phase": "language", "step": 1, "total_steps": 1,
            "model": lm, "loss": 0.0, "tokens": 0, "words": 0, "files": {}
        }))
        .unwrap();
        let previous = Loaded {
            manifest,
            weights: saved,
            optimizer: None,
            tokenizer: Vec::new(),
            ledger: Default::default(),
        };
        let after = nn::VarStore::new(Device::Cpu);
        let _ = Vlm::new(&after.root(), lm, crate::vlm::test_vision_path().config());
        inputs::hand_over(&after, &previous).unwrap();
        let loaded = after.variables();
        for (name, tensor) in before.variables() {
            assert!(
                loaded[&name].equal(&tensor),
                "{name} differs from the saved weight"
            );
        }
        assert!(
            loaded.keys().any(|n| n.starts_with("vision.")),
            "the vision path exists, fresh"
        );
    }

    #[test]
    fn only_the_answer_is_taught() {
        let docs = vec![crate::corpus::generate(1, 3000)];
        let tokenizer = Tokenizer::train(&docs, 400).unwrap();
        let pixels = Tensor::zeros([3, 8, 8], (Kind::Float, Device::Cpu));
        let example =
            question_example(&tokenizer, pixels, "what colour is the ball?", "red").unwrap();
        let examples = [vec![example]];
        let one = Mixture::new(&[1.0]);
        let Batch {
            ids,
            targets,
            words,
            seen,
            ..
        } = batch(
            &Draws {
                pools: &examples,
                counted: &[5],
                mixture: &one,
            },
            0,
            0,
            1,
            0,
            Device::Cpu,
        );
        assert_eq!((seen[0].source, seen[0].start, seen[0].len), (5, 0, 1));
        let taught: Vec<i64> = Vec::try_from(targets.view([-1])).unwrap();
        let all: Vec<i64> = Vec::try_from(ids.view([-1])).unwrap();
        let from = examples[0][0].taught_from;
        assert!(taught[..from].iter().all(|t| *t == IGNORE));
        assert_eq!(&taught[from..], &all[from..]);
        assert_eq!(
            tokenizer
                .decode(
                    &all[from..all.len() - 1]
                        .iter()
                        .map(|&i| i as u32)
                        .collect::<Vec<_>>()
                )
                .unwrap()
                .trim(),
            "red"
        );
        assert_eq!(words, 1);
    }
}
