//! Job specs: the YAML a user writes, parsed, checked and resolved.
//!
//! A spec names a job, a storage root, data sources, a model and an ordered list of
//! phases. [`parse`] turns YAML into a [`JobSpec`] and refuses anything wrong with the
//! file, line, column and field of each problem; [`JobSpec::resolve`] then makes every
//! location an absolute URL so workers anywhere read the same objects.

mod data;
mod eval;
mod gang;
pub mod limits;
mod lineage;
mod locate;
mod model;
mod parse;
mod synthesis;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::storage;
pub use data::{DataKind, DataRef, DataSource, ReadAs};
pub use eval::{BenchmarkSource, EvaluationSpec, GLUE_TASKS, GlueOverrides, GlueSpec};
pub use gang::{
    DEFAULT_CHECK_RANKS_EVERY, DEFAULT_COLLECTIVE_TIMEOUT_MS, DEFAULT_GANG_GRACE_MS, DeviceKind,
    GangPlan, GangSize, MAX_WORLD_SIZE, Placement,
};
pub use limits::Limits;
pub use locate::Locator;
pub use model::{ModelShape, ModelSpec, VisionEncoder, VisionSpec};
pub use parse::{SpecError, SpecErrors, parse, parse_within};
pub use synthesis::{Decoding, DecodingStrategy, Filters, SynthesisSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Lowercase letters, digits and '-'; the job id starts with it.
    pub name: String,
    /// Root URL (or local path) under which the job writes checkpoints and outputs.
    pub storage: String,
    #[serde(default)]
    pub data: Vec<DataSource>,
    #[serde(default)]
    pub model: ModelSpec,
    /// Words the whole curriculum may consume (BabyLM: 100M).
    #[serde(default = "default_word_budget")]
    pub word_budget: u64,
    /// Words of the model's own captions one lineage may read (unbounded if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_word_budget: Option<u64>,
    /// Runs every branch once per seed (a seed is added to each phase's own `seed`), so
    /// a comparison of branches can say mean ± sd; empty: one run, at the phases' seeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    pub phases: Vec<PhaseSpec>,
    /// Zero-shot benchmarks scored after the phases (each phase's `eval` says whether).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
}

fn default_word_budget() -> u64 {
    100_000_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Phase 1: a causal language model learns from text alone.
    Language,
    /// Phase 2: image captioning through a vision encoder and projector.
    VisionLanguage,
    /// Phase 3: the model captions unlabeled images and trains on its own captions.
    SelfSynthesis,
    /// Phase 4: fine-tuning on tasks such as visual question answering.
    Tasks,
    /// Does no work: exercises the control plane (benchmarks, scheduler tests).
    Noop,
}

impl PhaseKind {
    /// Whether workers of this build can run the phase.
    pub fn is_runnable(self) -> bool {
        true
    }

    /// The name a spec uses.
    pub fn name(self) -> String {
        spelled(&self)
    }

    /// Whether the phase sees pictures (and so needs `model.vision`).
    pub fn sees_pictures(self) -> bool {
        matches!(
            self,
            PhaseKind::VisionLanguage | PhaseKind::Tasks | PhaseKind::SelfSynthesis
        )
    }

    /// The data kinds this phase can read.
    pub fn reads(self) -> &'static [DataKind] {
        match self {
            PhaseKind::Language => &[
                DataKind::Text,
                DataKind::GeneratedText,
                DataKind::PictureBook,
            ],
            PhaseKind::VisionLanguage => &[
                DataKind::ImageCaptions,
                DataKind::PictureBook,
                DataKind::ImageFeatures,
            ],
            // Captions too: replay of what phase 2 taught.
            PhaseKind::Tasks => &[
                DataKind::Questions,
                DataKind::ImageCaptions,
                DataKind::PictureBook,
                DataKind::ImageFeatures,
            ],
            // Its pictures are named in `synthesis.images`; it trains on text.
            PhaseKind::SelfSynthesis => &[
                DataKind::Text,
                DataKind::GeneratedText,
                DataKind::PictureBook,
            ],
            PhaseKind::Noop => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    pub kind: PhaseKind,
    /// The data sources this phase reads, by name (`x`), or with a weight (`{source: x,
    /// weight: 0.5}`): batches draw from them at those ratios (a source without one
    /// counts 1). With no weights at all, sources are drawn by their size, as if joined.
    #[serde(default)]
    pub data: Vec<DataRef>,
    /// Optimizer steps.
    #[serde(default)]
    pub steps: u64,
    /// Words this phase may consume; training stops early once it has. Counted
    /// against the job's `word_budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<u64>,
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Intermediate checkpoints kept per task, the newest; older ones are deleted as
    /// new ones commit. The final checkpoint is always kept. Absent: all are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_checkpoints: Option<u32>,
    /// Independent tasks the phase is split into.
    #[serde(default = "default_shards")]
    pub shards: u32,
    #[serde(default)]
    pub seed: u64,
    /// Leases a task may lose (worker died, lease expired) before the job fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Whether the job's `evaluation` runs after this phase.
    #[serde(default = "default_eval")]
    pub eval: bool,
    /// The phase whose final checkpoint this one starts from (default: the phase listed
    /// before it). Phases that name the same one are branches: a job is a tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A checkpoint from outside the job to start from instead: another job's
    /// checkpoint folder or a folder `outloud export` wrote (a URL or a path). Its
    /// manifest vouches for it; the phase then follows no other phase of this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// `self_synthesis`: how often it synthesizes and then trains, each time with the
    /// model the round before made; 0 is the ablation's control (the same training on
    /// real data only).
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// `self_synthesis`: what it captions and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthesis: Option<SynthesisSpec>,
    /// Ranks that train the phase together (data parallel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<u32>,
    /// Or a range: the gang starts with at least `min_world_size` free workers, up to
    /// `max_world_size`, after waiting `gang_grace_ms` for the largest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_world_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_world_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang_grace_ms: Option<u64>,
    /// How long a rank waits on the others in a collective before the gang is given
    /// up (a dead or hung rank); longer than the slowest step and checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collective_timeout_ms: Option<u64>,
    /// How often (in steps) the ranks compare checksums of their parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ranks_every: Option<u64>,
    /// The kind of device the phase's tasks need (`cpu` or `cuda`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
    /// The least device memory (GiB) a worker must have to take the phase's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_gb: Option<f64>,
}

fn default_rounds() -> u32 {
    1
}

fn default_eval() -> bool {
    true
}
fn default_batch_size() -> u32 {
    16
}
fn default_learning_rate() -> f64 {
    3e-3
}
fn default_checkpoint_every() -> u64 {
    100
}
fn default_shards() -> u32 {
    1
}
fn default_max_attempts() -> u32 {
    3
}

impl JobSpec {
    /// Semantic problems, as (field path, message).
    fn problems(&self, limits: &Limits) -> Vec<(String, String)> {
        // Sizes first: the checks below may multiply them.
        let over = limits::problems(self, limits);
        if !over.is_empty() {
            return over;
        }
        let mut problems = Vec::new();
        let mut say = |field: String, message: String| problems.push((field, message));
        if !is_slug(&self.name) {
            say(
                "name".into(),
                "must be 1-40 lowercase letters, digits or '-'".into(),
            );
        }
        if self.storage.trim().is_empty() {
            say("storage".into(), "must name a storage root".into());
        }
        let mut data_names = HashSet::new();
        for (i, source) in self.data.iter().enumerate() {
            if !data_names.insert(source.name.as_str()) {
                say(
                    format!("data[{i}].name"),
                    format!("duplicate data source `{}`", source.name),
                );
            }
            match source.kind {
                kind if kind.has_path() && source.path.is_none() => say(
                    format!("data[{i}]"),
                    format!("a `{}` source needs a `path`", kind.name()),
                ),
                DataKind::PictureBook if source.pictures.unwrap_or(0) == 0 => say(
                    format!("data[{i}]"),
                    "a `picture_book` source needs `pictures` > 0".into(),
                ),
                DataKind::GeneratedText if source.words.unwrap_or(0) == 0 => say(
                    format!("data[{i}]"),
                    "a `generated_text` source needs `words` > 0".into(),
                ),
                _ => {}
            }
        }
        match self.model.shape() {
            Err(e) => say("model.preset".into(), e),
            Ok(shape) => {
                for (field, message) in shape.problems() {
                    say(format!("model.{field}"), message);
                }
                if let Some(vision) = &self.model.vision
                    && vision.tokens() + 8 > shape.context
                {
                    let message = format!(
                        "{} visual tokens leave too little of the context ({}) for text",
                        vision.tokens(),
                        shape.context
                    );
                    say("model.vision.image_size".into(), message);
                }
            }
        }
        for (field, message) in self.model.vision.iter().flat_map(VisionSpec::problems) {
            say(format!("model.vision.{field}"), message);
        }
        if let Some((leaf, planned)) = self.largest_path_words()
            && planned > self.word_budget
        {
            let message = format!(
                "the phases up to `{leaf}` plan {planned} words, more than the word_budget of {}",
                self.word_budget
            );
            say("phases".into(), message);
        }
        if self.phases.is_empty() {
            say("phases".into(), "a job needs at least one phase".into());
        }
        let mut seeds = HashSet::new();
        for (i, seed) in self.seeds.iter().enumerate() {
            if !seeds.insert(seed) {
                say(
                    format!("seeds[{i}]"),
                    format!("seed {seed} is listed twice"),
                );
            }
        }
        let mut phase_names = HashSet::new();
        for (i, phase) in self.phases.iter().enumerate() {
            if !phase_names.insert(phase.name.as_str()) {
                say(
                    format!("phases[{i}].name"),
                    format!("duplicate phase `{}`", phase.name),
                );
            }
            if !is_slug(&phase.name) {
                say(
                    format!("phases[{i}].name"),
                    "must be 1-40 lowercase letters, digits or '-'".into(),
                );
            }
            for (field, message) in phase.problems() {
                say(format!("phases[{i}].{field}"), message);
            }
            for (field, message) in self.lineage_problems(i) {
                say(format!("phases[{i}].{field}"), message);
            }
            if phase.kind.sees_pictures() && self.model.vision.is_none() {
                say(
                    format!("phases[{i}].kind"),
                    "a phase that sees pictures needs `model.vision`".into(),
                );
            }
            for (field, message) in phase.synthesis_problems(self) {
                say(format!("phases[{i}].{field}"), message);
            }
            for (j, entry) in phase.data.iter().enumerate() {
                let name = &entry.source;
                if let Some(weight) = entry.weight
                    && !(weight > 0.0 && weight.is_finite())
                {
                    say(
                        format!("phases[{i}].data[{j}].weight"),
                        format!("must be above 0, got {weight}"),
                    );
                }
                if self.is_synthetic_source(i, name) {
                    continue;
                }
                let book = self
                    .data
                    .iter()
                    .any(|d| &d.name == name && d.kind == DataKind::PictureBook);
                let reads_pictures =
                    matches!(phase.kind, PhaseKind::VisionLanguage | PhaseKind::Tasks);
                if entry.read_as.is_some() && !(book && reads_pictures) {
                    say(
                        format!("phases[{i}].data[{j}].as"),
                        "`as` picks what a picture-book world gives a phase that sees pictures"
                            .into(),
                    );
                }
                match self.data.iter().find(|d| &d.name == name) {
                    None => say(
                        format!("phases[{i}].data[{j}]"),
                        format!("no data source named `{name}`"),
                    ),
                    Some(source) if !phase.kind.reads().contains(&source.kind) => say(
                        format!("phases[{i}].data[{j}]"),
                        format!(
                            "a `{}` phase cannot read `{}` data",
                            phase.kind.name(),
                            source.kind.name()
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(evaluation) = &self.evaluation {
            let books: Vec<&str> = self
                .data
                .iter()
                .filter(|d| d.kind == DataKind::PictureBook)
                .map(|d| d.name.as_str())
                .collect();
            let phases: Vec<&str> = self.phases.iter().map(|p| p.name.as_str()).collect();
            for (field, message) in evaluation.problems(&books, &phases) {
                say(format!("evaluation.{field}"), message);
            }
        }
        problems
    }

    /// Whether phase `index` reads `name` as the captions it synthesizes: a
    /// `self_synthesis` phase lists itself (as text, mixed with its other sources).
    pub fn is_synthetic_source(&self, index: usize, name: &str) -> bool {
        self.phases
            .get(index)
            .is_some_and(|p| p.kind == PhaseKind::SelfSynthesis && p.rounds > 0 && p.name == name)
    }

    /// Whether an eval step follows phase `index`.
    pub fn evaluates_after(&self, index: usize) -> bool {
        self.evaluation
            .as_ref()
            .is_some_and(|e| !e.benchmarks.is_empty())
            && self
                .phases
                .get(index)
                .is_some_and(|p| p.eval && p.kind != PhaseKind::Noop)
    }

    /// Whether a GLUE fine-tuning step follows phase `index`: a phase `glue.after`
    /// names, or by default the last of its branch (no phase starts from it).
    pub fn glue_after(&self, index: usize) -> bool {
        let Some(glue) = self.evaluation.as_ref().and_then(|e| e.glue.as_ref()) else {
            return false;
        };
        let Some(phase) = self.phases.get(index) else {
            return false;
        };
        if phase.kind == PhaseKind::Noop {
            return false;
        }
        match &glue.after {
            Some(after) => after.contains(&phase.name),
            None => {
                (0..self.phases.len()).all(|other| self.starts_from(other) != Some(&phase.name))
            }
        }
    }

    /// Makes the storage root and every data path an absolute URL, resolving relative
    /// paths against `working_dir` (the directory the spec was submitted from).
    pub fn resolve(&mut self, working_dir: &str) -> Result<(), String> {
        self.storage = storage::absolute_url(&self.storage, working_dir)?.to_string();
        for source in &mut self.data {
            if let Some(path) = &source.path {
                source.path = Some(storage::absolute_url(path, working_dir)?.to_string());
            }
        }
        for glue in self.evaluation.iter_mut().filter_map(|e| e.glue.as_mut()) {
            glue.path = storage::absolute_url(&glue.path, working_dir)?.to_string();
        }
        for source in self.evaluation.iter_mut().flat_map(|e| &mut e.benchmarks) {
            for path in [&mut source.path, &mut source.images].into_iter().flatten() {
                *path = storage::absolute_url(path, working_dir)?.to_string();
            }
        }
        for url in self.phases.iter_mut().filter_map(|p| p.init_from.as_mut()) {
            // A folder: checkpoint files are read relative to it.
            let mut folder = storage::absolute_url(url, working_dir)?.to_string();
            if !folder.ends_with('/') {
                folder.push('/');
            }
            *url = folder;
        }
        Ok(())
    }
}

impl PhaseSpec {
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = self.gang_problems();
        if !self.kind.is_runnable() {
            problems.push((
                "kind",
                format!(
                    "phase kind `{}` is not available in this build yet",
                    self.kind.name()
                ),
            ));
        }
        if self.kind != PhaseKind::Noop {
            if self.steps == 0 {
                problems.push(("steps", "must be at least 1".into()));
            }
            if self.data.is_empty() {
                problems.push((
                    "data",
                    format!(
                        "a `{}` phase needs at least one data source",
                        self.kind.name()
                    ),
                ));
            }
            if self.shards != 1 {
                problems.push((
                    "shards",
                    format!("a `{}` phase runs as one task", self.kind.name()),
                ));
            }
        }
        if self.batch_size == 0 {
            problems.push(("batch_size", "must be at least 1".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            problems.push(("learning_rate", "must be a positive number".into()));
        }
        if self.checkpoint_every == 0 {
            problems.push(("checkpoint_every", "must be at least 1".into()));
        }
        if self.keep_checkpoints == Some(0) {
            let reason = "must be at least 1 (the newest is what a lost task resumes from)";
            problems.push(("keep_checkpoints", reason.into()));
        }
        if self.shards == 0 {
            problems.push(("shards", "must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            problems.push(("max_attempts", "must be at least 1".into()));
        }
        problems
    }
}

/// How a spec spells an enum value (`vision_language`, `picture_book`).
fn spelled(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn is_slug(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests;
