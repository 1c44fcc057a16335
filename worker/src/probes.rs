//! The picture-book world's held-out probes, run at the end of phases that see
//! pictures: caption accuracy after phase 2, question answering after phase 4, each
//! with its chance level beside it.
//!
//! - Caption accuracy: greedy captions of held-out pictures, scored against the true
//!   scene ([`caption_score`]); chance is a true caption scored against another picture.
//! - VQA accuracy: each choice (answer and distractors) is scored by the summed
//!   log-likelihood of its tokens after the picture and question; the best one is the
//!   model's answer. Chance is one over the number of choices.

use std::collections::BTreeMap;

use outloud_coordinator::spec::{DataKind, PhaseKind};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::data;
use crate::error::WorkerError;
use crate::fit;
use crate::generate::{Sampling, generate};
use crate::loaders::{self, file_name};
use crate::multimodal::{VisualInputs, answer_tokens, question_prompt};
use crate::task::TaskContext;
use crate::tokenizer::Tokenizer;
use crate::vlm::Vlm;
use crate::world::language::caption_score;
use crate::world::scene::Scene;

const CAPTION_TOKENS: usize = 24;
const PICTURES_PER_BATCH: usize = 32;

#[derive(Deserialize)]
struct Truth {
    image: String,
    scene: Scene,
}

/// The probes for the phase just trained, when it reads a picture-book world.
pub fn after_phase(
    ctx: &TaskContext,
    model: &Vlm,
    tokenizer: &Tokenizer,
    image_size: u32,
    inputs: &VisualInputs,
) -> Result<BTreeMap<String, f64>, WorkerError> {
    let spec = &ctx.assignment.spec;
    let phase = fit::phase(ctx);
    let mut scores = BTreeMap::new();
    let book = phase
        .data
        .iter()
        .filter_map(|n| data::source(spec, n).ok())
        .find(|s| s.kind == DataKind::PictureBook);
    let Some(book) = book else { return Ok(scores) };
    let root = ctx.runtime.block_on(data::source_root(spec, book))?;
    match phase.kind {
        PhaseKind::VisionLanguage => {
            let (pairs, _) = ctx.runtime.block_on(loaders::captioned(
                &root.join("captions/test.jsonl"),
                image_size,
            ))?;
            let truth = String::from_utf8_lossy(
                &ctx.runtime.block_on(root.join("truth/test.jsonl").get())?,
            )
            .into_owned();
            let scenes: BTreeMap<String, Scene> = truth
                .lines()
                .filter_map(|l| serde_json::from_str::<Truth>(l).ok())
                .map(|t| (file_name(&t.image).to_string(), t.scene))
                .collect();
            let pictures: Vec<(Tensor, Scene, String)> = pairs
                .into_iter()
                .filter_map(|p| {
                    let scene = scenes.get(file_name(&p.key))?.clone();
                    Some((inputs.for_picture(&p.key, p.pixels)?, scene, p.caption))
                })
                .collect();
            let (accuracy, chance, examples) =
                caption_accuracy(model, tokenizer, &pictures, ctx.device)?;
            tracing::info!(accuracy, chance, sample = %examples.first().cloned().unwrap_or_default(), "caption probe");
            scores.insert("caption_accuracy".into(), accuracy);
            scores.insert("caption_chance".into(), chance);
        }
        PhaseKind::Tasks => {
            let (asked, _) = ctx
                .runtime
                .block_on(loaders::questions(&root.join("vqa/test.jsonl"), image_size))?;
            let items: Vec<Choice> = asked
                .into_iter()
                .filter_map(|a| {
                    Some(Choice {
                        pixels: inputs.for_picture(&a.key, a.pixels)?,
                        question: a.question,
                        choices: std::iter::once(a.answer).chain(a.distractors).collect(),
                    })
                })
                .collect();
            let (accuracy, chance) = vqa_accuracy(model, tokenizer, &items, ctx.device)?;
            tracing::info!(accuracy, chance, "vqa probe");
            scores.insert("vqa_accuracy".into(), accuracy);
            scores.insert("vqa_chance".into(), chance);
        }
        _ => {}
    }
    Ok(scores)
}

/// Mean caption score of generated captions, the chance level, and a few captions.
pub fn caption_accuracy(
    model: &Vlm,
    tokenizer: &Tokenizer,
    pictures: &[(Tensor, Scene, String)],
    device: Device,
) -> Result<(f64, f64, Vec<String>), WorkerError> {
    if pictures.is_empty() {
        return Ok((0.0, 0.0, Vec::new()));
    }
    let eot = tokenizer.end_of_text() as i64;
    let (mut total, mut shown) = (0.0, Vec::new());
    for chunk in pictures.chunks(PICTURES_PER_BATCH) {
        let pixels = Tensor::stack(
            &chunk
                .iter()
                .map(|p| p.0.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(device);
        let visual = tch::no_grad(|| model.visual_tokens(&pixels)); // (B, N, C)
        let room = (model.lm.config.context as usize).saturating_sub(visual.size()[1] as usize + 1);
        let sampling = Sampling::greedy(CAPTION_TOKENS.min(room));
        let prompts = vec![vec![eot]; chunk.len()];
        for (tokens, (_, scene, _)) in generate(&model.lm, Some(&visual), &prompts, &sampling, eot)?
            .into_iter()
            .zip(chunk)
        {
            let caption =
                tokenizer.decode(&tokens.iter().map(|&t| t as u32).collect::<Vec<_>>())?;
            total += caption_score(&caption, scene);
            if shown.len() < 3 {
                shown.push(caption.trim().to_string());
            }
        }
    }
    let n = pictures.len();
    let chance = (0..n)
        .map(|i| caption_score(&pictures[i].2, &pictures[(i + 1) % n].1))
        .sum::<f64>()
        / n as f64;
    Ok((total / n as f64, chance, shown))
}

/// A multiple-choice question: the right answer first.
pub struct Choice {
    pub pixels: Tensor,
    pub question: String,
    pub choices: Vec<String>,
}

/// Fraction answered right, and the chance level.
pub fn vqa_accuracy(
    model: &Vlm,
    tokenizer: &Tokenizer,
    items: &[Choice],
    device: Device,
) -> Result<(f64, f64), WorkerError> {
    if items.is_empty() {
        return Ok((0.0, 0.0));
    }
    let (mut right, mut chance) = (0.0, 0.0);
    for item in items {
        let scores = choice_scores(model, tokenizer, item, device)?;
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        right += f64::from(best == Some(0));
        chance += 1.0 / item.choices.len() as f64;
    }
    Ok((right / items.len() as f64, chance / items.len() as f64))
}

/// The summed log-likelihood of each choice's tokens after the picture and question.
fn choice_scores(
    model: &Vlm,
    tokenizer: &Tokenizer,
    item: &Choice,
    device: Device,
) -> Result<Vec<f64>, WorkerError> {
    let prompt = question_prompt(tokenizer, &item.question)?;
    let answers: Vec<Vec<i64>> = item
        .choices
        .iter()
        .map(|c| answer_tokens(tokenizer, c))
        .collect::<Result<_, _>>()?;
    let longest = answers.iter().map(Vec::len).max().unwrap_or(0);
    let (b, t) = (answers.len() as i64, (prompt.len() + longest) as i64);
    let mut ids = Vec::new();
    for answer in &answers {
        ids.extend(
            prompt
                .iter()
                .chain(answer)
                .copied()
                .chain(std::iter::repeat_n(prompt[0], longest - answer.len())),
        );
    }
    let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
    let pixels = item
        .pixels
        .unsqueeze(0)
        .expand([b, -1, -1, -1], false)
        .to_device(device);
    let log_probs = tch::no_grad(|| {
        let logits = model.forward(&pixels, &ids);
        let n = logits.size()[1] - t;
        logits.narrow(1, n - 1, t).log_softmax(-1, Kind::Float) // position i predicts ids[i]
    });
    let picked = log_probs.gather(2, &ids.unsqueeze(2), false).squeeze_dim(2); // (B, T)
    Ok(answers
        .iter()
        .enumerate()
        .map(|(row, answer)| {
            let taught = picked
                .get(row as i64)
                .narrow(0, prompt.len() as i64, answer.len() as i64);
            taught.sum(Kind::Float).double_value(&[])
        })
        .collect())
}
