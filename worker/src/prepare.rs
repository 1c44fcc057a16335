//! The prepare step: shard `i` makes data source `i` ready. A generated source (the
//! picture-book world, generated text) is written into the job's storage once; a user's
//! source is checked to hold files. Every step that reads data waits for this one, so no
//! training task or probe ever generates data itself.

use outloud_core::results::{SourceReport, TaskResults};
use outloud_core::task::Metrics;
use outloud_core::task_spec::Work;

use crate::context::{TaskContext, TaskOutput};
use crate::data;
use crate::error::WorkerError;

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let Work::Prepare(prepare) = &ctx.assignment.spec.work else {
        return Err(WorkerError::Config("not a prepare step".into()));
    };
    let shard = ctx.assignment.lease.task.shard as usize;
    let source = prepare.sources.get(shard).ok_or_else(|| {
        WorkerError::Config(format!(
            "prepare shard {shard} has no data source ({} listed)",
            prepare.sources.len()
        ))
    })?;
    let prepared = ctx.runtime.block_on(data::prepare(ctx.storage(), source))?;
    tracing::info!(source = %source.name, url = prepared.root.url(), files = prepared.files, "data source ready");
    Ok(TaskOutput {
        output: prepared.root.url().to_string(),
        metrics: Metrics::default(),
        results: TaskResults {
            sources: vec![SourceReport {
                name: source.name.clone(),
                url: prepared.root.url().to_string(),
                files: prepared.files,
            }],
            ..TaskResults::default()
        },
    })
}
