//! The resolved task spec: what one task needs and nothing else.
//!
//! The coordinator resolves it once, when a job is admitted: the model preset becomes a
//! concrete shape, data source names become the sources themselves (with absolute
//! URLs), and benchmark sources that name a picture-book world carry that world. A
//! worker reads only this; it never sees, or re-resolves, the job spec.

use serde::{Deserialize, Serialize};

use crate::spec::{
    DataKind, DataSource, Decoding, Filters, GangPlan, GlueOverrides, JobSpec, ModelShape,
    PhaseKind, ReadAs, VisionSpec,
};

/// Picture side of a generated world when the model has no vision path to say it.
const DEFAULT_WORLD_IMAGE_SIZE: u32 = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The job's storage root (absolute URL): outputs go under `jobs/<job>/<step>/`,
    /// generated data under `data/`.
    pub storage: String,
    pub work: Work,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Materialize (generated) or check (real) the data sources; shard `i` takes
    /// `sources[i]`.
    Prepare(PrepareSpec),
    Train(TrainSpec),
    Evaluate(EvaluateSpec),
    /// Captions shard `i` of unlabeled pictures with the input checkpoint (phase 3a).
    Synthesize(SynthesizeSpec),
    /// Fine-tunes the input checkpoint on GLUE task `tasks[i]` and predicts its
    /// validation file.
    Finetune(FinetuneSpec),
    /// Does no work: exercises the control plane.
    Noop,
}

/// Which phase of the curriculum a training task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainKind {
    /// Phase 1: text alone.
    Language,
    /// Phase 2: captioning pictures.
    VisionLanguage,
    /// Phase 4: answering questions about pictures.
    Tasks,
    /// Phase 3b: the language part learns from its own captions mixed with real text;
    /// the vision path is carried over as it was.
    SelfSynthesis,
}

impl TrainKind {
    /// Whether the checkpoint it makes has a vision path.
    pub fn sees_pictures(self) -> bool {
        !matches!(self, TrainKind::Language)
    }
}

/// Phase 3a: what a synthesize shard captions and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthesizeSpec {
    pub model: ModelShape,
    pub vision: VisionSpec,
    /// The unlabeled pictures (a world's unlabeled set, a folder, tar shards, features);
    /// the task's shard takes every `shards`-th of them, by name.
    pub images: DataInput,
    pub decoding: Decoding,
    pub filters: Filters,
    pub seed: u64,
    /// Which round of the phase (1-based).
    pub round: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub kind: TrainKind,
    pub model: ModelShape,
    /// The vision path, for phases that see pictures.
    pub vision: Option<VisionSpec>,
    /// The sources the phase reads, in the spec's order.
    pub data: Vec<DataInput>,
    pub steps: u64,
    /// Words the phase may consume before it stops.
    pub words: Option<u64>,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    pub checkpoint_every: u64,
    /// Intermediate checkpoints kept, the newest (None: all).
    #[serde(default)]
    pub keep_checkpoints: Option<u32>,
    pub seed: u64,
    /// Distinct real words the model's lineage may read (the job's `word_budget`);
    /// the phase stops when they are spent.
    #[serde(default)]
    pub word_budget: Option<u64>,
    /// Words of its own captions the lineage may read (`synthetic_word_budget`).
    #[serde(default)]
    pub synthetic_word_budget: Option<u64>,
    /// How its ranks train together, when the phase trains on a gang.
    #[serde(default)]
    pub gang: Option<GangPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareSpec {
    pub sources: Vec<DataInput>,
}

/// GLUE fine-tuning: shard `i` takes `tasks[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneSpec {
    /// The folder of `<task>.train.jsonl` and `<task>.valid.jsonl`.
    pub glue: String,
    pub tasks: Vec<GlueTaskSpec>,
}

/// One task, with what differs from the pipeline's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlueTaskSpec {
    pub name: String,
    pub overrides: GlueOverrides,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateSpec {
    pub benchmarks: Vec<BenchmarkInput>,
    /// Sequences scored per forward pass.
    pub batch_size: u32,
    /// Precomputed picture features, for checkpoints whose encoder reads features.
    pub features: Vec<DataInput>,
}

/// Where one benchmark source's files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkInput {
    pub files: BenchmarkFiles,
    /// Pictures for image-conditioned benchmarks, when not beside their files.
    pub images: Option<String>,
    /// Items per file at most.
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchmarkFiles {
    /// A folder laid out like BabyLM's `evaluation_data`, one benchmark or one file.
    Url(String),
    /// A picture-book world's held-out sets.
    World(DataInput),
}

/// One data source, with everything needed to find or generate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInput {
    pub name: String,
    pub kind: DataKind,
    /// Where a user's source lives (absolute URL); generated sources have none.
    pub url: Option<String>,
    /// Generator seed (`generated_text`, `picture_book`).
    pub seed: u64,
    /// Words to generate (`generated_text`).
    pub words: Option<u64>,
    /// Captioned training pictures to generate (`picture_book`).
    pub pictures: Option<u64>,
    /// Picture side in pixels of a generated world.
    pub image_size: u32,
    /// The share of batches drawn from this source, against the phase's others; `None`
    /// for every source of a phase: drawn by size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Captions a synthesize step committed (its shards' JSONL files): filled in when a
    /// task that reads them is leased.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
    /// What a picture-book world gives the phase (captions or questions), when said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_as: Option<ReadAs>,
}

impl DataInput {
    fn of(source: &DataSource, spec: &JobSpec) -> Self {
        Self {
            name: source.name.clone(),
            kind: source.kind,
            url: source.path.clone(),
            seed: source.seed,
            words: source.words,
            pictures: source.pictures,
            image_size: spec
                .model
                .vision
                .map_or(DEFAULT_WORLD_IMAGE_SIZE, |v| v.image_size),
            weight: None,
            parts: Vec::new(),
            read_as: None,
        }
    }

    /// The captions self-synthesis phase `name` makes, before they exist.
    fn synthetic(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: DataKind::ImageCaptions,
            url: None,
            seed: 0,
            words: None,
            pictures: None,
            image_size: 0,
            weight: None,
            parts: Vec::new(),
            read_as: None,
        }
    }
}

impl TaskSpec {
    /// What a task of the spec's phase `index` needs. The spec must have been checked
    /// ([`crate::spec::parse`]) and resolved ([`JobSpec::resolve`]).
    pub fn train(spec: &JobSpec, index: usize) -> Result<Self, String> {
        let phase = spec
            .phases
            .get(index)
            .ok_or_else(|| format!("the spec has no phase {index}"))?;
        let kind = match phase.kind {
            PhaseKind::Noop => return Ok(spec.task(Work::Noop)),
            PhaseKind::Language => TrainKind::Language,
            PhaseKind::VisionLanguage => TrainKind::VisionLanguage,
            PhaseKind::Tasks => TrainKind::Tasks,
            PhaseKind::SelfSynthesis => TrainKind::SelfSynthesis,
        };
        let mut data = Vec::new();
        for entry in &phase.data {
            let mut input = if spec.is_synthetic_source(index, &entry.source) {
                DataInput::synthetic(&entry.source)
            } else {
                spec.data_input(&entry.source)?
            };
            input.weight = entry.weight;
            input.read_as = entry.read_as;
            data.push(input);
        }
        Ok(spec.task(Work::Train(TrainSpec {
            kind,
            model: spec.model.shape()?,
            vision: spec.model.vision.filter(|_| kind.sees_pictures()),
            data,
            steps: phase.steps,
            words: phase.words,
            batch_size: phase.batch_size,
            learning_rate: phase.learning_rate,
            warmup_steps: phase.warmup_steps,
            checkpoint_every: phase.checkpoint_every,
            keep_checkpoints: phase.keep_checkpoints,
            seed: phase.seed,
            word_budget: Some(spec.word_budget),
            synthetic_word_budget: spec.synthetic_word_budget,
            gang: phase.gang_plan(),
        })))
    }

    /// What a synthesize shard of self-synthesis phase `index` needs, in `round`.
    pub fn synthesize(spec: &JobSpec, index: usize, round: u32) -> Result<Self, String> {
        let phase = spec
            .phases
            .get(index)
            .ok_or_else(|| format!("the spec has no phase {index}"))?;
        let synthesis = phase
            .synthesis
            .as_ref()
            .ok_or_else(|| format!("phase `{}` has no `synthesis`", phase.name))?;
        let vision = spec
            .model
            .vision
            .ok_or("self-synthesis needs `model.vision`")?;
        Ok(spec.task(Work::Synthesize(SynthesizeSpec {
            model: spec.model.shape()?,
            vision,
            images: spec.data_input(&synthesis.images)?,
            decoding: synthesis.decoding,
            filters: synthesis.filters,
            seed: phase.seed,
            round,
        })))
    }

    /// What the prepare step needs: every data source of the job.
    pub fn prepare(spec: &JobSpec) -> Self {
        let sources = spec.data.iter().map(|d| DataInput::of(d, spec)).collect();
        spec.task(Work::Prepare(PrepareSpec { sources }))
    }

    /// What the eval step after a phase needs: the spec's benchmarks.
    /// The GLUE step's work: a task a shard.
    pub fn finetune(spec: &JobSpec) -> Result<Self, String> {
        let glue = spec
            .evaluation
            .as_ref()
            .and_then(|e| e.glue.as_ref())
            .ok_or("the spec has no `evaluation.glue`")?;
        let tasks = glue
            .tasks
            .iter()
            .map(|name| GlueTaskSpec {
                name: name.clone(),
                overrides: glue.settings.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(spec.task(Work::Finetune(FinetuneSpec {
            glue: glue.path.clone(),
            tasks,
        })))
    }

    pub fn evaluate(spec: &JobSpec) -> Result<Self, String> {
        let evaluation = spec
            .evaluation
            .as_ref()
            .ok_or("the spec has no `evaluation`")?;
        let mut benchmarks = Vec::new();
        for source in &evaluation.benchmarks {
            let files = match (&source.path, &source.data) {
                (Some(url), _) => BenchmarkFiles::Url(url.clone()),
                (None, Some(name)) => BenchmarkFiles::World(spec.data_input(name)?),
                (None, None) => return Err("a benchmark source names no files".into()),
            };
            benchmarks.push(BenchmarkInput {
                files,
                images: source.images.clone(),
                limit: source.limit,
            });
        }
        let features = spec
            .data
            .iter()
            .filter(|d| d.kind == DataKind::ImageFeatures)
            .map(|d| DataInput::of(d, spec))
            .collect();
        Ok(spec.task(Work::Evaluate(EvaluateSpec {
            benchmarks,
            batch_size: evaluation.batch_size,
            features,
        })))
    }

    pub fn train_spec(&self) -> Option<&TrainSpec> {
        match &self.work {
            Work::Train(train) => Some(train),
            _ => None,
        }
    }
}

impl JobSpec {
    fn task(&self, work: Work) -> TaskSpec {
        TaskSpec {
            storage: self.storage.clone(),
            work,
        }
    }

    fn data_input(&self, name: &str) -> Result<DataInput, String> {
        self.data
            .iter()
            .find(|d| d.name == name)
            .map(|d| DataInput::of(d, self))
            .ok_or_else(|| format!("no data source named `{name}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_gets_its_phase_resolved_and_nothing_else() {
        let yaml = "name: t\nstorage: /s\n\
            data: [{name: a, kind: generated_text, words: 10}, {name: b, kind: picture_book, pictures: 5},\
                   {name: f, kind: image_features, path: /f.safetensors}]\n\
            model: {preset: tiny, d_model: 32, vision: {image_size: 16, patch_size: 8}}\n\
            evaluation: {benchmarks: [{data: b}, {path: /e, limit: 3}]}\n\
            phases: [{name: l, kind: language, data: [a], steps: 5}, {name: v, kind: vision_language, data: [b], steps: 5}]\n";
        let spec = crate::spec::parse(yaml, "t.yaml").unwrap();
        let language = TaskSpec::train(&spec, 0).unwrap();
        let train = language.train_spec().unwrap();
        assert_eq!(train.kind, TrainKind::Language);
        assert_eq!(
            train.model.d_model, 32,
            "the preset is resolved, overrides applied"
        );
        assert!(train.vision.is_none(), "phase 1 does not see pictures");
        assert_eq!(train.data.len(), 1);
        assert_eq!(train.data[0].name, "a");
        let vision = TaskSpec::train(&spec, 1).unwrap();
        let world = &vision.train_spec().unwrap().data[0];
        assert_eq!((world.kind, world.image_size), (DataKind::PictureBook, 16));
        let Work::Evaluate(eval) = TaskSpec::evaluate(&spec).unwrap().work else {
            panic!("an eval step evaluates")
        };
        assert!(matches!(&eval.benchmarks[0].files, BenchmarkFiles::World(d) if d.name == "b"));
        assert!(matches!(&eval.benchmarks[1].files, BenchmarkFiles::Url(u) if u == "/e"));
        assert_eq!(eval.benchmarks[1].limit, Some(3));
        assert_eq!(eval.features.len(), 1);
    }
}
