//! Checkpoints in object storage: a folder per checkpoint holding
//! `model.safetensors`, `optimizer.safetensors`, `tokenizer.json`, the word ledger
//! (`ledger.json`, see [`crate::ledger`]) and `manifest.json`.
//!
//! The manifest is written last and lists every file's SHA-256, so a checkpoint is
//! either complete and verified or refused: a half-written or corrupted one is detected
//! on load, never silently used. Its types are the model's own ([`GptConfig`],
//! [`VisionPath`]), never the job spec's; [`FORMAT`] versions them. It also records
//! where the checkpoint comes from ([`Provenance`]).
//!
//! Modules: `safetensors_io` (tensors to and from safetensors bytes in memory),
//! [`gpt2`] (the layout exported folders keep the language model in),
//! [`writer`] (checkpoints written by a thread of their own while training goes on),
//! `aside` (their copies from a GPU to the host, beside the training stream),
//! [`retention`] (a task's checkpoints across attempts; keeping the newest K).

use std::collections::BTreeMap;

use outloud_core::storage::{Location, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::error::WorkerError;
use crate::ledger::Ledger;
use crate::model::GptConfig;
use crate::vlm::VisionPath;

mod aside;
pub use aside::current_stream_wait;
pub mod gpt2;
pub mod retention;
mod safetensors_io;
pub use safetensors_io::{from_bytes as tensors_from, to_bytes as tensors_to_bytes};
pub mod writer;
pub use writer::Writer;

/// The manifest's version: bump it when a field changes meaning, so a reader of the
/// previous version refuses the checkpoint instead of misreading it.
pub const FORMAT: &str = "outloud-checkpoint/1";
/// The manifest's version in a folder `outloud export` wrote: the same fields, the
/// language model in GPT-2's layout ([`crate::export`]), the vision path in its own file.
pub const EXPORT_FORMAT: &str = "outloud-export/1";
pub const VISION_FILE: &str = "vision.safetensors";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const LEDGER_FILE: &str = "ledger.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub job: String,
    pub phase: String,
    /// Optimizer steps taken when this was written.
    pub step: u64,
    pub total_steps: u64,
    pub model: GptConfig,
    /// The vision path, for checkpoints of phases that see pictures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionPath>,
    pub loss: f64,
    pub tokens: u64,
    pub words: u64,
    /// Of `words`, those read in synthesized captions.
    #[serde(default)]
    pub synthetic_words: u64,
    /// File name -> SHA-256 (hex) of its bytes.
    pub files: BTreeMap<String, String>,
    /// What made this checkpoint and what it read.
    #[serde(default)]
    pub provenance: Provenance,
}

/// Where a checkpoint comes from: the program that wrote it, the step's settings, and
/// the data it trained on (empty in checkpoints from before provenance).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The worker that wrote it: `outloud-worker <version> (git <commit>)`.
    pub binary: String,
    /// SHA-256 (hex) of the step's spec as the coordinator resolved it and sent it (its
    /// data, model, hyper-parameters, seed), in canonical JSON.
    pub spec_sha256: String,
    /// Each text source read, by name -> SHA-256 (hex) of its bytes as read.
    pub data: BTreeMap<String, String>,
    /// The checkpoint from outside the job the phase started from (`init_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

impl Provenance {
    /// This binary and the assignment's spec and import; the phase adds the checksums
    /// of what it reads (`data`).
    pub fn of(assignment: &outloud_core::task::Assignment) -> Self {
        // Serializing our own spec type cannot fail.
        let spec = serde_json::to_vec(&assignment.spec).expect("a task spec serializes");
        Self {
            binary: concat!(
                "outloud-worker ",
                env!("CARGO_PKG_VERSION"),
                " (git ",
                env!("OUTLOUD_GIT_COMMIT"),
                ")"
            )
            .into(),
            spec_sha256: sha256(&spec),
            data: BTreeMap::new(),
            imported_from: assignment.imported_checkpoint().map(str::to_string),
        }
    }
}

/// What a checkpoint holds, verified.
pub struct Loaded {
    pub manifest: Manifest,
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Option<Vec<(String, Tensor)>>,
    pub tokenizer: Vec<u8>,
    /// What the lineage has read (empty for a checkpoint from before ledgers).
    pub ledger: Ledger,
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The pieces of a checkpoint to write.
pub struct ToSave<'a> {
    pub weights: &'a [(String, Tensor)],
    pub optimizer: Option<&'a [(String, Tensor)]>,
    pub tokenizer: &'a [u8],
    pub ledger: Option<&'a Ledger>,
}

/// Writes the files, then the manifest that vouches for them.
pub async fn save(
    location: &Location,
    pieces: ToSave<'_>,
    mut manifest: Manifest,
) -> Result<(), WorkerError> {
    let mut files = vec![(MODEL_FILE, tensors_to_bytes(pieces.weights)?)];
    if let Some(state) = pieces.optimizer {
        files.push((OPTIMIZER_FILE, tensors_to_bytes(state)?));
    }
    files.push((TOKENIZER_FILE, pieces.tokenizer.to_vec()));
    if let Some(ledger) = pieces.ledger {
        files.push((LEDGER_FILE, ledger.to_json()));
    }
    manifest.files.clear();
    for (name, bytes) in files {
        manifest.files.insert(name.to_string(), sha256(&bytes));
        location.join(name).put(bytes).await?;
    }
    manifest.format = FORMAT.into();
    // Serializing our own manifest cannot fail.
    let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    location.join(MANIFEST_FILE).put(manifest).await?;
    Ok(())
}

/// Reads and verifies a checkpoint; any mismatch is an error naming the file.
pub async fn load(location: &Location) -> Result<Loaded, WorkerError> {
    let refuse = |reason: String| WorkerError::Checkpoint {
        url: location.url().to_string(),
        reason,
    };
    let manifest_bytes = match location.join(MANIFEST_FILE).get().await {
        Ok(bytes) => bytes,
        Err(StorageError::Missing { .. }) => {
            return Err(refuse("no manifest: incomplete or not a checkpoint".into()));
        }
        Err(e) => return Err(e.into()),
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| refuse(format!("bad manifest: {e}")))?;
    let exported = match manifest.format.as_str() {
        FORMAT => false,
        EXPORT_FORMAT => true,
        other => {
            return Err(refuse(format!(
                "format `{other}`, expected `{FORMAT}` or `{EXPORT_FORMAT}`"
            )));
        }
    };
    let mut files = BTreeMap::new();
    for (name, expected) in &manifest.files {
        let bytes = location.join(name).get().await?;
        let actual = sha256(&bytes);
        if &actual != expected {
            return Err(refuse(format!(
                "{name} is corrupt: sha256 {actual}, manifest says {expected}"
            )));
        }
        files.insert(name.clone(), bytes);
    }
    let weights = files
        .get(MODEL_FILE)
        .ok_or_else(|| refuse(format!("no {MODEL_FILE}")))?;
    let weights = if exported {
        let vision = files.get(VISION_FILE).map(Vec::as_slice);
        gpt2::imported_weights(weights, vision)?
    } else {
        tensors_from(weights)?
    };
    let optimizer = files
        .get(OPTIMIZER_FILE)
        .map(|b| tensors_from(b))
        .transpose()?;
    let tokenizer = files
        .remove(TOKENIZER_FILE)
        .ok_or_else(|| refuse(format!("no {TOKENIZER_FILE}")))?;
    let ledger = Ledger::from_json(files.get(LEDGER_FILE).map(Vec::as_slice)).map_err(refuse)?;
    Ok(Loaded {
        manifest,
        weights,
        optimizer,
        tokenizer,
        ledger,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::{Device, Kind};

    pub(crate) fn manifest() -> Manifest {
        Manifest {
            format: String::new(),
            job: "j".into(),
            phase: "p".into(),
            step: 3,
            total_steps: 10,
            model: GptConfig {
                vocab_size: 300,
                context: 8,
                d_model: 8,
                n_layers: 1,
                n_heads: 2,
            },
            vision: None,
            loss: 1.5,
            tokens: 100,
            words: 80,
            synthetic_words: 0,
            files: BTreeMap::new(),
            provenance: Provenance::default(),
        }
    }

    #[tokio::test]
    async fn round_trips_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let location = Location::open(url.as_str()).unwrap().join("ckpt");
        let w = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let pieces = ToSave {
            weights: &[("w".into(), w.shallow_clone())],
            optimizer: None,
            tokenizer: b"{}",
            ledger: None,
        };
        save(&location, pieces, manifest()).await.unwrap();
        let loaded = load(&location).await.unwrap();
        assert_eq!(loaded.manifest.step, 3);
        assert!(loaded.weights[0].1.equal(&w));
        assert!(loaded.optimizer.is_none());

        // Flip one byte of the weights: the checkpoint is refused, not loaded.
        let path = dir.path().join("ckpt").join(MODEL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let error = load(&location).await.err().unwrap().to_string();
        assert!(error.contains("model.safetensors is corrupt"), "{error}");

        // No manifest: incomplete.
        std::fs::remove_file(dir.path().join("ckpt").join(MANIFEST_FILE)).unwrap();
        let error = load(&location).await.err().unwrap().to_string();
        assert!(error.contains("no manifest"), "{error}");
    }
}
