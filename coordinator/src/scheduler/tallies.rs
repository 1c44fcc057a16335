//! Counts of what the scheduler did since this process started, for metrics.

use super::EventKind;

/// Counters of scheduler events since this process started (Prometheus expects
/// counters to reset with the process).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tallies {
    pub jobs_submitted: u64,
    pub leases_granted: u64,
    pub leases_lost: u64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub checkpoints: u64,
}

impl Tallies {
    pub fn count(&mut self, event: &EventKind) {
        match event {
            EventKind::Submitted => self.jobs_submitted += 1,
            EventKind::Leased { .. } | EventKind::Duplicated { .. } => self.leases_granted += 1,
            EventKind::GangLeased { workers, .. } => self.leases_granted += workers.len() as u64,
            EventKind::LeaseLost { .. } => self.leases_lost += 1,
            EventKind::TaskSucceeded { .. } => self.tasks_succeeded += 1,
            EventKind::TaskFailed { .. } => self.tasks_failed += 1,
            EventKind::Checkpointed { .. } => self.checkpoints += 1,
            _ => {}
        }
    }
}
