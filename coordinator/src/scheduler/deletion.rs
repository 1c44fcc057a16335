//! Deleting a finished job: the scheduler forgets it and the store drops its records;
//! the server deletes its storage folder first ([`Job::folder`]). A job another job may
//! still start from (an `init_from` inside its folder, in a job that has not
//! succeeded and so may run or be retried) is kept until that job is deleted.

use outloud_core::storage::{is_within, join_url};
use outloud_core::task::job_folder;

use super::{Job, Scheduler, SchedulerError, TaskId};

/// What the store drops for a deleted job.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub job: String,
    pub tasks: Vec<TaskId>,
}

impl Job {
    /// Everything the job's tasks wrote ([`job_folder`], under its storage root).
    pub fn folder(&self) -> String {
        join_url(&self.spec.storage, &job_folder(&self.id))
    }
}

impl Scheduler {
    /// The job `job_id`, if it may be deleted now: it has finished, and no job that may
    /// still run imports a checkpoint from it.
    pub fn deletable(&self, job_id: &str) -> Result<&Job, SchedulerError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        if !job.state.is_finished() {
            return Err(SchedulerError::InUse(format!(
                "job `{job_id}` is {}: `outloud cancel {job_id}` first",
                job.state
            )));
        }
        let folder = job.folder();
        for other in self.jobs.values().filter(|j| j.id != job_id) {
            if other.state == super::RunState::Succeeded {
                continue;
            }
            let imports = other.spec.phases.iter().find(|phase| {
                (phase.init_from.as_deref()).is_some_and(|url| is_within(url, &folder))
            });
            if let Some(phase) = imports {
                return Err(SchedulerError::InUse(format!(
                    "phase `{}` of job `{}` ({}) starts from a checkpoint of job `{job_id}`: \
                     delete that job first",
                    phase.name, other.id, other.state
                )));
            }
        }
        Ok(job)
    }

    /// Forgets job `job_id` (checked by [`Scheduler::deletable`] again): its records go
    /// from the store with the next write.
    pub fn delete(&mut self, job_id: &str) -> Result<(), SchedulerError> {
        self.deletable(job_id)?;
        let Some(job) = self.jobs.remove(job_id) else {
            return Ok(());
        };
        let tasks = job
            .steps
            .iter()
            .flat_map(|step| step.tasks.iter().map(|task| task.id.clone()))
            .collect();
        self.changes.deleted.push(Deleted { job: job.id, tasks });
        Ok(())
    }
}
