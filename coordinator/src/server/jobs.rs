//! The Jobs service: submit, validate, inspect, cancel, retry and delete jobs; list
//! workers.

use std::sync::Arc;

use outloud_proto::v1 as pb;
use outloud_proto::v1::jobs_server::Jobs;
use tonic::{Request, Response, Status};

use super::answers::{self, HISTORY_TAIL, PAGE, TASKS_PER_STEP, asked};
use super::{Coordinator, logs, status_of};
use crate::admission::admit;
use crate::scheduler::SchedulerError;
use crate::view::JobSummary;
use outloud_core::spec::JobSpec;
use outloud_core::storage::Location;

pub(super) struct JobService(pub(super) Arc<Coordinator>);

impl JobService {
    /// The spec, admitted under this coordinator's policy, or why not.
    async fn admit(&self, yaml: &str, source: &str, dir: &str) -> Result<JobSpec, Status> {
        admit(yaml, source, dir, &self.0.admission)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

#[tonic::async_trait]
impl Jobs for JobService {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let r = request.into_inner();
        let spec = self
            .admit(&r.spec_yaml, &r.source_name, &r.working_dir)
            .await?;
        let job_id = self
            .0
            .mutate(|s, now| s.submit(spec, now))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %job_id, "job submitted");
        Ok(Response::new(pb::SubmitJobResponse { job_id }))
    }

    async fn validate_job(
        &self,
        request: Request<pb::ValidateJobRequest>,
    ) -> Result<Response<pb::ValidateJobResponse>, Status> {
        let r = request.into_inner();
        self.admit(&r.spec_yaml, &r.source_name, &r.working_dir)
            .await?;
        Ok(Response::new(pb::ValidateJobResponse {}))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let r = request.into_inner();
        let scheduler = self.0.serving()?;
        let job = scheduler
            .job(&r.job_id)
            .ok_or_else(|| status_of(SchedulerError::UnknownJob(r.job_id.clone())))?;
        let tasks = asked(r.tasks_per_step, TASKS_PER_STEP);
        let tail = asked(r.history_tail, HISTORY_TAIL);
        Ok(Response::new(pb::GetJobResponse {
            job_json: answers::job_within(job, tasks, tail, self.0.max_message_bytes),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let scheduler = self.0.serving()?;
        let jobs = scheduler
            .jobs_after(&r.page_token)
            .map(|job| (job.id.as_str(), JobSummary::of(job)));
        let (jobs_json, next_page_token) =
            answers::page(jobs, asked(r.page_size, PAGE), self.0.max_message_bytes);
        Ok(Response::new(pb::ListJobsResponse {
            jobs_json,
            next_page_token,
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let r = request.into_inner();
        let steps = self
            .0
            .mutate(|s, now| s.retry(&r.job_id, r.step.as_deref(), now))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %r.job_id, steps = ?steps, "steps retried");
        Ok(Response::new(pb::RetryJobResponse { steps }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let id = request.into_inner().job_id;
        self.0
            .mutate(|s, now| s.cancel(&id, now))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %id, "job cancelled");
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let id = request.into_inner().job_id;
        let folder = self
            .0
            .serving()?
            .deletable(&id)
            .map_err(status_of)?
            .folder();
        // Storage first: if it fails, the job stays listed and the delete can be run again.
        let location = Location::open(&folder).map_err(|e| Status::internal(e.to_string()))?;
        let objects = location
            .delete_all()
            .await
            .map_err(|e| Status::unavailable(format!("deleting {folder}: {e}; the job is kept")))?;
        self.0
            .mutate(|s, _| s.delete(&id))
            .await?
            .map_err(status_of)?;
        tracing::info!(job = %id, %folder, objects, "job deleted");
        Ok(Response::new(pb::DeleteJobResponse { folder, objects }))
    }

    async fn read_logs(
        &self,
        request: Request<pb::ReadLogsRequest>,
    ) -> Result<Response<pb::ReadLogsResponse>, Status> {
        let r = request.into_inner();
        let (folder, root, finished) = {
            let scheduler = self.0.serving()?;
            let job = scheduler
                .job(&r.job_id)
                .ok_or_else(|| status_of(SchedulerError::UnknownJob(r.job_id.clone())))?;
            let root = logs::folder(job, "", None)?;
            (
                logs::folder(job, &r.step, r.shard)?,
                root,
                job.state.is_finished(),
            )
        };
        // Half the message for the chunks: JSON escapes and framing take the rest.
        let budget = self.0.max_message_bytes / 2;
        let mut answer = logs::read(&folder, &root, r.read, budget).await?;
        answer.finished = finished;
        Ok(Response::new(answer))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let r = request.into_inner();
        let scheduler = self.0.serving()?;
        let workers = scheduler
            .workers_after(&r.page_token)
            .map(|worker| (worker.id.as_str(), worker));
        let (workers_json, next_page_token) =
            answers::page(workers, asked(r.page_size, PAGE), self.0.max_message_bytes);
        Ok(Response::new(pb::ListWorkersResponse {
            workers_json,
            next_page_token,
        }))
    }
}
