//! Where a phase's data lives, and reading its text through the storage layer.
//! User data sources are files or folders at their `path`; the project's generated
//! sources (`generated_text`, `picture_book`) are written into the job's storage first
//! (once, deterministically), then read back like any other files.

use outloud_coordinator::spec::{DataKind, DataSource, JobSpec};
use outloud_coordinator::storage::Location;

use crate::corpus;
use crate::error::WorkerError;
use crate::world::{World, WorldSize};

/// The documents a phase trains on.
pub struct Corpus {
    pub documents: Vec<String>,
    pub words: u64,
}

/// Where a generated source lives in the job's storage.
fn generated_location(spec: &JobSpec, source: &DataSource) -> Result<Location, WorkerError> {
    let words = source.words.unwrap_or(0);
    let name = format!("data/{}-seed{}-{}w.txt", source.name, source.seed, words);
    Ok(Location::open(&spec.storage)?.join(&name))
}

/// Writes a generated source into storage unless it is already there.
pub async fn materialize(spec: &JobSpec, source: &DataSource) -> Result<Location, WorkerError> {
    let location = generated_location(spec, source)?;
    if !location.is_object().await? {
        let (seed, words) = (source.seed, source.words.unwrap_or(0));
        let text = tokio::task::spawn_blocking(move || corpus::generate(seed, words))
            .await
            .map_err(|e| WorkerError::Data(e.to_string()))?;
        location.put(text.into_bytes()).await?;
        tracing::info!(url = location.url(), "generated text written");
    }
    Ok(location)
}

/// Bumped whenever the world's files change, so older worlds in storage are not reused.
const WORLD_LAYOUT: u32 = 3;

/// How much picture-book world a source asks for.
fn world_size(spec: &JobSpec, source: &DataSource) -> WorldSize {
    let pictures = source.pictures.unwrap_or(0) as usize;
    WorldSize {
        seed: source.seed,
        image_size: spec.model.vision.map(|v| v.image_size).unwrap_or(32),
        train_pictures: pictures,
        test_pictures: (pictures / 5).max(20),
        unlabeled_pictures: (pictures / 2).max(20),
        text_lines: pictures * 2,
    }
}

/// The folder holding a picture-book world, written first unless already complete.
async fn materialize_world(spec: &JobSpec, source: &DataSource) -> Result<Location, WorkerError> {
    let size = world_size(spec, source);
    let name = format!(
        "data/{}-seed{}-{}p-{}px-v{WORLD_LAYOUT}",
        source.name, size.seed, size.train_pictures, size.image_size
    );
    let folder = Location::open(&spec.storage)?.join(&name);
    // The marker is written last: a world without it is incomplete and written again.
    let marker = folder.join("world.json");
    if !marker.is_object().await? {
        let world = tokio::task::spawn_blocking(move || World::generate(size))
            .await
            .map_err(|e| WorkerError::Data(e.to_string()))?;
        world.write(&folder).await?;
        marker
            .put(serde_json::to_vec(&size).expect("sizes serialize"))
            .await?;
        tracing::info!(url = folder.url(), "picture-book world written");
    }
    Ok(folder)
}

/// Where a data source's files are: its path, or the generated data in storage.
pub async fn source_root(spec: &JobSpec, source: &DataSource) -> Result<Location, WorkerError> {
    match source.kind {
        DataKind::GeneratedText => materialize(spec, source).await,
        DataKind::PictureBook => materialize_world(spec, source).await,
        kind => {
            let url = source.path.as_deref().ok_or_else(|| {
                WorkerError::Config(format!("`{}` ({}) has no path", source.name, kind.name()))
            })?;
            Ok(Location::open(url)?)
        }
    }
}

/// The named data source of the spec.
pub fn source<'a>(spec: &'a JobSpec, name: &str) -> Result<&'a DataSource, WorkerError> {
    spec.data
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| WorkerError::Config(format!("no data source `{name}`")))
}

/// Reads every source the phase names, in the spec's order.
pub async fn read_corpus(spec: &JobSpec, names: &[String]) -> Result<Corpus, WorkerError> {
    let mut documents = Vec::new();
    for name in names {
        let source = source(spec, name)?;
        let root = source_root(spec, source).await?;
        let locations = match source.kind {
            DataKind::PictureBook => root.join("text/world.txt").objects().await?,
            _ => root.objects().await?,
        };
        for location in locations {
            let bytes = location.get().await?;
            documents.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let words = documents
        .iter()
        .map(|d| d.split_whitespace().count() as u64)
        .sum();
    if words == 0 {
        return Err(WorkerError::Data(format!(
            "data sources {names:?} hold no text"
        )));
    }
    Ok(Corpus { documents, words })
}
