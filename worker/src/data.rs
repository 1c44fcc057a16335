//! Reading a phase's text through the storage layer. `text` sources are files or
//! folders of files; `generated_text` sources are written into the job's storage first
//! (once, deterministically), then read back like any other file.

use outloud_coordinator::spec::{DataKind, DataSource, JobSpec};
use outloud_coordinator::storage::Location;

use crate::corpus;
use crate::error::WorkerError;

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

/// Reads every source the phase names, in the spec's order.
pub async fn read_corpus(spec: &JobSpec, names: &[String]) -> Result<Corpus, WorkerError> {
    let mut documents = Vec::new();
    for name in names {
        let source = spec
            .data
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| WorkerError::Config(format!("no data source `{name}`")))?;
        let locations = match source.kind {
            DataKind::GeneratedText => vec![materialize(spec, source).await?],
            DataKind::Text => {
                let url = source
                    .path
                    .as_deref()
                    .ok_or_else(|| WorkerError::Config(format!("`{name}` has no path")))?;
                Location::open(url)?.objects().await?
            }
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
