//! A task's intermediate checkpoints across its attempts: listing them (newest first,
//! for resuming and its fallbacks) and keeping only the newest few (`keep_checkpoints`).
//!
//! Only committed checkpoints (those with a manifest) count. A checkpoint is deleted
//! manifest first, so one interrupted halfway is already gone, never half-valid. Only
//! intermediate checkpoints are ever deleted: final ones, which later steps read as
//! their inputs, live elsewhere (`attempt-N/final`) and are never touched. Pruning also
//! collects the checkpoints that earlier attempts began and never committed: their
//! lease is gone, so nobody will finish them (the current attempt's are left alone: one
//! may be being written).

use outloud_core::storage::{Location, StorageError};

use super::MANIFEST_FILE;

/// A committed intermediate checkpoint of a task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Committed {
    pub step: u64,
    pub attempt: u64,
    pub url: String,
}

/// The step a checkpoint folder's name records (`.../checkpoints/step-000150`).
pub fn checkpoint_step(url: &str) -> Option<u64> {
    url.rsplit_once("/checkpoints/step-")?.1.parse().ok()
}

/// The attempt a URL under a task's folder belongs to (`.../attempt-3/...`), 0 if none.
pub fn attempt_of(url: &str) -> u64 {
    url.rsplit_once("/attempt-")
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .unwrap_or(0)
}

/// Every committed intermediate checkpoint under `task_folder`, newest first (the
/// latest attempt first among equal steps).
pub async fn committed(task_folder: &Location) -> Result<Vec<Committed>, StorageError> {
    Ok(committed_in(&task_folder.list().await?))
}

/// The committed intermediate checkpoints among `objects`, newest first.
fn committed_in(objects: &[Location]) -> Vec<Committed> {
    let mut found: Vec<Committed> = objects
        .iter()
        .filter_map(|o| o.url().strip_suffix(&format!("/{MANIFEST_FILE}")))
        .filter_map(|dir| {
            Some(Committed {
                step: checkpoint_step(dir)?,
                attempt: attempt_of(dir),
                url: dir.to_string(),
            })
        })
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found
}

/// The checkpoint folder an object's URL lies in (`.../checkpoints/step-000150`).
fn checkpoint_folder(url: &str) -> Option<&str> {
    const MARK: &str = "/checkpoints/step-";
    let at = url.find(MARK)? + MARK.len();
    let digits = url[at..].split('/').next()?;
    Some(&url[..at + digits.len()])
}

/// Deletes all but the newest `keep` committed intermediate checkpoints under
/// `task_folder`, and what attempts before `current_attempt` began and never committed;
/// answers the checkpoint folders deleted.
pub async fn prune(
    task_folder: &Location,
    keep: usize,
    current_attempt: u64,
) -> Result<Vec<String>, StorageError> {
    let objects = task_folder.list().await?;
    let committed = committed_in(&objects);
    let goes = |folder: &str| match committed.iter().position(|c| c.url == folder) {
        Some(newest_first) => newest_first >= keep,
        None => attempt_of(folder) < current_attempt,
    };
    let mut doomed: Vec<&Location> = objects
        .iter()
        .filter(|o| checkpoint_folder(o.url()).is_some_and(goes))
        .collect();
    // Manifests first: a checkpoint whose deletion is cut short is already gone.
    doomed.sort_by_key(|o| !o.url().ends_with(MANIFEST_FILE));
    let mut deleted: Vec<String> = Vec::new();
    for object in doomed {
        object.delete().await?;
        let folder = checkpoint_folder(object.url()).unwrap_or_default();
        if !deleted.iter().any(|d| d == folder) {
            deleted.push(folder.to_string());
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_newest_across_attempts_and_never_a_final_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let task = Location::open(url.as_str()).unwrap();
        let put = |path: &str| {
            let location = task.join(path);
            async move { location.put(b"x".to_vec()).await.unwrap() }
        };
        for (attempt, step) in [(1, 10), (1, 20), (2, 20), (2, 30), (2, 40)] {
            let folder = format!("attempt-{attempt}/checkpoints/step-{step:06}");
            put(&format!("{folder}/model.safetensors")).await;
            put(&format!("{folder}/{MANIFEST_FILE}")).await;
        }
        // Written without their manifest (a crash mid-write): not checkpoints. The
        // current attempt's may be being written; the earlier attempt's is an orphan.
        put("attempt-2/checkpoints/step-000050/model.safetensors").await;
        put("attempt-1/checkpoints/step-000030/model.safetensors").await;
        put(&format!("attempt-1/final/{MANIFEST_FILE}")).await;

        let steps = |found: Vec<Committed>| -> Vec<(u64, u64)> {
            found.iter().map(|c| (c.attempt, c.step)).collect()
        };
        let all = committed(&task).await.unwrap();
        assert_eq!(steps(all), [(2, 40), (2, 30), (2, 20), (1, 20), (1, 10)]);

        let deleted = prune(&task, 2, 2).await.unwrap();
        assert_eq!(deleted.len(), 4, "{deleted:?}");
        let orphan = dir
            .path()
            .join("attempt-1/checkpoints/step-000030/model.safetensors");
        assert!(!orphan.exists());
        assert_eq!(steps(committed(&task).await.unwrap()), [(2, 40), (2, 30)]);
        let gone = dir.path().join("attempt-1/checkpoints/step-000010");
        assert!(!gone.join("model.safetensors").exists() && !gone.join(MANIFEST_FILE).exists());
        assert!(
            dir.path()
                .join("attempt-1/final")
                .join(MANIFEST_FILE)
                .exists()
        );
        assert!(
            dir.path()
                .join("attempt-2/checkpoints/step-000050/model.safetensors")
                .exists()
        );
    }
}
