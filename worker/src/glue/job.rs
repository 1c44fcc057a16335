//! A GLUE step's task inside a job: shard `k` fine-tunes its own copy of the phase's
//! final checkpoint on task `tasks[k]`, writes the predictions (the 2025 pipeline's
//! `predictions.json`) into its attempt's folder, and reports a typed [`GlueScore`]. A
//! task without its files succeeds as "not run", saying why, so the others still count.

use outloud_core::results::{GlueScore, TaskResults};
use outloud_core::storage::Location;
use outloud_core::task::Metrics;
use outloud_core::task_spec::Work;

use super::tasks::GlueTask;
use super::{finetune, read_splits, score, score_of, tunable};
use crate::context::{TaskContext, TaskOutput};
use crate::error::WorkerError;
use crate::inputs;

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    let Work::Finetune(spec) = &ctx.assignment.spec.work else {
        return Err(WorkerError::Config("not a GLUE step".into()));
    };
    let shard = ctx.assignment.lease.task.shard as usize;
    let named = spec
        .tasks
        .get(shard)
        .ok_or_else(|| WorkerError::Config(format!("no GLUE task for shard {shard}")))?;
    let task = GlueTask::from_name(&named.name)
        .ok_or_else(|| WorkerError::Config(format!("no GLUE task `{}`", named.name)))?;
    let settings = task.settings(&named.overrides);
    let folder = Location::open(&spec.glue)?;
    let (train, valid) = match ctx.runtime.block_on(read_splits(&folder, task))? {
        Ok(splits) => splits,
        Err(why) => {
            tracing::warn!(task = task.name(), %why, "GLUE task not run");
            return Ok(output(
                String::new(),
                Metrics::default(),
                GlueScore::not_run(task.name(), why),
            ));
        }
    };
    let loaded = inputs::input_checkpoint(ctx, "the fine-tuned phase's final checkpoint")?;
    let url = ctx.assignment.input_checkpoint.clone().unwrap_or_default();
    inputs::require_finite(&loaded, &url)?;
    let tunable = tunable(&loaded, task, &settings, ctx.device)?;
    let mut metrics = Metrics::default();
    let outcome = finetune::finetune(
        &tunable,
        task,
        &train,
        &valid,
        &settings,
        |step, of, loss| {
            (metrics.step, metrics.total_steps, metrics.loss) = (step, of, loss);
            ctx.report(metrics, None, None);
            ctx.check_stop()
        },
    )?;
    let place = ctx.output_root()?.join("predictions.json");
    let json = score::predictions_json(task, &outcome.predictions).to_string();
    ctx.runtime.block_on(place.put(json.into_bytes()))?;
    let mut scored = score_of(task, &train, &valid, &outcome);
    scored.predictions = Some(place.url().to_string());
    tracing::info!(task = task.name(), accuracy = ?scored.accuracy, f1 = ?scored.f1, epoch = outcome.best_epoch, "GLUE task scored");
    metrics.items = scored.items;
    Ok(output(place.url().to_string(), metrics, scored))
}

fn output(url: String, metrics: Metrics, score: GlueScore) -> TaskOutput {
    TaskOutput {
        output: url,
        metrics,
        results: TaskResults {
            glue: vec![score],
            ..TaskResults::default()
        },
    }
}
