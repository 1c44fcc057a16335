//! Text tokenized once: a source's token ids kept in the job's storage, so later phases
//! and later runs that read the same text with the same tokenizer load them instead of
//! tokenizing again (minutes at the BabyLM scale, see BENCHMARKS.md).
//!
//! A shard is named by a hash of the tokenizer and of every document, so any change
//! to either makes a new one; it lives under `<storage>/tokens/`. Its bytes are a
//! magic, the count of ids, then the ids as little-endian u32. A shard that does not
//! read back whole (truncated, another format, an id past the vocabulary) is ignored,
//! tokenized anew and written again, never used.

use outloud_core::storage::Location;
use sha2::{Digest, Sha256};

use crate::error::WorkerError;
use crate::tokenizer::Tokenizer;

const MAGIC: &[u8; 8] = b"OLTOK01\0";

/// The token ids of `docs` under `tokenizer`, from `storage`'s shard when there is a
/// good one, else tokenized and kept there.
pub fn tokens(
    runtime: &tokio::runtime::Handle,
    storage: &str,
    tokenizer: &Tokenizer,
    docs: &[String],
) -> Result<Vec<i64>, WorkerError> {
    let tokenizer_json = tokenizer.to_json()?;
    let shard =
        Location::open(storage)?.join(&format!("tokens/{}.bin", key(&tokenizer_json, docs)));
    let vocab = tokenizer.vocab_size() as u64;
    if let Ok(bytes) = runtime.block_on(shard.get()) {
        match decode(&bytes, vocab) {
            Some(ids) => {
                tracing::info!(shard = %shard.url(), tokens = ids.len(), "token shard read");
                return Ok(ids);
            }
            None => {
                tracing::warn!(shard = %shard.url(), "token shard unreadable; tokenizing again")
            }
        }
    }
    let ids = tokenizer.encode_stream(docs)?;
    if let Err(e) = runtime.block_on(shard.put(encode(&ids))) {
        // Training goes on without the shard: the next phase tokenizes again.
        tracing::warn!(shard = %shard.url(), error = %e, "token shard not written");
    }
    Ok(ids)
}

/// What names a shard: the tokenizer and every document, each length-prefixed.
fn key(tokenizer_json: &[u8], docs: &[String]) -> String {
    let mut hash = Sha256::new();
    hash.update((tokenizer_json.len() as u64).to_le_bytes());
    hash.update(tokenizer_json);
    for doc in docs {
        hash.update((doc.len() as u64).to_le_bytes());
        hash.update(doc.as_bytes());
    }
    hex::encode(hash.finalize())
}

fn encode(ids: &[i64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + 4 * ids.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    bytes.extend(ids.iter().flat_map(|&id| (id as u32).to_le_bytes()));
    bytes
}

/// The ids of a whole, well-formed shard for a vocabulary of `vocab`.
fn decode(bytes: &[u8], vocab: u64) -> Option<Vec<i64>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (count, ids) = rest.split_at_checked(8)?;
    let count = u64::from_le_bytes(count.try_into().ok()?);
    if ids.len() as u64 != count.checked_mul(4)? {
        return None;
    }
    ids.chunks_exact(4)
        .map(|b| {
            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (u64::from(id) < vocab).then_some(i64::from(id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<String> {
        (0..200)
            .map(|i| format!("the dog sees the ball number {i} and the cat runs home"))
            .collect()
    }

    #[test]
    fn a_source_is_tokenized_once_and_a_bad_shard_is_never_used() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = url::Url::from_directory_path(dir.path())
            .unwrap()
            .to_string();
        let docs = docs();
        let tokenizer = Tokenizer::train(&docs, 300).unwrap();
        let fresh = tokens(runtime.handle(), &storage, &tokenizer, &docs).unwrap();
        assert_eq!(fresh, tokenizer.encode_stream(&docs).unwrap());
        let shards: Vec<_> = std::fs::read_dir(dir.path().join("tokens"))
            .unwrap()
            .collect();
        assert_eq!(shards.len(), 1);
        let path = shards[0].as_ref().unwrap().path();
        // Read back, not tokenized: a shard whose ids were changed (still valid) is
        // what comes back, which shows it was read.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[16] = 1;
        bytes[17..20].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let read = tokens(runtime.handle(), &storage, &tokenizer, &docs).unwrap();
        assert_eq!((read[0], &read[1..]), (1, &fresh[1..]));
        // Truncated: ignored, tokenized again, written whole again.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let again = tokens(runtime.handle(), &storage, &tokenizer, &docs).unwrap();
        assert_eq!(again, fresh);
        assert_eq!(std::fs::read(&path).unwrap().len(), 16 + 4 * fresh.len());
        // Other text, or another tokenizer: another shard.
        let mut other = docs.clone();
        other[0].push_str(" again");
        tokens(runtime.handle(), &storage, &tokenizer, &other).unwrap();
        let bigger = Tokenizer::train(&docs, 320).unwrap();
        tokens(runtime.handle(), &storage, &bigger, &docs).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tokens"))
                .unwrap()
                .count(),
            3
        );
        // An id past the vocabulary is refused.
        assert_eq!(decode(&encode(&[5, 400]), 300), None);
    }
}
