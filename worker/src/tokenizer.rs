//! The byte-level BPE tokenizer, trained by the `tokenizers` crate on the phase's own
//! text and stored (as `tokenizer.json`, the Hugging Face format) beside every checkpoint.

use std::collections::HashSet;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder, TokenizerImpl,
};

use crate::error::WorkerError;

/// Separates documents in the training stream; also the BOS token for scoring.
pub const END_OF_TEXT: &str = "<|endoftext|>";

type Inner = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

pub struct Tokenizer {
    inner: Inner,
    end_of_text: u32,
}

fn tokenizer_error(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Learns `vocab_size` tokens from `documents`.
    pub fn train(documents: &[String], vocab_size: u32) -> Result<Self, WorkerError> {
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size as usize)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<char>>())
            .build();
        let mut inner: Inner = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::default())))
            .with_post_processor(None)
            .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
            .build()
            .map_err(tokenizer_error)?;
        let lines = documents
            .iter()
            .flat_map(|d| d.lines())
            .filter(|l| !l.trim().is_empty());
        inner.train(&mut trainer, lines).map_err(tokenizer_error)?;
        Self::wrap(inner)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, WorkerError> {
        Self::wrap(Inner::from_bytes(bytes).map_err(tokenizer_error)?)
    }

    fn wrap(inner: Inner) -> Result<Self, WorkerError> {
        let end_of_text = inner
            .token_to_id(END_OF_TEXT)
            .ok_or_else(|| WorkerError::Tokenizer(format!("no {END_OF_TEXT} token")))?;
        Ok(Self { inner, end_of_text })
    }

    pub fn to_json(&self) -> Result<Vec<u8>, WorkerError> {
        Ok(self
            .inner
            .to_string(false)
            .map_err(tokenizer_error)?
            .into_bytes())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WorkerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(tokenizer_error)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Many texts at once, in parallel.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>, WorkerError> {
        let encodings = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(tokenizer_error)?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, WorkerError> {
        self.inner.decode(ids, true).map_err(tokenizer_error)
    }

    /// Every document's tokens, each followed by the end-of-text token, as one stream.
    pub fn encode_stream(&self, documents: &[String]) -> Result<Vec<i64>, WorkerError> {
        let mut stream = Vec::new();
        for document in documents {
            let lines: Vec<&str> = document.lines().filter(|l| !l.trim().is_empty()).collect();
            let encodings = self
                .inner
                .encode_batch_fast(lines, false)
                .map_err(tokenizer_error)?;
            for encoding in encodings {
                stream.extend(encoding.get_ids().iter().map(|&id| id as i64));
                // Lines of one document are one text; BabyLM files put a paragraph per line.
                stream.push(
                    self.inner
                        .token_to_id("Ċ")
                        .map(i64::from)
                        .unwrap_or(self.end_of_text as i64),
                );
            }
            stream.push(self.end_of_text as i64);
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_round_trips_and_reloads() {
        let docs = vec![crate::corpus::generate(3, 5_000)];
        let tokenizer = Tokenizer::train(&docs, 400).unwrap();
        assert!(tokenizer.vocab_size() <= 400 && tokenizer.vocab_size() > 300);
        let text = "look at the red ball!";
        let ids = tokenizer.encode(text).unwrap();
        assert!(ids.len() < text.len(), "BPE merges bytes");
        assert_eq!(tokenizer.decode(&ids).unwrap().trim(), text);
        let again = Tokenizer::from_json(&tokenizer.to_json().unwrap()).unwrap();
        assert_eq!(again.encode(text).unwrap(), ids);
        let stream = tokenizer.encode_stream(&docs).unwrap();
        assert_eq!(*stream.last().unwrap(), tokenizer.end_of_text() as i64);
    }
}
