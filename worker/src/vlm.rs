//! The vision-language model: visual tokens, projected into the language model's
//! embedding space and placed before the text, then one causal transformer over both.
//!
//! Parameter names: the language model keeps phase 1's names (`wte.weight`,
//! `blocks.0...`), so its checkpoint loads as it is; the vision path lives under
//! `vision.` and `projector.`. Losses count only the tokens a phase teaches (caption,
//! answer): every other target is [`IGNORE`].

use outloud_core::spec::{VisionEncoder, VisionSpec};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::model::{Attend, Gpt, GptConfig, cross_entropy};
use crate::vision::{Encoder, Projector, Vit, VitConfig};

/// A target that does not count (image positions, prompts, padding).
pub const IGNORE: i64 = -100;

/// The vision path a model was built with, as its checkpoint manifest records it: the
/// model's own type (a task's `VisionSpec` converts into it), so the checkpoint format
/// does not change when the spec format does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionPath {
    pub encoder: EncoderKind,
    /// Pictures are resized to this many pixels per side.
    pub image_size: u32,
    pub patch_size: u32,
    pub d_model: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    /// Width of precomputed features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_width: Option<u32>,
    /// The encoder's weights were kept fixed.
    #[serde(default)]
    pub frozen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderKind {
    /// A ViT over pixels.
    Vit,
    /// Precomputed features.
    Features,
}

impl From<VisionSpec> for VisionPath {
    fn from(v: VisionSpec) -> Self {
        Self {
            encoder: match v.encoder {
                VisionEncoder::Vit => EncoderKind::Vit,
                VisionEncoder::Features => EncoderKind::Features,
            },
            image_size: v.image_size,
            patch_size: v.patch_size,
            d_model: v.d_model,
            n_layers: v.n_layers,
            n_heads: v.n_heads,
            features_width: v.features_width,
            frozen: v.frozen,
        }
    }
}

/// A small ViT path for unit tests: 16-pixel pictures, 8-pixel patches, width 16.
#[cfg(test)]
pub(crate) fn test_vision_path() -> VisionPath {
    VisionPath::from(VisionSpec {
        encoder: outloud_core::spec::VisionEncoder::Vit,
        image_size: 16,
        patch_size: 8,
        d_model: 16,
        n_layers: 1,
        n_heads: 2,
        features_width: None,
        frozen: false,
    })
}

/// Whether a parameter belongs to the vision path (encoder or projector), not the
/// language model.
pub fn in_vision_path(name: &str) -> bool {
    name.starts_with("vision.") || name.starts_with("projector.")
}

impl VisionPath {
    /// The encoder configuration the model is built with.
    pub fn config(&self) -> VisionConfig {
        match self.encoder {
            EncoderKind::Vit => VisionConfig::Vit(VitConfig {
                image_size: self.image_size,
                patch_size: self.patch_size,
                d_model: self.d_model,
                n_layers: self.n_layers,
                n_heads: self.n_heads,
            }),
            EncoderKind::Features => VisionConfig::Features {
                width: self.features_width.unwrap_or(0) as i64,
            },
        }
    }

    /// Visual tokens per picture for a ViT.
    pub fn vit_tokens(&self) -> u32 {
        let side = self.image_size / self.patch_size.max(1);
        side * side
    }
}

/// Which encoder turns pictures into visual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionConfig {
    Vit(VitConfig),
    /// Precomputed features of this width.
    Features {
        width: i64,
    },
}

#[derive(Debug)]
pub struct Vlm {
    pub lm: Gpt,
    pub encoder: Encoder,
    pub projector: Projector,
}

impl Vlm {
    pub fn new(root: &nn::Path, lm: GptConfig, vision: VisionConfig) -> Self {
        let encoder = match vision {
            VisionConfig::Vit(config) => Encoder::Vit(Vit::new(&(root / "vision"), config)),
            VisionConfig::Features { width } => Encoder::Features { width },
        };
        let projector = Projector::new(&(root / "projector"), encoder.width(), lm.d_model as i64);
        Self {
            lm: Gpt::new(root, lm),
            encoder,
            projector,
        }
    }

    /// Pixels (B, 3, H, W) or features (B, N, D) -> visual tokens (B, N, C).
    pub fn visual_tokens(&self, vision_input: &Tensor) -> Tensor {
        self.projector.forward(&self.encoder.forward(vision_input))
    }

    /// Next-token logits over [visual tokens, text] (B, N + T, vocab).
    pub fn forward(&self, vision_input: &Tensor, ids: &Tensor) -> Tensor {
        let visual = self.visual_tokens(vision_input); // (B, N, C)
        let x = Tensor::cat(&[visual, self.lm.embed(ids)], 1); // (B, N + T, C)
        let positions = Tensor::arange(x.size()[1], (Kind::Int64, x.device()));
        self.lm
            .forward_embeddings(&x, &positions, Attend::Causal, None)
    }

    /// Mean cross-entropy of `targets` (B, T): the token each text position should be
    /// predicted as, or [`IGNORE`]. Text token t is predicted from the position before it,
    /// so the first is predicted from the last visual token.
    pub fn loss(&self, vision_input: &Tensor, ids: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.forward(vision_input, ids);
        let (n, t) = (logits.size()[1] - ids.size()[1], ids.size()[1]);
        let predictions = logits.narrow(1, n - 1, t); // (B, T, vocab)
        let vocab = predictions.size()[2];
        cross_entropy(
            &predictions.reshape([-1, vocab]),
            &targets.reshape([-1]),
            IGNORE,
        )
    }
}

/// Targets that teach only where `taught` (B, T) is true: `ids` there, [`IGNORE`] elsewhere.
pub fn taught_targets(ids: &Tensor, taught: &Tensor) -> Tensor {
    ids.masked_fill(&taught.logical_not(), IGNORE)
}

/// A small VLM for unit tests: [`crate::model::test_config`] (context 64) after 16-pixel
/// pictures cut into `patch_size`-pixel patches by a one-layer ViT of width 16.
#[cfg(test)]
pub(crate) fn test_vlm(vs: &nn::VarStore, patch_size: u32) -> Vlm {
    let vit = VitConfig {
        image_size: 16,
        patch_size,
        d_model: 16,
        n_layers: 1,
        n_heads: 2,
    };
    Vlm::new(
        &vs.root(),
        crate::model::test_config(64),
        VisionConfig::Vit(vit),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn vlm(vs: &nn::VarStore) -> Vlm {
        tch::manual_seed(3);
        test_vlm(vs, 8)
    }

    #[test]
    fn only_taught_tokens_count_in_the_loss() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = vlm(&vs);
        let images = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let ids = Tensor::randint(300, [2, 10], (Kind::Int64, Device::Cpu));
        // A 4-token prompt, then the caption.
        let taught = Tensor::arange(10, (Kind::Int64, Device::Cpu))
            .ge(4)
            .unsqueeze(0)
            .expand([2, 10], false);
        let targets = taught_targets(&ids, &taught);
        let loss = model.loss(&images, &ids, &targets).double_value(&[]);

        // The loss is exactly the mean over caption positions, computed by hand.
        let logits = model.forward(&images, &ids).narrow(1, 4 - 1, 10); // 4 visual tokens (2 x 2 patches)
        let log_probs = logits.log_softmax(-1, Kind::Float);
        let mut total = 0.0;
        for b in 0..2 {
            for t in 4..10 {
                total -= log_probs.double_value(&[b, t, ids.int64_value(&[b, t])]);
            }
        }
        assert!(
            (total / 12.0 - loss).abs() < 1e-5,
            "{} vs {loss}",
            total / 12.0
        );
        // A changed caption target changes it.
        let changed = targets.copy();
        let _ = changed.narrow(1, 6, 1).fill_(1);
        assert_ne!(model.loss(&images, &ids, &changed).double_value(&[]), loss);
        // The picture matters: the first caption token is predicted from what was seen.
        let dark = images.zeros_like();
        assert_ne!(model.loss(&dark, &ids, &targets).double_value(&[]), loss);
    }

    #[test]
    fn the_language_model_keeps_phase_one_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = vlm(&vs);
        let names = vs.variables();
        assert!(names.contains_key("wte.weight") && names.contains_key("blocks.1.mlp.fc.weight"));
        assert!(
            names.contains_key("vision.patch_embed.weight")
                && names.contains_key("projector.fc2.bias")
        );
    }
}
