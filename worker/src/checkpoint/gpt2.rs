//! GPT-2's layout of our language model, both ways: the names Hugging Face's
//! `GPT2LMHeadModel` gives our parameters, and which weights it keeps transposed
//! (`Conv1D`, stored (in, out)). [`crate::export`] writes it; a checkpoint in it (an
//! exported folder) loads back through [`imported_weights`].

use tch::Tensor;

use crate::error::WorkerError;

/// Each block's modules: our name, GPT-2's, and whether its weight is a `Conv1D`.
const BLOCK_MODULES: [(&str, &str, bool); 6] = [
    ("ln1", "ln_1", false),
    ("ln2", "ln_2", false),
    ("attn.qkv", "attn.c_attn", true),
    ("attn.proj", "attn.c_proj", true),
    ("mlp.fc", "mlp.c_fc", true),
    ("mlp.proj", "mlp.c_proj", true),
];
/// Parameters outside the blocks, named alike on both sides (under `transformer.`).
const OUTER: [&str; 4] = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"];

/// Our parameter name -> GPT-2's, and whether the weight is transposed (a `Conv1D`).
pub fn gpt2_name(ours: &str) -> Option<(String, bool)> {
    if OUTER.contains(&ours) {
        return Some((format!("transformer.{ours}"), false));
    }
    let (layer, part) = ours.strip_prefix("blocks.")?.split_once('.')?;
    let (module, field) = part.rsplit_once('.')?;
    let &(_, theirs, conv) = BLOCK_MODULES.iter().find(|(o, _, _)| *o == module)?;
    let name = format!("transformer.h.{layer}.{theirs}.{field}");
    Some((name, conv && field == "weight"))
}

/// GPT-2's parameter name -> ours, and whether the weight is transposed: the inverse
/// of [`gpt2_name`], for starting from an exported folder.
fn our_name(theirs: &str) -> Option<(String, bool)> {
    let rest = theirs.strip_prefix("transformer.")?;
    if OUTER.contains(&rest) {
        return Some((rest.to_string(), false));
    }
    let (layer, part) = rest.strip_prefix("h.")?.split_once('.')?;
    let (module, field) = part.rsplit_once('.')?;
    let &(ours, _, conv) = BLOCK_MODULES.iter().find(|(_, t, _)| *t == module)?;
    Some((
        format!("blocks.{layer}.{ours}.{field}"),
        conv && field == "weight",
    ))
}

/// `tensor` turned between our orientation and a `Conv1D`'s when `conv` says it is
/// one (a transpose: the same call goes either way).
pub fn oriented(tensor: Tensor, conv: bool) -> Tensor {
    if conv {
        tensor.tr().contiguous()
    } else {
        tensor
    }
}

/// The weights of an exported folder under our names and in our orientation: the
/// language model from `model` (GPT-2 layout), the vision path from `vision` as is.
pub fn imported_weights(
    model: &[u8],
    vision: Option<&[u8]>,
) -> Result<Vec<(String, Tensor)>, WorkerError> {
    let mut weights = Vec::new();
    for (theirs, tensor) in super::tensors_from(model)? {
        let (ours, conv) = our_name(&theirs)
            .ok_or_else(|| WorkerError::Data(format!("exported model has unknown `{theirs}`")))?;
        weights.push((ours, oriented(tensor, conv)));
    }
    if let Some(vision) = vision {
        weights.extend(super::tensors_from(vision)?);
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_has_its_gpt2_name() {
        let cases = [
            ("wte.weight", "transformer.wte.weight", false),
            ("blocks.3.ln1.bias", "transformer.h.3.ln_1.bias", false),
            (
                "blocks.0.attn.qkv.weight",
                "transformer.h.0.attn.c_attn.weight",
                true,
            ),
            (
                "blocks.0.attn.qkv.bias",
                "transformer.h.0.attn.c_attn.bias",
                false,
            ),
            (
                "blocks.11.mlp.proj.weight",
                "transformer.h.11.mlp.c_proj.weight",
                true,
            ),
            ("ln_f.weight", "transformer.ln_f.weight", false),
        ];
        for (ours, theirs, conv) in cases {
            assert_eq!(gpt2_name(ours), Some((theirs.to_string(), conv)), "{ours}");
        }
        assert_eq!(gpt2_name("blocks.0.attn.rotary.weight"), None);
    }

    #[test]
    fn gpt2_names_map_back_to_ours() {
        for ours in [
            "wte.weight",
            "blocks.2.attn.qkv.weight",
            "blocks.0.ln2.bias",
            "ln_f.bias",
        ] {
            let (theirs, conv) = gpt2_name(ours).unwrap();
            assert_eq!(our_name(&theirs), Some((ours.to_string(), conv)));
        }
        assert_eq!(our_name("lm_head.weight"), None);
    }
}
