//! The word ledger of a job, a row per training step (each phase, each round, each
//! run): the distinct real words the step's lineage has read (the figure BabyLM's
//! budget bounds), every word it consumed (repeats and replay included), and of those,
//! the words of the model's own captions. `outloud status` and `outloud report` show it.

use serde::Serialize;

use crate::scheduler::{Job, StepKind};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRow {
    pub step: String,
    /// Distinct real words of the lineage, up to and including this step.
    pub unique_words: u64,
    /// Words this step consumed, every exposure.
    pub consumed_words: u64,
    /// Of those, words of the model's own captions.
    pub synthetic_words: u64,
}

/// The ledger of every training step that has consumed anything.
pub fn ledger(job: &Job) -> Vec<LedgerRow> {
    job.steps
        .iter()
        .filter(|step| matches!(step.kind, StepKind::Train { .. }))
        .map(|step| (step, step.metrics()))
        .filter(|(_, m)| m.words > 0)
        .map(|(step, m)| LedgerRow {
            step: step.name.clone(),
            unique_words: m.unique_words,
            consumed_words: m.words,
            synthetic_words: m.synthetic_words,
        })
        .collect()
}

/// The ledger as a table, with the job's budget for distinct words.
pub fn table(rows: &[LedgerRow], word_budget: u64) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "word ledger (distinct real words per lineage, budget {word_budget})\n{:<32} {:>16} {:>14} {:>14}\n",
        "STEP", "UNIQUE (LINEAGE)", "CONSUMED", "SYNTHETIC"
    );
    for row in rows {
        out += &format!(
            "{:<32} {:>16} {:>14} {:>14}\n",
            row.step, row.unique_words, row.consumed_words, row.synthetic_words
        );
    }
    out
}
