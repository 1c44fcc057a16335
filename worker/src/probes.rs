//! The picture-book world's held-out generation probe, run at the end of phase 2:
//! caption accuracy, with its chance level beside it. Greedy captions of held-out
//! pictures are scored against the true scene ([`caption_score`]); chance is a true
//! caption scored against another picture.
//!
//! Multiple-choice probes (questions, picture choice, Winoground pairs, grammar) are the
//! world's benchmarks, scored by the eval steps (`crate::eval`).

use outloud_core::results::ProbeScore;
use outloud_core::spec::DataKind;
use outloud_core::task_spec::TrainKind;
use tch::{Device, Tensor};

use crate::context::TaskContext;
use crate::data;
use crate::error::WorkerError;
use crate::generate::{Sampling, generate};
use crate::loaders::{self, file_name};
use crate::tokenizer::Tokenizer;
use crate::visual::VisualInputs;
use crate::vlm::Vlm;
use crate::world::language::caption_score;
use crate::world::scene::Scene;

const CAPTION_TOKENS: usize = 24;
const PICTURES_PER_BATCH: usize = 32;

/// The probes for the phase just trained, when it reads a picture-book world.
pub fn after_phase(
    ctx: &TaskContext,
    model: &Vlm,
    tokenizer: &Tokenizer,
    image_size: u32,
    inputs: &VisualInputs,
) -> Result<Vec<ProbeScore>, WorkerError> {
    let phase = ctx.train()?;
    let book = phase.data.iter().find(|s| s.kind == DataKind::PictureBook);
    let Some(book) = book.filter(|_| phase.kind == TrainKind::VisionLanguage) else {
        return Ok(Vec::new());
    };
    let root = ctx
        .runtime
        .block_on(data::source_root(ctx.storage(), book))?;
    let (pairs, _) = ctx.runtime.block_on(loaders::captioned(
        &root.join("captions/test.jsonl"),
        image_size,
    ))?;
    let scenes = ctx.runtime.block_on(crate::world::truth(&root, "test"))?;
    let pictures: Vec<(Tensor, Scene, String)> = pairs
        .into_iter()
        .filter_map(|p| {
            let scene = scenes.get(file_name(&p.key))?.clone();
            Some((inputs.for_picture(&p.key, p.pixels)?, scene, p.caption))
        })
        .collect();
    let (accuracy, chance, examples) = caption_accuracy(model, tokenizer, &pictures, ctx.device)?;
    tracing::info!(accuracy, chance, sample = %examples.first().cloned().unwrap_or_default(), "caption probe");
    Ok(vec![ProbeScore {
        name: "caption_accuracy".into(),
        value: accuracy,
        chance: Some(chance),
        items: pictures.len() as u64,
    }])
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
