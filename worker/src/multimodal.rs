//! Phases 2 and 4: the model learns from pictures. Phase 2 (`vision_language`) learns to
//! caption images, phase 4 (`tasks`) to answer questions about them. Both read
//! `[visual tokens] <|endoftext|> prompt answer <|endoftext|>` and learn only the answer
//! (the caption, for phase 2): image and prompt positions are not taught.
//!
//! Phase 2 starts from phase 1's final checkpoint: the language model's weights load as
//! saved, the vision path starts fresh. Phase 4 starts from phase 2's, vision included.

use std::collections::BTreeMap;

use outloud_coordinator::scheduler::Metrics;
use outloud_coordinator::spec::{DataKind, PhaseKind, VisionEncoder, VisionSpec};
use outloud_coordinator::storage::Location;
use tch::{Device, Kind, Tensor, nn};

use crate::checkpoint::{self, Loaded};
use crate::data;
use crate::error::WorkerError;
use crate::fit::{self, Consumed, Fit, WEIGHT_DECAY};
use crate::loaders;
use crate::optim::AdamW;
use crate::probes;
use crate::rng::Rng;
use crate::task::{TaskContext, TaskOutput};
use crate::tokenizer::Tokenizer;
use crate::vision::VitConfig;
use crate::vlm::{IGNORE, VisionConfig, Vlm};

/// One training sequence: a picture, its tokens, and where the taught part starts.
pub struct Example {
    pub pixels: Tensor,
    pub ids: Vec<i64>,
    pub taught_from: usize,
    /// Words in the taught text: what the word budget counts.
    pub words: u64,
}

/// `<|endoftext|> caption <|endoftext|>`, the caption taught.
pub fn caption_example(
    tokenizer: &Tokenizer,
    pixels: Tensor,
    caption: &str,
) -> Result<Example, WorkerError> {
    let bos = tokenizer.end_of_text() as i64;
    let mut ids = vec![bos];
    ids.extend(tokenizer.encode(caption)?.into_iter().map(i64::from));
    ids.push(bos);
    Ok(Example {
        pixels,
        ids,
        taught_from: 1,
        words: caption.split_whitespace().count() as u64,
    })
}

/// How a question is asked: the BabyLM VQA prompt, so phase 4 trains on the format
/// the evaluation scores.
pub fn question_text(question: &str) -> String {
    format!("Question: {question} Answer:")
}

/// The prompt a question is asked with.
pub fn question_prompt(tokenizer: &Tokenizer, question: &str) -> Result<Vec<i64>, WorkerError> {
    let mut ids = vec![tokenizer.end_of_text() as i64];
    ids.extend(
        tokenizer
            .encode(&question_text(question))?
            .into_iter()
            .map(i64::from),
    );
    Ok(ids)
}

/// An answer's tokens as they follow the prompt, ending the text.
pub fn answer_tokens(tokenizer: &Tokenizer, answer: &str) -> Result<Vec<i64>, WorkerError> {
    let mut ids: Vec<i64> = tokenizer
        .encode(&format!(" {answer}"))?
        .into_iter()
        .map(i64::from)
        .collect();
    ids.push(tokenizer.end_of_text() as i64);
    Ok(ids)
}

/// `<|endoftext|> question: ... answer: <answer> <|endoftext|>`, the answer taught.
pub fn question_example(
    tokenizer: &Tokenizer,
    pixels: Tensor,
    question: &str,
    answer: &str,
) -> Result<Example, WorkerError> {
    let mut ids = question_prompt(tokenizer, question)?;
    let taught_from = ids.len();
    ids.extend(answer_tokens(tokenizer, answer)?);
    Ok(Example {
        pixels,
        ids,
        taught_from,
        words: answer.split_whitespace().count() as u64,
    })
}

/// The vision configuration the model is built with.
pub fn vision_config(vision: &VisionSpec) -> VisionConfig {
    match vision.encoder {
        VisionEncoder::Vit => VisionConfig::Vit(VitConfig {
            image_size: vision.image_size,
            patch_size: vision.patch_size,
            d_model: vision.d_model,
            n_layers: vision.n_layers,
            n_heads: vision.n_heads,
        }),
        VisionEncoder::Features => VisionConfig::Features {
            width: vision.features_width.unwrap_or(0) as i64,
        },
    }
}

/// The batch of `step`: pictures (B, 3, S, S), ids and targets (B, T), right-padded,
/// and the words it teaches.
fn batch(
    examples: &[Example],
    seed: u64,
    step: u64,
    size: usize,
    pad: i64,
    device: Device,
) -> (Tensor, Tensor, Tensor, u64) {
    let mut rng = Rng::for_stream(seed, step);
    let chosen: Vec<&Example> = (0..size)
        .map(|_| &examples[rng.below(examples.len() as u64) as usize])
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
    (pixels, ids, targets, chosen.iter().map(|e| e.words).sum())
}

/// What the encoder reads for a picture: its pixels (ViT), or its precomputed
/// features, found by the picture's file name (with or without its extension).
pub struct VisualInputs {
    features: Option<BTreeMap<String, Tensor>>,
}

impl VisualInputs {
    pub fn load(ctx: &TaskContext, vision: &VisionSpec) -> Result<Self, WorkerError> {
        if vision.encoder != VisionEncoder::Features {
            return Ok(Self::pixels());
        }
        let spec = &ctx.assignment.spec;
        let mut features = BTreeMap::new();
        for name in &fit::phase(ctx).data {
            let source = data::source(spec, name)?;
            if source.kind == DataKind::ImageFeatures {
                let location = ctx.runtime.block_on(data::source_root(spec, source))?;
                features.extend(ctx.runtime.block_on(loaders::features(&location))?);
            }
        }
        Ok(Self::with_features(features))
    }

    /// Pictures are read as pixels.
    pub fn pixels() -> Self {
        Self { features: None }
    }

    pub fn with_features(features: BTreeMap<String, Tensor>) -> Self {
        Self {
            features: Some(features),
        }
    }

    /// The encoder's input for the picture `key`; `None` when its features are missing.
    pub fn for_picture(&self, key: &str, pixels: Tensor) -> Option<Tensor> {
        let Some(features) = &self.features else {
            return Some(pixels);
        };
        let name = loaders::file_name(key);
        let stem = name.split('.').next().unwrap_or(name);
        let found = features
            .get(name)
            .or_else(|| features.get(stem))
            .map(Tensor::shallow_clone);
        if found.is_none() {
            tracing::warn!(
                image = key,
                "no precomputed features for this picture; skipped"
            );
        }
        found
    }
}

/// Where the phase starts.
enum Start {
    /// Its own checkpoint: a lease that resumes.
    Resume(Loaded),
    /// The previous phase's final checkpoint.
    HandOver(Loaded),
}

impl Start {
    fn find(ctx: &TaskContext) -> Result<Self, WorkerError> {
        if let Some(loaded) = ctx.runtime.block_on(fit::resume_point(ctx)) {
            return Ok(Start::Resume(loaded));
        }
        let url = ctx
            .assignment
            .previous_checkpoint
            .as_deref()
            .ok_or_else(|| {
                WorkerError::Config(format!(
                    "phase `{}` starts from the previous phase's checkpoint, and there is none",
                    ctx.assignment.phase
                ))
            })?;
        Ok(Start::HandOver(
            ctx.runtime
                .block_on(checkpoint::load(&Location::open(url)?))?,
        ))
    }

    fn checkpoint(&self) -> &Loaded {
        match self {
            Start::Resume(loaded) | Start::HandOver(loaded) => loaded,
        }
    }
}

/// Reads the phase's training examples; answers them and how many images were skipped.
fn examples(
    ctx: &TaskContext,
    tokenizer: &Tokenizer,
    image_size: u32,
    inputs: &VisualInputs,
) -> Result<(Vec<Example>, u64), WorkerError> {
    let spec = &ctx.assignment.spec;
    let phase = fit::phase(ctx);
    let mut out = Vec::new();
    let mut skipped = 0;
    for name in &phase.data {
        let source = data::source(spec, name)?;
        if source.kind == DataKind::ImageFeatures {
            continue; // read by VisualInputs
        }
        let root = ctx.runtime.block_on(data::source_root(spec, source))?;
        let book = source.kind == DataKind::PictureBook;
        if phase.kind == PhaseKind::VisionLanguage {
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
    }
    if out.is_empty() {
        return Err(WorkerError::Data(format!(
            "phase `{}` found no usable examples",
            phase.name
        )));
    }
    Ok((out, skipped))
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let spec = &ctx.assignment.spec;
    let phase = fit::phase(ctx);
    let shape = spec.model.shape().map_err(WorkerError::Config)?;
    let vision = spec
        .model
        .vision
        .ok_or_else(|| WorkerError::Config("this phase needs `model.vision`".into()))?;
    let start_from = Start::find(ctx)?;
    let tokenizer = Tokenizer::from_json(&start_from.checkpoint().tokenizer)?;

    tch::manual_seed(phase.seed as i64);
    let mut vs = nn::VarStore::new(ctx.device);
    let model = Vlm::new(&vs.root(), shape, vision_config(&vision));
    fit::set_precision(&mut vs);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY);
    let (start, resumed) = match &start_from {
        Start::Resume(loaded) => (fit::resume(&vs, &mut optimizer, loaded)?, true),
        Start::HandOver(previous) => {
            hand_over(&vs, previous)?;
            (Metrics::default(), false)
        }
    };
    if vision.frozen {
        for (name, var) in vs.variables() {
            if name.starts_with("vision.") {
                let _ = var.set_requires_grad(false);
            }
        }
    }
    let inputs = VisualInputs::load(ctx, &vision)?;
    let (examples, skipped) = examples(ctx, &tokenizer, vision.image_size, &inputs)?;
    let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0) as u32;
    let visual_tokens = match vision.encoder {
        VisionEncoder::Vit => vision.tokens(),
        VisionEncoder::Features => examples[0].pixels.size()[0] as u32,
    };
    if longest + visual_tokens > shape.context {
        return Err(WorkerError::Config(format!(
            "{} visual tokens and {longest} text tokens exceed the context of {}",
            visual_tokens, shape.context
        )));
    }
    tracing::info!(examples = examples.len(), skipped, "examples ready");
    let fit = Fit {
        ctx,
        root: fit::phase_root(ctx)?,
        tokenizer_json: tokenizer.to_json()?,
        model: shape,
        vision: Some(vision),
    };
    let pad = tokenizer.end_of_text() as i64;
    let mut output = fit.run(&vs, &mut optimizer, start, resumed, |step| {
        let (pixels, ids, targets, words) = batch(
            &examples,
            phase.seed,
            step,
            phase.batch_size as usize,
            pad,
            ctx.device,
        );
        let tokens = targets.ne(IGNORE).sum(Kind::Int64).int64_value(&[]) as u64;
        Ok((
            model.loss(&pixels, &ids, &targets),
            Consumed { tokens, words },
        ))
    })?;
    output
        .scores
        .insert("images_skipped".into(), skipped as f64);
    output.scores.extend(probes::after_phase(
        ctx,
        &model,
        &tokenizer,
        vision.image_size,
        &inputs,
    )?);
    Ok(output)
}

/// Loads the previous phase's weights: all of them after a phase that saw pictures,
/// else the language model's only (the vision path starts fresh).
fn hand_over(vs: &nn::VarStore, previous: &Loaded) -> Result<(), WorkerError> {
    let with_vision = previous.manifest.vision.is_some();
    let wanted = |name: &str| {
        with_vision || !(name.starts_with("vision.") || name.starts_with("projector."))
    };
    let loaded = fit::load_weights(vs, &previous.weights, wanted)?;
    tracing::info!(loaded, from_phase = %previous.manifest.phase, "weights handed over");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
        };
        let after = nn::VarStore::new(Device::Cpu);
        let vision = VisionSpec {
            encoder: VisionEncoder::Vit,
            image_size: 16,
            patch_size: 8,
            d_model: 16,
            n_layers: 1,
            n_heads: 2,
            features_width: None,
            frozen: false,
        };
        let _ = Vlm::new(&after.root(), lm, vision_config(&vision));
        hand_over(&after, &previous).unwrap();
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
        let examples = [example];
        let (_, ids, targets, words) = batch(&examples, 0, 0, 1, 0, Device::Cpu);
        let taught: Vec<i64> = Vec::try_from(targets.view([-1])).unwrap();
        let all: Vec<i64> = Vec::try_from(ids.view([-1])).unwrap();
        let from = examples[0].taught_from;
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

#[cfg(test)]
mod features {
    use super::*;
    use crate::model::GptConfig;

    #[test]
    fn precomputed_features_stand_in_for_pixels_by_file_name() {
        let row = |v: f64| Tensor::full([4, 6], v, (Kind::Float, Device::Cpu));
        let inputs = VisualInputs::with_features(BTreeMap::from([
            ("a.png".to_string(), row(1.0)),
            ("b".to_string(), row(2.0)),
        ]));
        let pixels = Tensor::zeros([3, 8, 8], (Kind::Float, Device::Cpu));
        let a = inputs
            .for_picture("images/a.png", pixels.shallow_clone())
            .unwrap();
        assert_eq!(a.size(), vec![4, 6]);
        let b = inputs
            .for_picture("shards/b.jpg", pixels.shallow_clone())
            .unwrap();
        assert_eq!(b.double_value(&[0, 0]), 2.0);
        assert!(
            inputs.for_picture("c.png", pixels).is_none(),
            "missing features are skipped"
        );

        // A model over features trains like one over pixels.
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = GptConfig {
            vocab_size: 300,
            context: 32,
            d_model: 32,
            n_layers: 1,
            n_heads: 4,
        };
        let model = Vlm::new(&vs.root(), lm, VisionConfig::Features { width: 6 });
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
        let loss = model.loss(&a.unsqueeze(0), &ids, &ids);
        loss.backward();
        assert!(
            vs.variables()["projector.fc1.weight"]
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}
