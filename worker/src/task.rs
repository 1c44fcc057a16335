//! Running one leased task: the dispatch by what the task spec says to do.

use outloud_core::task::Metrics;
use outloud_core::task_spec::{TrainKind, Work};

use crate::context::{TaskContext, TaskOutput};
use crate::error::WorkerError;
use crate::{dreams, eval, glue, language, multimodal, prepare};

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, WorkerError> {
    match &ctx.assignment.spec.work {
        Work::Prepare(_) => prepare::run(ctx),
        Work::Evaluate(_) => eval::run(ctx),
        Work::Train(train) => match train.kind {
            TrainKind::Language => language::run(ctx),
            TrainKind::VisionLanguage | TrainKind::Tasks => multimodal::run(ctx),
            TrainKind::SelfSynthesis => dreams::train::run(ctx),
        },
        Work::Synthesize(_) => dreams::synthesize(ctx),
        Work::Finetune(_) => glue::job::run(ctx),
        Work::Noop => Ok(TaskOutput {
            output: String::new(),
            metrics: Metrics::default(),
            results: Default::default(),
        }),
    }
}
