//! Conversions between the generated gRPC types and the shared domain types, at the edge:
//! the scheduler and the worker's tasks never see a prost type.
//!
//! Decoding says what is wrong with a message instead of guessing: an assignment of
//! another protocol version, a missing field, or an enum value this build does not know.
//! `results`: the typed results a task reports.

use outloud_proto::v1 as pb;

mod results;

pub use results::{results_from, results_to};

use crate::spec::{
    DataKind, Decoding, DecodingStrategy, Filters, GangPlan, GlueOverrides, ModelShape, ReadAs,
    VisionEncoder, VisionSpec,
};
use crate::task::{Assignment, LeaseRef, Metrics, PROTOCOL_VERSION, TaskId};
use crate::task_spec::{
    BenchmarkFiles, BenchmarkInput, DataInput, EvaluateSpec, FinetuneSpec, GlueTaskSpec,
    PrepareSpec, SynthesizeSpec, TaskSpec, TrainKind, TrainSpec, Work,
};

pub fn lease_from(lease: Option<pb::LeaseRef>) -> Result<LeaseRef, String> {
    let lease = lease.ok_or("missing lease")?;
    let task: TaskId = lease.task_id.parse()?;
    Ok(LeaseRef {
        task,
        epoch: lease.epoch,
    })
}

pub fn lease_to(lease: &LeaseRef) -> pb::LeaseRef {
    pb::LeaseRef {
        task_id: lease.task.to_string(),
        epoch: lease.epoch,
    }
}

pub fn metrics_from(metrics: Option<pb::Metrics>) -> Metrics {
    let m = metrics.unwrap_or_default();
    Metrics {
        step: m.step,
        total_steps: m.total_steps,
        loss: m.loss,
        tokens: m.tokens,
        words: m.words,
        items: m.items,
        total_items: m.total_items,
        synthetic_words: m.synthetic_words,
        unique_words: m.unique_words,
        allreduce_seconds: m.allreduce_seconds,
        allreduce_bytes: m.allreduce_bytes,
        peak_gpu_memory_bytes: m.peak_gpu_memory_bytes,
        gpu_energy_joules: m.gpu_energy_joules,
    }
}

pub fn metrics_to(m: &Metrics) -> pb::Metrics {
    pb::Metrics {
        step: m.step,
        total_steps: m.total_steps,
        loss: m.loss,
        tokens: m.tokens,
        words: m.words,
        items: m.items,
        total_items: m.total_items,
        synthetic_words: m.synthetic_words,
        unique_words: m.unique_words,
        allreduce_seconds: m.allreduce_seconds,
        allreduce_bytes: m.allreduce_bytes,
        peak_gpu_memory_bytes: m.peak_gpu_memory_bytes,
        gpu_energy_joules: m.gpu_energy_joules,
    }
}

pub fn assignment_to(a: &Assignment) -> pb::TaskAssignment {
    pb::TaskAssignment {
        lease: Some(lease_to(&a.lease)),
        job_id: a.job_id.clone(),
        step: a.step.clone(),
        shard: a.lease.task.shard,
        shards: a.shards,
        resume_checkpoint: a.resume_checkpoint.clone(),
        input_checkpoint: a.input_checkpoint.clone(),
        input_step: a.input_step.clone(),
        output_root: a.output_root.clone(),
        rank: a.rank,
        world_size: a.world_size,
        traceparent: a.traceparent.clone(),
        protocol_version: PROTOCOL_VERSION,
        spec: Some(task_spec_to(&a.spec)),
    }
}

/// Reads an assignment, refusing one this build cannot understand.
pub fn assignment_from(task: pb::TaskAssignment) -> Result<Assignment, String> {
    if task.protocol_version != PROTOCOL_VERSION {
        let upgrade = if task.protocol_version > PROTOCOL_VERSION {
            "upgrade this worker to the coordinator's version"
        } else {
            "upgrade the coordinator, or run a worker of its version"
        };
        return Err(format!(
            "the coordinator sent an assignment of protocol version {}; this worker reads \
             version {PROTOCOL_VERSION} only: {upgrade}",
            task.protocol_version
        ));
    }
    Ok(Assignment {
        lease: lease_from(task.lease)?,
        job_id: task.job_id,
        step: task.step,
        shards: task.shards,
        spec: task_spec_from(task.spec.ok_or("the assignment has no task spec")?)?,
        resume_checkpoint: task.resume_checkpoint,
        input_checkpoint: task.input_checkpoint,
        input_step: task.input_step,
        output_root: task.output_root,
        rank: task.rank,
        world_size: task.world_size.max(1),
        traceparent: task.traceparent,
    })
}

pub fn task_spec_to(spec: &TaskSpec) -> pb::TaskSpec {
    use pb::task_spec::Work as W;
    let work = match &spec.work {
        Work::Prepare(p) => W::Prepare(pb::PrepareSpec {
            sources: p.sources.iter().map(data_to).collect(),
        }),
        Work::Train(t) => W::Train(train_to(t)),
        Work::Evaluate(e) => W::Evaluate(pb::EvaluateSpec {
            benchmarks: e.benchmarks.iter().map(benchmark_input_to).collect(),
            batch_size: e.batch_size,
            features: e.features.iter().map(data_to).collect(),
        }),
        Work::Synthesize(y) => W::Synthesize(synthesize_to(y)),
        Work::Finetune(f) => W::Finetune(pb::FinetuneSpec {
            glue: f.glue.clone(),
            tasks: f.tasks.iter().map(glue_task_to).collect(),
        }),
        Work::Noop => W::Noop(pb::NoopSpec {}),
    };
    pb::TaskSpec {
        storage: spec.storage.clone(),
        work: Some(work),
    }
}

fn glue_task_to(t: &GlueTaskSpec) -> pb::GlueTaskSpec {
    let o = &t.overrides;
    pb::GlueTaskSpec {
        name: t.name.clone(),
        learning_rate: o.learning_rate,
        batch_size: o.batch_size,
        epochs: o.epochs,
        seed: o.seed,
        max_steps: o.max_steps,
    }
}

fn glue_task_from(t: pb::GlueTaskSpec) -> GlueTaskSpec {
    GlueTaskSpec {
        name: t.name,
        overrides: GlueOverrides {
            learning_rate: t.learning_rate,
            batch_size: t.batch_size,
            epochs: t.epochs,
            seed: t.seed,
            max_steps: t.max_steps,
        },
    }
}

pub fn task_spec_from(spec: pb::TaskSpec) -> Result<TaskSpec, String> {
    use pb::task_spec::Work as W;
    let work = match spec.work.ok_or("the task spec says no work")? {
        W::Prepare(p) => Work::Prepare(PrepareSpec {
            sources: p
                .sources
                .into_iter()
                .map(data_from)
                .collect::<Result<_, _>>()?,
        }),
        W::Train(t) => Work::Train(train_from(t)?),
        W::Evaluate(e) => Work::Evaluate(EvaluateSpec {
            benchmarks: e
                .benchmarks
                .into_iter()
                .map(benchmark_input_from)
                .collect::<Result<_, _>>()?,
            batch_size: e.batch_size,
            features: e
                .features
                .into_iter()
                .map(data_from)
                .collect::<Result<_, _>>()?,
        }),
        W::Synthesize(y) => Work::Synthesize(synthesize_from(y)?),
        W::Finetune(f) => Work::Finetune(FinetuneSpec {
            glue: f.glue,
            tasks: f.tasks.into_iter().map(glue_task_from).collect(),
        }),
        W::Noop(_) => Work::Noop,
    };
    Ok(TaskSpec {
        storage: spec.storage,
        work,
    })
}

/// Each domain enum paired with its wire values: one table serves both directions.
const TRAIN_KINDS: [(TrainKind, pb::TrainKind); 4] = [
    (TrainKind::Language, pb::TrainKind::Language),
    (TrainKind::VisionLanguage, pb::TrainKind::VisionLanguage),
    (TrainKind::Tasks, pb::TrainKind::Tasks),
    (TrainKind::SelfSynthesis, pb::TrainKind::SelfSynthesis),
];
const READ_AS: [(ReadAs, pb::ReadAs); 2] = [
    (ReadAs::Captions, pb::ReadAs::Captions),
    (ReadAs::Questions, pb::ReadAs::Questions),
];
const STRATEGIES: [(DecodingStrategy, pb::Strategy); 3] = [
    (DecodingStrategy::Greedy, pb::Strategy::Greedy),
    (DecodingStrategy::Temperature, pb::Strategy::Temperature),
    (DecodingStrategy::TopP, pb::Strategy::TopP),
];
const ENCODERS: [(VisionEncoder, pb::VisionEncoder); 2] = [
    (VisionEncoder::Vit, pb::VisionEncoder::Vit),
    (VisionEncoder::Features, pb::VisionEncoder::Features),
];
const DATA_KINDS: [(DataKind, pb::DataKind); 7] = [
    (DataKind::Text, pb::DataKind::Text),
    (DataKind::GeneratedText, pb::DataKind::GeneratedText),
    (DataKind::PictureBook, pb::DataKind::PictureBook),
    (DataKind::ImageCaptions, pb::DataKind::ImageCaptions),
    (DataKind::Questions, pb::DataKind::Questions),
    (DataKind::UnlabeledImages, pb::DataKind::UnlabeledImages),
    (DataKind::ImageFeatures, pb::DataKind::ImageFeatures),
];

/// The wire value of `value` (every domain value has one).
pub(super) fn to_wire<D: PartialEq + Copy, W: Into<i32> + Copy>(table: &[(D, W)], value: D) -> i32 {
    table
        .iter()
        .find(|(d, _)| *d == value)
        .map_or(0, |(_, w)| (*w).into())
}

/// The domain value of wire value `value`; `what` names it in the error.
pub(super) fn from_wire<D: Copy, W: Into<i32> + Copy>(
    table: &[(D, W)],
    value: i32,
    what: &str,
) -> Result<D, String> {
    table
        .iter()
        .find(|(_, w)| (*w).into() == value)
        .map(|(d, _)| *d)
        .ok_or_else(|| format!("unknown {what} {value}"))
}

fn shape_to(m: &ModelShape) -> pb::ModelShape {
    pb::ModelShape {
        vocab_size: m.vocab_size,
        context: m.context,
        d_model: m.d_model,
        n_layers: m.n_layers,
        n_heads: m.n_heads,
    }
}

fn shape_from(m: Option<pb::ModelShape>) -> Result<ModelShape, String> {
    let m = m.ok_or("the task spec has no model shape")?;
    Ok(ModelShape {
        vocab_size: m.vocab_size,
        context: m.context,
        d_model: m.d_model,
        n_layers: m.n_layers,
        n_heads: m.n_heads,
    })
}

fn synthesize_to(y: &SynthesizeSpec) -> pb::SynthesizeSpec {
    let (d, f) = (&y.decoding, &y.filters);
    pb::SynthesizeSpec {
        model: Some(shape_to(&y.model)),
        vision: Some(vision_to(&y.vision)),
        images: Some(data_to(&y.images)),
        decoding: Some(pb::Decoding {
            strategy: to_wire(&STRATEGIES, d.strategy),
            temperature: d.temperature,
            top_p: d.top_p,
            max_tokens: d.max_tokens,
            captions_per_image: d.captions_per_image,
        }),
        filters: Some(pb::Filters {
            min_words: f.min_words,
            max_words: f.max_words,
            dedupe: f.dedupe,
            min_logprob: f.min_logprob,
        }),
        seed: y.seed,
        round: y.round,
    }
}

fn synthesize_from(y: pb::SynthesizeSpec) -> Result<SynthesizeSpec, String> {
    let d = y.decoding.ok_or("the synthesize spec has no decoding")?;
    let f = y.filters.unwrap_or_default();
    Ok(SynthesizeSpec {
        model: shape_from(y.model)?,
        vision: vision_from(y.vision.ok_or("the synthesize spec has no vision path")?)?,
        images: data_from(y.images.ok_or("the synthesize spec names no pictures")?)?,
        decoding: Decoding {
            strategy: from_wire(&STRATEGIES, d.strategy, "decoding strategy")?,
            temperature: d.temperature,
            top_p: d.top_p,
            max_tokens: d.max_tokens,
            captions_per_image: d.captions_per_image,
        },
        filters: Filters {
            min_words: f.min_words,
            max_words: f.max_words,
            dedupe: f.dedupe,
            min_logprob: f.min_logprob,
        },
        seed: y.seed,
        round: y.round,
    })
}

fn train_to(t: &TrainSpec) -> pb::TrainSpec {
    pb::TrainSpec {
        kind: to_wire(&TRAIN_KINDS, t.kind),
        model: Some(shape_to(&t.model)),
        vision: t.vision.as_ref().map(vision_to),
        data: t.data.iter().map(data_to).collect(),
        steps: t.steps,
        words: t.words,
        batch_size: t.batch_size,
        learning_rate: t.learning_rate,
        warmup_steps: t.warmup_steps,
        checkpoint_every: t.checkpoint_every,
        keep_checkpoints: t.keep_checkpoints,
        seed: t.seed,
        word_budget: t.word_budget,
        synthetic_word_budget: t.synthetic_word_budget,
        gang: t.gang.map(|g| pb::GangPlan {
            max_world_size: g.max_world_size,
            collective_timeout_ms: g.collective_timeout_ms,
            check_ranks_every: g.check_ranks_every,
        }),
    }
}

fn train_from(t: pb::TrainSpec) -> Result<TrainSpec, String> {
    let kind = from_wire(&TRAIN_KINDS, t.kind, "training kind")?;
    Ok(TrainSpec {
        kind,
        model: shape_from(t.model)?,
        vision: t.vision.map(vision_from).transpose()?,
        data: t
            .data
            .into_iter()
            .map(data_from)
            .collect::<Result<_, _>>()?,
        steps: t.steps,
        words: t.words,
        batch_size: t.batch_size,
        learning_rate: t.learning_rate,
        warmup_steps: t.warmup_steps,
        checkpoint_every: t.checkpoint_every,
        keep_checkpoints: t.keep_checkpoints,
        seed: t.seed,
        word_budget: t.word_budget,
        synthetic_word_budget: t.synthetic_word_budget,
        gang: t.gang.map(|g| GangPlan {
            max_world_size: g.max_world_size.max(1),
            collective_timeout_ms: g.collective_timeout_ms.max(1),
            check_ranks_every: g.check_ranks_every.max(1),
        }),
    })
}

fn vision_to(v: &VisionSpec) -> pb::VisionSpec {
    pb::VisionSpec {
        encoder: to_wire(&ENCODERS, v.encoder),
        image_size: v.image_size,
        patch_size: v.patch_size,
        d_model: v.d_model,
        n_layers: v.n_layers,
        n_heads: v.n_heads,
        features_width: v.features_width,
        frozen: v.frozen,
    }
}

fn vision_from(v: pb::VisionSpec) -> Result<VisionSpec, String> {
    Ok(VisionSpec {
        encoder: from_wire(&ENCODERS, v.encoder, "vision encoder")?,
        image_size: v.image_size,
        patch_size: v.patch_size,
        d_model: v.d_model,
        n_layers: v.n_layers,
        n_heads: v.n_heads,
        features_width: v.features_width,
        frozen: v.frozen,
    })
}

fn data_to(d: &DataInput) -> pb::DataInput {
    pb::DataInput {
        name: d.name.clone(),
        kind: to_wire(&DATA_KINDS, d.kind),
        url: d.url.clone(),
        seed: d.seed,
        words: d.words,
        pictures: d.pictures,
        image_size: d.image_size,
        weight: d.weight,
        parts: d.parts.clone(),
        read_as: d.read_as.map_or(0, |r| to_wire(&READ_AS, r)),
    }
}

fn data_from(d: pb::DataInput) -> Result<DataInput, String> {
    let what = format!("data kind (source `{}`)", d.name);
    let kind = from_wire(&DATA_KINDS, d.kind, &what)?;
    Ok(DataInput {
        name: d.name,
        kind,
        url: d.url,
        seed: d.seed,
        words: d.words,
        pictures: d.pictures,
        image_size: d.image_size,
        weight: d.weight,
        parts: d.parts,
        read_as: match d.read_as {
            0 => None,
            value => Some(from_wire(&READ_AS, value, "data use")?),
        },
    })
}

fn benchmark_input_to(b: &BenchmarkInput) -> pb::BenchmarkInput {
    use pb::benchmark_input::Files;
    let files = match &b.files {
        BenchmarkFiles::Url(url) => Files::Url(url.clone()),
        BenchmarkFiles::World(world) => Files::World(data_to(world)),
    };
    pb::BenchmarkInput {
        files: Some(files),
        images: b.images.clone(),
        limit: b.limit,
    }
}

fn benchmark_input_from(b: pb::BenchmarkInput) -> Result<BenchmarkInput, String> {
    use pb::benchmark_input::Files;
    let files = match b.files.ok_or("a benchmark source names no files")? {
        Files::Url(url) => BenchmarkFiles::Url(url),
        Files::World(world) => BenchmarkFiles::World(data_from(world)?),
    };
    Ok(BenchmarkInput {
        files,
        images: b.images,
        limit: b.limit,
    })
}

#[cfg(test)]
mod tests;
