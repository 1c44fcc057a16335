//! Where each phase starts from: the phase listed before it, or the one its `from:`
//! names. Phases that name the same one are branches, so a job is a tree; the word
//! budget is checked per root-to-leaf path, what one final model was trained on.

use super::{JobSpec, PhaseKind};

impl JobSpec {
    /// The job's runs: one per listed seed, or one at the phases' own seeds.
    pub fn runs(&self) -> Vec<Option<u64>> {
        if self.seeds.is_empty() {
            return vec![None];
        }
        self.seeds.iter().copied().map(Some).collect()
    }

    /// The spec as run `seed` trains it: each phase's seed plus `seed`.
    pub fn seeded(&self, seed: Option<u64>) -> JobSpec {
        let mut spec = self.clone();
        for phase in &mut spec.phases {
            phase.seed = phase.seed.wrapping_add(seed.unwrap_or(0));
        }
        spec
    }

    /// The phase phase `index` follows: its `from`, else the phase listed before it (the
    /// first phase follows none, and neither does one that starts from a checkpoint
    /// outside the job, `init_from`). A phase starts from that phase's final checkpoint;
    /// a `language` phase starts from scratch but still waits for it.
    pub fn starts_from(&self, index: usize) -> Option<&str> {
        let phase = self.phases.get(index)?;
        match (&phase.from, &phase.init_from) {
            (Some(from), _) => Some(from.as_str()),
            (None, Some(_)) => None,
            (None, None) => index.checked_sub(1).map(|p| self.phases[p].name.as_str()),
        }
    }

    /// The phases from the root to phase `index`, root first; `None` when following
    /// `from` runs in a circle (or names an unknown phase).
    pub fn lineage(&self, index: usize) -> Option<Vec<usize>> {
        let mut path = vec![index];
        let mut at = index;
        while let Some(from) = self.starts_from(at) {
            at = self.phases.iter().position(|p| p.name == from)?;
            if path.contains(&at) {
                return None;
            }
            path.push(at);
        }
        path.reverse();
        Some(path)
    }

    /// The root-to-leaf path that plans the most words (what one final model is trained
    /// on), with its last phase's name.
    pub fn largest_path_words(&self) -> Option<(&str, u64)> {
        (0..self.phases.len())
            .filter_map(|i| {
                let path = self.lineage(i)?;
                let words = path
                    .iter()
                    .map(|&p| self.phases[p].words.unwrap_or(0))
                    .fold(0u64, u64::saturating_add);
                Some((self.phases[i].name.as_str(), words))
            })
            .max_by_key(|(_, words)| *words)
    }

    /// What is wrong with where phase `index` starts from.
    pub(super) fn lineage_problems(&self, index: usize) -> Vec<(&'static str, String)> {
        let phase = &self.phases[index];
        let mut problems = Vec::new();
        if phase.from.is_some() && phase.init_from.is_some() {
            problems.push((
                "init_from",
                "a phase starts from one checkpoint: name `from` or `init_from`, not both".into(),
            ));
        }
        if phase
            .init_from
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            problems.push(("init_from", "must name a checkpoint folder".into()));
        }
        if let Some(from) = &phase.from {
            if phase.kind == PhaseKind::Language {
                problems.push((
                    "from",
                    "a `language` phase starts from scratch; it cannot start from another phase"
                        .into(),
                ));
            } else if !self.phases.iter().any(|p| &p.name == from) {
                problems.push(("from", format!("no phase named `{from}`")));
            } else if from == &phase.name {
                problems.push(("from", "a phase cannot start from itself".into()));
            } else if self.lineage(index).is_none() {
                problems.push(("from", format!("`from` runs in a circle through `{from}`")));
            }
        }
        let needs_checkpoint = matches!(
            phase.kind,
            PhaseKind::VisionLanguage | PhaseKind::Tasks | PhaseKind::SelfSynthesis
        );
        if needs_checkpoint && self.starts_from(index).is_none() && phase.init_from.is_none() {
            problems.push((
                "kind",
                format!(
                    "a `{}` phase starts from an earlier phase's checkpoint: list one before it, name it in `from`, or name a checkpoint in `init_from`",
                    phase.kind.name()
                ),
            ));
        }
        problems
    }
}
