//! A checkpoint as a folder the Hugging Face ecosystem loads as it is: our language
//! model is GPT-2's architecture (pre-norm, learned positions, tied embeddings, tanh
//! GELU, LayerNorm eps 1e-5, biases everywhere), so it becomes a `GPT2LMHeadModel`
//! (`config.json`, `model.safetensors`) with a fast tokenizer (our `tokenizer.json`
//! and its `tokenizer_config.json`). That is how the BabyLM evaluation pipeline loads
//! models. A model card (`README.md`) says what it was trained on. Vision-language
//! checkpoints also leave their vision encoder and projector in `vision.safetensors`
//! with `vision_config.json`.
//!
//! GPT-2 keeps its linear layers as `Conv1D`, weights stored (in, out): the transpose
//! of ours.
//!
//! The folder is also a checkpoint (format [`checkpoint::EXPORT_FORMAT`]): its
//! `manifest.json` lists every file's SHA-256, so a phase may start from it
//! (`init_from`), verified like any checkpoint; [`checkpoint::gpt2`] maps the names
//! both ways.

use std::path::Path;

use serde_json::json;
use tch::Kind;

use crate::checkpoint::gpt2::{self, gpt2_name};
use crate::checkpoint::{self, Loaded, Manifest};
use crate::error::WorkerError;
use crate::tokenizer::END_OF_TEXT;

/// Writes `loaded` into `folder` (made if missing) as a Hugging Face GPT-2 folder.
pub fn export(loaded: &Loaded, folder: &Path) -> Result<(), WorkerError> {
    std::fs::create_dir_all(folder)?;
    let mut language = Vec::new();
    let mut vision = Vec::new();
    for (name, tensor) in &loaded.weights {
        let tensor = tensor.to_kind(Kind::Float);
        if crate::vlm::in_vision_path(name) {
            vision.push((name.clone(), tensor));
            continue;
        }
        let (renamed, conv) = gpt2_name(name)
            .ok_or_else(|| WorkerError::Data(format!("export: no GPT-2 name for `{name}`")))?;
        language.push((renamed, gpt2::oriented(tensor, conv)));
    }
    // Every file but the model card (the CLI adds scores to it) is listed in the
    // manifest, written last, so the folder is also a checkpoint a phase can start from.
    let mut manifest = Manifest {
        format: checkpoint::EXPORT_FORMAT.into(),
        files: Default::default(),
        ..loaded.manifest.clone()
    };
    let mut write = |file: &str, bytes: Vec<u8>| {
        manifest
            .files
            .insert(file.to_string(), checkpoint::sha256(&bytes));
        std::fs::write(folder.join(file), bytes)
    };
    write(
        checkpoint::MODEL_FILE,
        checkpoint::tensors_to_bytes(&language)?,
    )?;
    write("config.json", pretty(&config(loaded)))?;
    write(checkpoint::TOKENIZER_FILE, loaded.tokenizer.clone())?;
    let context = loaded.manifest.model.context;
    write("tokenizer_config.json", pretty(&tokenizer_config(context)))?;
    let special =
        json!({"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT});
    write("special_tokens_map.json", pretty(&special))?;
    if let Some(path) = &loaded.manifest.vision {
        write(
            checkpoint::VISION_FILE,
            checkpoint::tensors_to_bytes(&vision)?,
        )?;
        write("vision_config.json", pretty(&json!(path)))?;
    }
    write(checkpoint::LEDGER_FILE, loaded.ledger.to_json())?;
    std::fs::write(folder.join("README.md"), model_card(loaded))?;
    let manifest = serde_json::to_value(&manifest).expect("manifest serializes");
    std::fs::write(folder.join(checkpoint::MANIFEST_FILE), pretty(&manifest))?;
    Ok(())
}

fn pretty(value: &serde_json::Value) -> Vec<u8> {
    // A JSON value always serializes.
    serde_json::to_vec_pretty(value).expect("JSON serializes")
}

/// GPT-2's `config.json` for our shape.
fn config(loaded: &Loaded) -> serde_json::Value {
    let m = &loaded.manifest.model;
    let end_of_text = crate::tokenizer::Tokenizer::from_json(&loaded.tokenizer)
        .ok()
        .map(|t| t.end_of_text());
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": m.vocab_size,
        "n_positions": m.context,
        "n_ctx": m.context,
        "n_embd": m.d_model,
        "n_layer": m.n_layers,
        "n_head": m.n_heads,
        "n_inner": 4 * m.d_model,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "torch_dtype": "float32",
    })
}

fn tokenizer_config(context: u32) -> serde_json::Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "model_max_length": context,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
    })
}

/// What the model is and what it read, from the manifest (the CLI adds the scores).
fn model_card(loaded: &Loaded) -> String {
    let m = &loaded.manifest;
    let data: String = m
        .provenance
        .data
        .iter()
        .map(|(name, sha)| format!("- `{name}`: SHA-256 `{sha}`\n"))
        .collect();
    format!(
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n\n\
         # {job} / {phase}\n\n\
         A GPT-2-architecture model trained with Outloud (\"Dreaming Out Loud\", BabyLM \
         multimodal track): job `{job}`, phase `{phase}`, after {step} optimizer steps.\n\n\
         - width {d}, {layers} layers, {heads} heads, context {context}, vocabulary {vocab}\n\
         - tokens trained on in this phase: {tokens}; words: {words} (of which read in the \
         model's own captions: {synthetic})\n\
         - written by `{binary}`; step spec SHA-256 `{spec}`\n\n\
         ## Data read by this phase\n\n{data}\n\
         ## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\
         model = AutoModelForCausalLM.from_pretrained(\"PATH\")\n\
         tokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n```\n",
        job = m.job,
        phase = m.phase,
        step = m.step,
        d = m.model.d_model,
        layers = m.model.n_layers,
        heads = m.model.n_heads,
        context = m.model.context,
        vocab = m.model.vocab_size,
        tokens = m.tokens,
        words = m.words,
        synthetic = m.synthetic_words,
        binary = m.provenance.binary,
        spec = m.provenance.spec_sha256,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vision_checkpoint_leaves_its_vision_path_beside_the_language_model() {
        use crate::model::{Gpt, test_config};
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _model = Gpt::new(&vs.root(), test_config(8));
        let mut weights: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
        let small = || tch::Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
        weights.push(("vision.patch.weight".into(), small()));
        weights.push(("projector.fc1.weight".into(), small()));
        let vision = crate::vlm::test_vision_path();
        let docs = vec!["a small world of words".to_string(); 4];
        let tokenizer = crate::tokenizer::Tokenizer::train(&docs, 300).unwrap();
        let loaded = Loaded {
            manifest: crate::checkpoint::Manifest {
                model: test_config(8),
                vision: Some(vision),
                ..crate::checkpoint::tests::manifest()
            },
            weights,
            optimizer: None,
            tokenizer: tokenizer.to_json().unwrap(),
            ledger: Default::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        export(&loaded, dir.path()).unwrap();
        let names = |file: &str| -> Vec<String> {
            let bytes = std::fs::read(dir.path().join(file)).unwrap();
            let mut names: Vec<String> = checkpoint::tensors_from(&bytes)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names("vision.safetensors"),
            ["projector.fc1.weight", "vision.patch.weight"]
        );
        assert!(
            names("model.safetensors")
                .iter()
                .all(|n| n.starts_with("transformer."))
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("vision_config.json")).unwrap())
                .unwrap();
        assert_eq!(config["patch_size"], 8);

        // The folder is a checkpoint too: it loads back, verified, to the same weights.
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let location = outloud_core::storage::Location::open(url.as_str()).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let back = runtime.block_on(checkpoint::load(&location)).unwrap();
        assert_eq!(back.manifest.format, checkpoint::EXPORT_FORMAT);
        assert_eq!(back.weights.len(), loaded.weights.len());
        for (name, tensor) in &loaded.weights {
            let (_, again) = back.weights.iter().find(|(n, _)| n == name).unwrap();
            assert!(again.equal(tensor), "{name} changed on the way back");
        }
        // A changed byte in any listed file is refused.
        let path = dir.path().join("tokenizer_config.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("false", "true ");
        std::fs::write(&path, text).unwrap();
        let refused = runtime.block_on(checkpoint::load(&location)).err().unwrap();
        assert!(
            refused
                .to_string()
                .contains("tokenizer_config.json is corrupt"),
            "{refused}"
        );
    }
}
