//! The prepare step: shard `i` makes data source `i` ready. A generated source (the
//! picture-book world, generated text) is written into the job's storage once; a user's
//! source is checked to hold files (unlabeled pictures: one that decodes). Every step that reads data waits for this one, so no
//! training task or probe ever generates data itself.

use outloud_core::results::{SourceReport, TaskResults};
use outloud_core::spec::DataKind;
use outloud_core::storage::Location;
use outloud_core::task::Metrics;
use outloud_core::task_spec::{DataInput, Work};

use crate::context::{TaskContext, TaskOutput};
use crate::data;
use crate::error::WorkerError;
use crate::loaders;

/// Fails unless the pictures of `source` include one that decodes: a source of no
/// readable picture would leave every synthesize shard with nothing to caption. Reads
/// files only until the first that decodes.
async fn readable_picture(source: &DataInput, root: &Location) -> Result<(), WorkerError> {
    for file in loaders::picture_files(root).await? {
        let (pictures, _) = loaders::unlabeled_files(vec![file], PROBE_SIZE).await?;
        if !pictures.is_empty() {
            return Ok(());
        }
    }
    Err(WorkerError::Data(format!(
        "data source `{}` at {} holds no readable picture (PNG or JPEG files, or tar shards of them)",
        source.name,
        root.url()
    )))
}

/// Pixels a probe decodes to: any size shows that a picture decodes.
const PROBE_SIZE: u32 = 8;

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
    if source.kind == DataKind::UnlabeledImages {
        ctx.runtime
            .block_on(readable_picture(source, &prepared.root))?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldSize};

    #[tokio::test]
    async fn unlabeled_pictures_need_one_that_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("pictures");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("a.png"), b"not a png").unwrap();
        std::fs::write(folder.join("notes.txt"), b"no picture").unwrap();
        let url = url::Url::from_directory_path(&folder).unwrap();
        let source = DataInput {
            name: "dreams".into(),
            kind: DataKind::UnlabeledImages,
            url: Some(url.to_string()),
            seed: 0,
            words: None,
            pictures: None,
            image_size: 16,
            weight: None,
            parts: Vec::new(),
            read_as: None,
        };
        let root = Location::open(url.as_str()).unwrap();
        let error = readable_picture(&source, &root)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`dreams`") && error.contains("no readable picture"),
            "{error}"
        );
        // One good picture among the broken ones is enough.
        let world = dir.path().join("world");
        let size = WorldSize {
            seed: 1,
            image_size: 16,
            train_pictures: 1,
            test_pictures: 1,
            unlabeled_pictures: 1,
            text_lines: 1,
        };
        let world_url = url::Url::from_directory_path(&world).unwrap();
        World::generate(size)
            .write(&Location::open(world_url.as_str()).unwrap())
            .await
            .unwrap();
        let good = std::fs::read_dir(world.join("unlabeled/images"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        std::fs::copy(good.path(), folder.join("b.png")).unwrap();
        readable_picture(&source, &root).await.unwrap();
    }
}
