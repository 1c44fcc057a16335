//! Phase 3, self-synthesis ("dreaming"). Per round, a sharded synthesize step (3a,
//! [`synthesize`]): each shard captions its slice of the unlabeled pictures with the
//! checkpoint that dreams, filters the captions ([`filters`]) and writes them as one
//! JSONL file in its attempt's folder, the commit of which the coordinator accepts once.
//! Then a training step (3b, [`train`]): the language part learns from those captions
//! mixed with real text, the vision path carried over as it was.

pub mod filters;
pub mod train;

use std::collections::{BTreeSet, HashMap};

use outloud_core::results::{ProbeScore, SynthesisCounts, TaskResults};
use outloud_core::spec::{DataKind, DecodingStrategy};
use outloud_core::storage::Location;
use outloud_core::task::Metrics;
use outloud_core::task_spec::{DataInput, SynthesizeSpec, Work};
use tch::{Device, Tensor};

use crate::context::{TaskContext, TaskOutput};
use crate::data;
use crate::error::WorkerError;
use crate::eval::EvalModel;
use crate::generate::{Sampling, generate_scored};
use crate::inputs;
use crate::loaders::{self, file_name};
use crate::tokenizer::Tokenizer;
use crate::vlm::{VisionPath, Vlm};
use crate::world::language::caption_score;
use crate::world::scene::Scene;
use filters::Caption;

/// Batch sizes (pictures) the synthesize step tries: on a GPU the KV cache pays only from
/// about 128 rows (see BENCHMARKS.md) and larger batches may pay more; on a CPU the
/// rows run one after another, so small batches keep memory small at the same speed.
fn batch_candidates(device: Device) -> &'static [usize] {
    if device.is_cuda() {
        &[16, 64, 128, 256, 512]
    } else {
        &[8, 32]
    }
}

/// Batch sizes this process has measured, by everything that decides them (device,
/// model shape, decoding length, pictures): a worker captioning many shards of a step
/// measures once, not once a shard.
static MEASURED: std::sync::OnceLock<std::sync::Mutex<HashMap<String, usize>>> =
    std::sync::OnceLock::new();

/// The batch size (pictures) with the most captions a second on this device: each
/// candidate decodes one full-length batch of blank pictures, timed. Captions do not
/// depend on it: each row samples from its own stream ([`row_stream`]).
fn pictures_per_batch(
    model: &Vlm,
    sampling: &Sampling,
    per_picture: i64,
    picture: &Tensor,
    pictures: usize,
    device: Device,
) -> Result<usize, WorkerError> {
    let candidates = batch_candidates(device);
    let fitting: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&b| b <= pictures.max(candidates[0]))
        .collect();
    if fitting.len() < 2 {
        return Ok(fitting[0]);
    }
    let key = format!(
        "{device:?} {:?} {} {per_picture} {:?} {fitting:?}",
        model.lm.config,
        sampling.max_new_tokens,
        picture.size()
    );
    let measured = MEASURED.get_or_init(Default::default);
    if let Some(&size) = measured.lock().expect("not poisoned").get(&key) {
        return Ok(size);
    }
    let mut best = (0.0, fitting[0]);
    for &size in &fitting {
        let blank = picture.zeros_like().unsqueeze(0).expand(
            [size as i64 * per_picture]
                .into_iter()
                .chain(picture.size())
                .collect::<Vec<_>>(),
            false,
        );
        let visual = tch::no_grad(|| model.visual_tokens(&blank.to_device(device)));
        let prompts = vec![vec![0i64]; visual.size()[0] as usize];
        let started = std::time::Instant::now();
        // A stop token never drawn: every row decodes the full length.
        crate::generate::generate(&model.lm, Some(&visual), &prompts, sampling, -1)?;
        let rate = size as f64 / started.elapsed().as_secs_f64();
        tracing::debug!(size, pictures_per_s = rate, "batch size tried");
        if rate > best.0 {
            best = (rate, size);
        }
    }
    measured.lock().expect("not poisoned").insert(key, best.1);
    Ok(best.1)
}

/// The random stream caption `k` of the picture at `url` samples from, in `round` of a
/// phase seeded `seed`: the same whichever worker, batch, attempt or storage root
/// decodes it (the picture is known by its file name).
fn row_stream(seed: u64, round: u32, url: &str, k: i64) -> u64 {
    let name = crate::rng::name_hash(file_name(url));
    let mut rng = crate::rng::Rng::for_stream(seed ^ u64::from(round) << 32, name);
    rng.next_u64() ^ k as u64
}

/// The file a shard commits, in its attempt's folder.
pub const CAPTIONS_FILE: &str = "captions.jsonl";

/// One picture of the shard: where it is, and what the encoder reads for it.
struct Picture {
    url: String,
    input: Tensor,
}

pub fn synthesize(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let Work::Synthesize(spec) = &ctx.assignment.spec.work else {
        return Err(WorkerError::Config("not a synthesize task".into()));
    };
    let loaded = inputs::input_checkpoint(ctx, "the checkpoint that dreams")?;
    let dreamer = EvalModel::from_checkpoint(&loaded, ctx.device)?;
    let (model, vision) = dreamer.seeing().ok_or_else(|| {
        WorkerError::Config("the checkpoint has no vision path, so it cannot caption".into())
    })?;
    let tokenizer = &dreamer.tokenizer;
    let checkpoint = ctx.assignment.input_checkpoint.clone().unwrap_or_default();

    let (shard, shards) = (
        ctx.assignment.lease.task.shard,
        ctx.assignment.shards.max(1),
    );
    let (pictures, skipped) = ctx.runtime.block_on(shard_pictures(
        ctx.storage(),
        &spec.images,
        vision,
        shard,
        shards,
    ))?;
    tracing::info!(
        pictures = pictures.len(),
        skipped,
        shard,
        shards,
        "pictures to caption"
    );
    let mut captions = Vec::new();
    let mut metrics = Metrics {
        total_items: pictures.len() as u64,
        ..Metrics::default()
    };
    let batch = match pictures.first() {
        Some(first) => {
            let one = first.input.unsqueeze(0).to_device(ctx.device);
            let visual_tokens = tch::no_grad(|| model.visual_tokens(&one)).size()[1] as usize;
            pictures_per_batch(
                model,
                &sampling_of(spec, model, visual_tokens),
                spec.decoding.captions_per_image.max(1) as i64,
                &first.input,
                pictures.len(),
                ctx.device,
            )?
        }
        None => 1,
    };
    tracing::info!(batch, "pictures decoded together");
    for chunk in pictures.chunks(batch) {
        ctx.check_stop()?;
        captions.extend(caption_batch(
            model,
            tokenizer,
            spec,
            chunk,
            &checkpoint,
            ctx.device,
        )?);
        metrics.items += chunk.len() as u64;
        ctx.report(metrics, None, None);
    }
    let mut counts = SynthesisCounts {
        pictures: pictures.len() as u64,
        ..SynthesisCounts::default()
    };
    // Measured before the filters: after `dedupe` every kept caption is distinct.
    let mut probes = vec![distinct_share(&captions)];
    let kept = filters::keep(captions, &spec.filters, &mut counts);
    if spec.images.kind == DataKind::PictureBook {
        probes.extend(
            ctx.runtime
                .block_on(world_accuracy(ctx.storage(), &spec.images, &kept))?,
        );
    }
    let mut jsonl = String::new();
    for caption in &kept {
        jsonl += &serde_json::to_string(caption).map_err(|e| WorkerError::Data(e.to_string()))?;
        jsonl.push('\n');
    }
    let place = ctx.output_root()?.join(CAPTIONS_FILE);
    ctx.runtime.block_on(place.put(jsonl.into_bytes()))?;
    tracing::info!(
        kept = counts.kept,
        of = counts.captions,
        url = place.url(),
        "captions written"
    );
    let mut results = TaskResults {
        probes,
        ..TaskResults::default()
    };
    results.counts.synthesis = counts;
    results.counts.images_skipped = skipped;
    Ok(TaskOutput {
        output: place.url().to_string(),
        metrics,
        results,
    })
}

/// Every `shards`-th picture file of the source from `shard` on (a tar shard stays
/// whole), or every `shards`-th precomputed feature; and how many could not be read.
async fn shard_pictures(
    storage: &str,
    images: &DataInput,
    vision: &VisionPath,
    shard: u32,
    shards: u32,
) -> Result<(Vec<Picture>, u64), WorkerError> {
    let root = data::source_root(storage, images).await?;
    let mine = |i: usize| i % shards as usize == shard as usize;
    if images.kind == DataKind::ImageFeatures {
        let features = loaders::features(&root).await?;
        let pictures = features
            .into_iter()
            .enumerate()
            .filter(|(i, _)| mine(*i))
            .map(|(_, (name, input))| Picture {
                url: format!("{}#{name}", root.url()),
                input,
            })
            .collect();
        return Ok((pictures, 0));
    }
    let folder = match images.kind {
        DataKind::PictureBook => root.join("unlabeled"),
        _ => root,
    };
    let files: Vec<Location> = loaders::picture_files(&folder)
        .await?
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mine(*i))
        .map(|(_, file)| file)
        .collect();
    let (read, skipped) = loaders::unlabeled_files(files, vision.image_size).await?;
    let pictures = read
        .into_iter()
        .map(|u| Picture {
            url: u.key,
            input: u.pixels,
        })
        .collect();
    Ok((pictures, skipped.count))
}

/// How the spec decodes, within the room the model's context leaves after the
/// visual tokens.
fn sampling_of(spec: &SynthesizeSpec, model: &Vlm, visual_tokens: usize) -> Sampling {
    let room = (model.lm.config.context as usize).saturating_sub(visual_tokens + 1);
    let d = spec.decoding;
    Sampling {
        max_new_tokens: (d.max_tokens as usize).min(room),
        temperature: match d.strategy {
            DecodingStrategy::Greedy => 0.0,
            DecodingStrategy::Temperature | DecodingStrategy::TopP => d.temperature,
        },
        top_p: match d.strategy {
            DecodingStrategy::TopP => d.top_p,
            _ => 1.0,
        },
    }
}

/// Captions for a batch of pictures, `captions_per_image` each.
fn caption_batch(
    model: &Vlm,
    tokenizer: &Tokenizer,
    spec: &SynthesizeSpec,
    pictures: &[Picture],
    checkpoint: &str,
    device: Device,
) -> Result<Vec<Caption>, WorkerError> {
    let per_picture = spec.decoding.captions_per_image.max(1) as i64;
    let inputs: Vec<Tensor> = pictures.iter().map(|p| p.input.shallow_clone()).collect();
    let stacked = Tensor::stack(&inputs, 0).to_device(device);
    let visual = tch::no_grad(|| model.visual_tokens(&stacked));
    let visual = visual.repeat_interleave_self_int(per_picture, Some(0), None);
    let sampling = sampling_of(spec, model, visual.size()[1] as usize);
    let eot = tokenizer.end_of_text() as i64;
    let prompts = vec![vec![eot]; visual.size()[0] as usize];
    let streams: Vec<u64> = pictures
        .iter()
        .flat_map(|p| (0..per_picture).map(|k| row_stream(spec.seed, spec.round, &p.url, k)))
        .collect();
    let decoded = generate_scored(&model.lm, Some(&visual), &prompts, &sampling, eot, &streams)?;
    decoded
        .into_iter()
        .enumerate()
        .map(|(row, d)| {
            let ids: Vec<u32> = d.tokens.iter().map(|&t| t as u32).collect();
            Ok(Caption {
                image: pictures[row / per_picture as usize].url.clone(),
                caption: tokenizer.decode(&ids)?.trim().to_string(),
                logprob: d.mean_logprob(),
                checkpoint: checkpoint.to_string(),
                round: spec.round,
            })
        })
        .collect()
}

/// The share of distinct captions among those decoded (1.0: no two alike).
fn distinct_share(captions: &[Caption]) -> ProbeScore {
    let distinct: BTreeSet<&str> = captions.iter().map(|c| c.caption.as_str()).collect();
    ProbeScore {
        name: "distinct_captions".into(),
        value: distinct.len() as f64 / captions.len().max(1) as f64,
        chance: None,
        items: captions.len() as u64,
    }
}

/// On the picture-book world the truth behind every unlabeled picture is known: how
/// well the kept captions name it (colours, shapes, counts, positions), beside the
/// score of each caption against another picture (chance).
async fn world_accuracy(
    storage: &str,
    world: &DataInput,
    kept: &[Caption],
) -> Result<Option<ProbeScore>, WorkerError> {
    let root = data::source_root(storage, world).await?;
    let scenes = crate::world::truth(&root, "unlabeled").await?;
    let scored: Vec<(&Caption, &Scene)> = kept
        .iter()
        .filter_map(|c| Some((c, scenes.get(file_name(&c.image))?)))
        .collect();
    if scored.is_empty() {
        return Ok(None);
    }
    let n = scored.len();
    let accuracy = scored
        .iter()
        .map(|(c, s)| caption_score(&c.caption, s))
        .sum::<f64>();
    let chance = (0..n)
        .map(|i| caption_score(&scored[i].0.caption, scored[(i + 1) % n].1))
        .sum::<f64>();
    Ok(Some(ProbeScore {
        name: "dream_caption_accuracy".into(),
        value: accuracy / n as f64,
        chance: Some(chance / n as f64),
        items: n as u64,
    }))
}
