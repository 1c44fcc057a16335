//! What a scheduler call changed, named precisely so the store writes only that,
//! and the id counters that must survive a restart.

use std::collections::BTreeSet;

use super::TaskId;
use super::deletion::Deleted;

/// Everything a call changed, for the store.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// Jobs whose own fields (state, phase states, error) changed.
    pub jobs: BTreeSet<String>,
    pub tasks: BTreeSet<TaskId>,
    pub workers: BTreeSet<String>,
    /// New history entries: (job id, index in the job's history).
    pub events: Vec<(String, usize)>,
    pub counters_changed: bool,
    /// Jobs deleted, with what the store holds of them.
    pub deleted: Vec<Deleted>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.workers.is_empty()
            && self.events.is_empty()
            && !self.counters_changed
            && self.deleted.is_empty()
    }
}

/// Id counters that must survive restarts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub next_job: u64,
    pub next_worker: u64,
}
