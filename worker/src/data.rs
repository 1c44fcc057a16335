//! Where a step's data lives, and reading its text through the storage layer.
//! User data sources are files or folders at their `path`; the project's generated
//! sources (`generated_text`, `picture_book`) are written into the job's storage by the
//! job's prepare step ([`prepare`]: once, deterministically), then read back like any
//! other files.

use std::collections::BTreeMap;

use outloud_core::spec::DataKind;
use outloud_core::storage::{Location, StorageError};
use outloud_core::task_spec::DataInput;
use sha2::{Digest, Sha256};

use crate::corpus;
use crate::error::WorkerError;
use crate::world::{World, WorldSize};

/// The documents a phase trains on.
pub struct Corpus {
    pub documents: Vec<String>,
    pub words: u64,
    /// Each source's name -> SHA-256 (hex) of its bytes in the order read, for the
    /// checkpoints' provenance.
    pub checksums: BTreeMap<String, String>,
}

/// Where a generated source lives in the job's storage.
fn generated_location(storage: &str, source: &DataInput) -> Result<Location, WorkerError> {
    let words = source.words.unwrap_or(0);
    let name = format!("data/{}-seed{}-{}w.txt", source.name, source.seed, words);
    Ok(Location::open(storage)?.join(&name))
}

/// Writes a generated text source into storage unless it is already there.
async fn materialize_text(storage: &str, source: &DataInput) -> Result<Location, WorkerError> {
    let location = generated_location(storage, source)?;
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
fn world_size(source: &DataInput) -> WorldSize {
    let pictures = source.pictures.unwrap_or(0) as usize;
    WorldSize {
        seed: source.seed,
        image_size: source.image_size,
        train_pictures: pictures,
        test_pictures: (pictures / 5).max(20),
        unlabeled_pictures: (pictures / 2).max(20),
        text_lines: pictures * 2,
    }
}

/// The folder of a picture-book world, and its marker (written last: a world without it
/// is incomplete).
fn world_folder(storage: &str, source: &DataInput) -> Result<(Location, Location), WorkerError> {
    let size = world_size(source);
    let name = format!(
        "data/{}-seed{}-{}p-{}px-v{WORLD_LAYOUT}",
        source.name, size.seed, size.train_pictures, size.image_size
    );
    let folder = Location::open(storage)?.join(&name);
    let folder = folder.clone().within(folder.url());
    let marker = folder.join(WORLD_MARKER);
    Ok((folder, marker))
}

/// The file that says a world is complete.
pub const WORLD_MARKER: &str = "world.json";

/// Writes a picture-book world unless a complete one is there.
async fn materialize_world(storage: &str, source: &DataInput) -> Result<Location, WorkerError> {
    let (folder, marker) = world_folder(storage, source)?;
    if !marker.is_object().await? {
        let size = world_size(source);
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

/// What preparing one source found.
pub struct Prepared {
    pub root: Location,
    pub files: u64,
}

/// The prepare step's work for one source: a generated source is written (once: what is
/// complete in storage is kept), a user's source is checked to hold files.
pub async fn prepare(storage: &str, source: &DataInput) -> Result<Prepared, WorkerError> {
    let root = match source.kind {
        DataKind::GeneratedText => materialize_text(storage, source).await?,
        DataKind::PictureBook => materialize_world(storage, source).await?,
        _ => source_root(storage, source).await?,
    };
    // Nothing there fails for good (another try would find nothing either); other
    // storage errors may pass and are retried.
    let files = match root.objects().await {
        Ok(found) => found.len() as u64,
        Err(StorageError::Missing { .. }) => 0,
        Err(e) => return Err(e.into()),
    };
    if files == 0 {
        return Err(WorkerError::Data(format!(
            "data source `{}` at {} holds no files",
            source.name,
            root.url()
        )));
    }
    Ok(Prepared { root, files })
}

/// Where a data source's files are: its path, or its generated data in storage, which
/// the job's prepare step must have written (no other step generates data).
pub async fn source_root(storage: &str, source: &DataInput) -> Result<Location, WorkerError> {
    let unprepared = |url: &str| {
        WorkerError::Data(format!(
            "data source `{}` is not prepared (nothing complete at {url}): the job's prepare \
             step writes generated data",
            source.name
        ))
    };
    match source.kind {
        DataKind::GeneratedText => {
            let location = generated_location(storage, source)?;
            if !location.is_object().await? {
                return Err(unprepared(location.url()));
            }
            Ok(location)
        }
        DataKind::PictureBook => {
            let (folder, marker) = world_folder(storage, source)?;
            if !marker.is_object().await? {
                return Err(unprepared(folder.url()));
            }
            Ok(folder)
        }
        kind => {
            let url = source.url.as_deref().ok_or_else(|| {
                WorkerError::Config(format!("`{}` ({}) has no path", source.name, kind.name()))
            })?;
            Ok(Location::open_source(url).await?)
        }
    }
}

/// Reads every source the phase names, in the spec's order.
pub async fn read_corpus(storage: &str, sources: &[DataInput]) -> Result<Corpus, WorkerError> {
    let mut documents = Vec::new();
    let mut checksums = BTreeMap::new();
    for source in sources {
        let root = source_root(storage, source).await?;
        let locations = match source.kind {
            DataKind::PictureBook => root.join("text/world.txt").objects().await?,
            _ => root.objects().await?,
        };
        let mut hash = Sha256::new();
        for location in locations {
            let bytes = location.get().await?;
            hash.update(&bytes);
            documents.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        checksums.insert(source.name.clone(), hex::encode(hash.finalize()));
    }
    let words = documents
        .iter()
        .map(|d| d.split_whitespace().count() as u64)
        .sum();
    if words == 0 {
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        return Err(WorkerError::Data(format!(
            "data sources {names:?} hold no text"
        )));
    }
    Ok(Corpus {
        documents,
        words,
        checksums,
    })
}
