//! The (Super)GLUE tasks of the BabyLM 2025 pipeline: their files, label sets, the
//! text pair each row becomes, and the pipeline's fine-tuning defaults.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GlueTask {
    Boolq,
    Mnli,
    Mrpc,
    Multirc,
    Qqp,
    Rte,
    Wsc,
}

/// Which validation score picks the best epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Accuracy,
    /// Binary F1 with 1 as the positive class.
    F1,
}

/// How one task is fine-tuned; the 2025 pipeline's defaults unless overridden (the
/// score that picks the best epoch is the task's own: [`GlueTask::select_by`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub learning_rate: f64,
    pub batch_size: usize,
    pub epochs: u32,
    pub seed: u64,
    /// Tokens per input, truncated further to the model's context.
    pub sequence_length: usize,
    pub weight_decay: f64,
    /// Of all optimizer steps, the share that warms the learning rate up.
    pub warmup_proportion: f64,
    pub classifier_dropout: f64,
    /// Optimizer steps at most (a quick look); None: every epoch's.
    pub max_steps: Option<u64>,
}

impl GlueTask {
    pub const ALL: [GlueTask; 7] = [
        GlueTask::Boolq,
        GlueTask::Mnli,
        GlueTask::Mrpc,
        GlueTask::Multirc,
        GlueTask::Qqp,
        GlueTask::Rte,
        GlueTask::Wsc,
    ];

    /// The name in file names and predictions (`rte`, `wsc`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GlueTask::Boolq => "boolq",
            GlueTask::Mnli => "mnli",
            GlueTask::Mrpc => "mrpc",
            GlueTask::Multirc => "multirc",
            GlueTask::Qqp => "qqp",
            GlueTask::Rte => "rte",
            GlueTask::Wsc => "wsc",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Classes: labels are 0..labels.
    pub fn labels(self) -> u32 {
        match self {
            GlueTask::Mnli => 3,
            _ => 2,
        }
    }

    pub fn train_file(self) -> String {
        format!("{}.train.jsonl", self.name())
    }

    pub fn valid_file(self) -> String {
        format!("{}.valid.jsonl", self.name())
    }

    /// The 2025 pipeline's defaults: lr 3e-5, batch 32 (16 for BoolQ and MultiRC), 10
    /// epochs (30 for WSC), seed 42, 512 tokens, the best epoch by F1 for MRPC and QQP
    /// and by accuracy otherwise; AdamW with weight decay 0.01, 6% warm-up, classifier
    /// dropout 0.1.
    pub fn defaults(self) -> Settings {
        Settings {
            learning_rate: 3e-5,
            batch_size: match self {
                GlueTask::Boolq | GlueTask::Multirc => 16,
                _ => 32,
            },
            epochs: match self {
                GlueTask::Wsc => 30,
                _ => 10,
            },
            seed: 42,
            sequence_length: 512,
            weight_decay: 0.01,
            warmup_proportion: 0.06,
            classifier_dropout: 0.1,
            max_steps: None,
        }
    }

    /// Which validation score picks the best epoch: F1 for MRPC and QQP.
    pub fn select_by(self) -> Selection {
        match self {
            GlueTask::Mrpc | GlueTask::Qqp => Selection::F1,
            _ => Selection::Accuracy,
        }
    }

    /// The defaults with what a spec overrides.
    pub fn settings(self, overrides: &outloud_core::spec::GlueOverrides) -> Settings {
        let defaults = self.defaults();
        Settings {
            learning_rate: overrides.learning_rate.unwrap_or(defaults.learning_rate),
            batch_size: overrides
                .batch_size
                .map_or(defaults.batch_size, |b| b as usize),
            epochs: overrides.epochs.unwrap_or(defaults.epochs),
            seed: overrides.seed.unwrap_or(defaults.seed),
            max_steps: overrides.max_steps.or(defaults.max_steps),
            ..defaults
        }
    }

    /// The two texts a row becomes, as the pipeline builds them: field pairs, MultiRC's
    /// `Question: {q} Answer: {a}` with the paragraph, WSC's question with the text.
    pub fn pair(self, row: &Value) -> Result<(String, String), String> {
        let field = |name: &str| -> Result<&str, String> {
            row.get(name)
                .ok_or_else(|| format!("no `{name}`"))?
                .as_str()
                .ok_or_else(|| format!("`{name}` is not text"))
        };
        let two = |a: &str, b: &str| -> Result<(String, String), String> {
            Ok((field(a)?.to_string(), field(b)?.to_string()))
        };
        match self {
            GlueTask::Boolq => two("question", "passage"),
            GlueTask::Mnli => two("premise", "hypothesis"),
            GlueTask::Mrpc | GlueTask::Rte => two("sentence1", "sentence2"),
            GlueTask::Qqp => two("question1", "question2"),
            GlueTask::Multirc => Ok((
                format!(
                    "Question: {} Answer: {}",
                    field("question")?,
                    field("answer")?
                ),
                field("paragraph")?.to_string(),
            )),
            GlueTask::Wsc => Ok((
                format!(
                    "Does \"{}\" refer to \"{}\" in this passage?",
                    field("span2_text")?,
                    field("span1_text")?
                ),
                field("text")?.to_string(),
            )),
        }
    }
}
