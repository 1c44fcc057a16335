//! Phase 3, self-synthesis ("dreaming"): how a `self_synthesis` phase captions unlabeled
//! pictures (its `synthesis` block) and the checks on it. Per round the phase becomes a
//! sharded synthesize step, then a training step on the committed captions mixed with
//! real text; the captions are a data source named after the phase.

use serde::{Deserialize, Serialize};

use super::{DataKind, JobSpec, PhaseKind, PhaseSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesisSpec {
    /// The unlabeled pictures: an `unlabeled_images`, `image_features` or `picture_book`
    /// source (a world's unlabeled set).
    pub images: String,
    /// Shards the pictures are split into, each leased on its own.
    #[serde(default = "one")]
    pub shards: u32,
    #[serde(default)]
    pub decoding: Decoding,
    #[serde(default)]
    pub filters: Filters,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodingStrategy {
    Greedy,
    Temperature,
    TopP,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoding {
    #[serde(default = "default_strategy")]
    pub strategy: DecodingStrategy,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// New tokens a caption may have.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "one")]
    pub captions_per_image: u32,
}

fn default_strategy() -> DecodingStrategy {
    DecodingStrategy::TopP
}
fn default_temperature() -> f64 {
    0.8
}
fn default_top_p() -> f64 {
    0.9
}
fn default_max_tokens() -> u32 {
    32
}

impl Default for Decoding {
    fn default() -> Self {
        Self {
            strategy: default_strategy(),
            temperature: default_temperature(),
            top_p: default_top_p(),
            max_tokens: default_max_tokens(),
            captions_per_image: 1,
        }
    }
}

/// Which captions are kept; each filter counts what it removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_words: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_words: Option<u32>,
    /// Keep one of captions with the same words.
    #[serde(default)]
    pub dedupe: bool,
    /// The least mean log-probability per token a kept caption has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_logprob: Option<f64>,
}

/// The most rounds a phase may have (each is two steps).
pub const MAX_ROUNDS: u32 = 16;

impl PhaseSpec {
    /// What is wrong with this phase's `synthesis` and `rounds`, as (field, message).
    pub(super) fn synthesis_problems(&self, spec: &JobSpec) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut say = |field: &str, message: String| problems.push((field.to_string(), message));
        if self.kind == PhaseKind::SelfSynthesis && self.rounds > MAX_ROUNDS {
            say(
                "rounds",
                format!("must be 0 to {MAX_ROUNDS}, got {}", self.rounds),
            );
        }
        if self.kind != PhaseKind::SelfSynthesis && self.rounds != 1 {
            say("rounds", "only a `self_synthesis` phase has rounds".into());
        }
        let control = self.kind == PhaseKind::SelfSynthesis && self.rounds == 0;
        let Some(synthesis) = &self.synthesis else {
            if self.kind == PhaseKind::SelfSynthesis && !control {
                say(
                    "synthesis",
                    "a `self_synthesis` phase needs a `synthesis` block (or `rounds: 0`: \
                     the control that trains on its real data only)"
                        .into(),
                );
            }
            return problems;
        };
        if self.kind != PhaseKind::SelfSynthesis {
            say(
                "synthesis",
                format!("a `{}` phase does not synthesize", self.kind.name()),
            );
        }
        if control {
            say(
                "synthesis",
                "`rounds: 0` synthesizes nothing: drop `synthesis`".into(),
            );
        }
        match spec.data.iter().find(|d| d.name == synthesis.images) {
            None => say(
                "synthesis.images",
                format!("no data source named `{}`", synthesis.images),
            ),
            Some(source)
                if !matches!(
                    source.kind,
                    DataKind::UnlabeledImages | DataKind::ImageFeatures | DataKind::PictureBook
                ) =>
            {
                say(
                    "synthesis.images",
                    format!("`{}` data has no pictures to caption", source.kind.name()),
                )
            }
            Some(_) => {}
        }
        if synthesis.shards == 0 {
            say("synthesis.shards", "must be at least 1".into());
        }
        let d = &synthesis.decoding;
        if !(d.top_p > 0.0 && d.top_p <= 1.0) {
            say(
                "synthesis.decoding.top_p",
                format!("must be in (0, 1], got {}", d.top_p),
            );
        }
        if !(d.temperature >= 0.0 && d.temperature <= 100.0) {
            say(
                "synthesis.decoding.temperature",
                format!("must be 0 to 100, got {}", d.temperature),
            );
        }
        if !(1..=1024).contains(&d.max_tokens) {
            say(
                "synthesis.decoding.max_tokens",
                format!("must be 1 to 1024, got {}", d.max_tokens),
            );
        }
        if !(1..=64).contains(&d.captions_per_image) {
            say(
                "synthesis.decoding.captions_per_image",
                format!("must be 1 to 64, got {}", d.captions_per_image),
            );
        }
        let f = &synthesis.filters;
        if let (Some(least), Some(most)) = (f.min_words, f.max_words)
            && least > most
        {
            say(
                "synthesis.filters",
                format!("min_words {least} is above max_words {most}"),
            );
        }
        if f.min_logprob.is_some_and(|p| p.is_nan() || p > 0.0) {
            say(
                "synthesis.filters.min_logprob",
                "a log-probability is at most 0".into(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{DecodingStrategy, parse};

    const DREAMING: &str = "\
name: dream
storage: /tmp/d
data:
  - {name: book, kind: picture_book, pictures: 40}
  - {name: story, kind: generated_text, words: 1000}
model: {preset: tiny, vision: {encoder: vit, image_size: 16, patch_size: 8, d_model: 32, n_layers: 1, n_heads: 2}}
phases:
  - {name: language, kind: language, data: [story], steps: 1}
  - {name: captions, kind: vision_language, data: [book], steps: 1}
  - name: dreaming
    kind: self_synthesis
    rounds: 2
    synthesis:
      images: book
      shards: 8
      decoding: {strategy: top_p, top_p: 0.9, temperature: 0.8, max_tokens: 24}
      filters: {min_words: 3, max_words: 30, dedupe: true, min_logprob: -3.0}
    data: [{source: dreaming, weight: 0.5}, {source: story, weight: 0.5}]
    steps: 5
";

    fn refused(yaml: &str) -> String {
        parse(yaml, "job.yaml").unwrap_err().to_string()
    }

    #[test]
    fn a_dreaming_phase_parses_with_its_weights_and_decoding() {
        let spec = parse(DREAMING, "job.yaml").unwrap();
        let phase = &spec.phases[2];
        let synthesis = phase.synthesis.as_ref().unwrap();
        assert_eq!((phase.rounds, synthesis.shards), (2, 8));
        assert_eq!(synthesis.decoding.strategy, DecodingStrategy::TopP);
        assert_eq!(synthesis.decoding.captions_per_image, 1);
        assert_eq!(synthesis.filters.min_words, Some(3));
        assert_eq!(phase.data[0].source, "dreaming");
        assert_eq!(phase.data[0].weight, Some(0.5));
        // A plain name gives no weight.
        assert_eq!(spec.phases[1].data[0].weight, None);
    }

    #[test]
    fn mistakes_in_dreaming_are_located() {
        let cases = [
            (
                "synthesis:\n      images: book",
                "synthesis:\n      images: story",
                "phases[2].synthesis.images: `generated_text` data has no pictures",
            ),
            (
                "shards: 8",
                "shards: 0",
                "phases[2].synthesis.shards: must be at least 1",
            ),
            (
                "rounds: 2",
                "rounds: 17",
                "phases[2].rounds: must be 0 to 16, got 17",
            ),
            (
                "rounds: 2",
                "rounds: 0",
                "phases[2].synthesis: `rounds: 0` synthesizes nothing",
            ),
            (
                "top_p: 0.9",
                "top_p: 1.5",
                "phases[2].synthesis.decoding.top_p: must be in (0, 1], got 1.5",
            ),
            (
                "min_words: 3",
                "min_words: 40",
                "phases[2].synthesis.filters: min_words 40 is above max_words 30",
            ),
            (
                "source: story, weight: 0.5",
                "source: story, weight: 0",
                "phases[2].data[1].weight: must be above 0, got 0",
            ),
            (
                "data: [book], steps: 1}",
                "data: [dreaming], steps: 1}",
                "phases[1].data[0]: no data source named `dreaming`",
            ),
        ];
        for (from, to, expected) in cases {
            let yaml = DREAMING.replacen(from, to, 1);
            assert_ne!(yaml, DREAMING, "{from}");
            let message = refused(&yaml);
            assert!(message.contains(expected), "{to}: {message}");
            assert!(message.starts_with("job.yaml:"), "{message}");
        }
        let without = DREAMING.split("    synthesis:").next().unwrap().to_string()
            + "    data: [story]\n    steps: 5\n";
        assert!(refused(&without).contains("a `self_synthesis` phase needs a `synthesis` block"));
        // The control: the same training on real data only, no synthesis.
        let control = DREAMING.split("    rounds: 2").next().unwrap().to_string()
            + "    rounds: 0\n    data: [story]\n    steps: 5\n";
        let spec = parse(&control, "job.yaml").unwrap();
        assert_eq!(spec.phases[2].rounds, 0);
        let listed_itself = control.replace(
            "data: [story]\n    steps: 5",
            "data: [dreaming, story]\n    steps: 5",
        );
        assert!(refused(&listed_itself).contains("no data source named `dreaming`"));
    }
}
