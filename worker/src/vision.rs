//! The vision path: images become a sequence of visual tokens in the language model's
//! embedding space.
//!
//! Two encoders: a small ViT trained from scratch on raw pixels, or precomputed
//! features (how the method uses a frozen pretrained encoder such as DINOv2: users
//! supply the features, nothing is downloaded). Either feeds a projector, an MLP from the
//! encoder's width to the language model's (as in LLaVA).

use tch::Tensor;
use tch::nn::{self, Module};

use crate::model::{Attend, Block};

/// A ViT's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    /// Pixels per side of the (square) input.
    pub image_size: u32,
    /// Pixels per side of a patch; each patch becomes one visual token.
    pub patch_size: u32,
    pub d_model: u32,
    pub n_layers: u32,
    pub n_heads: u32,
}

impl VitConfig {
    pub fn patches(&self) -> i64 {
        let side = (self.image_size / self.patch_size) as i64;
        side * side
    }
}

/// A vision transformer over non-overlapping patches, with learned patch positions.
#[derive(Debug)]
pub struct Vit {
    patch_embed: nn::Linear,
    pos: Tensor,
    blocks: Vec<Block>,
    ln: nn::LayerNorm,
    config: VitConfig,
}

impl Vit {
    pub fn new(p: &nn::Path, config: VitConfig) -> Self {
        let d = config.d_model as i64;
        let patch = (3 * config.patch_size * config.patch_size) as i64;
        Self {
            patch_embed: nn::linear(p / "patch_embed", patch, d, Default::default()),
            pos: p.var(
                "pos",
                &[config.patches(), d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            blocks: (0..config.n_layers)
                .map(|i| Block::new(p / "blocks" / i, d, config.n_heads as i64))
                .collect(),
            ln: nn::layer_norm(p / "ln", vec![d], Default::default()),
            config,
        }
    }

    /// Images (B, 3, H, W), values in [0, 1] -> visual tokens (B, N, D).
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let b = images.size()[0];
        let (p, side) = (
            self.config.patch_size as i64,
            (self.config.image_size / self.config.patch_size) as i64,
        );
        let patches = images
            .view([b, 3, side, p, side, p])
            .permute([0, 2, 4, 1, 3, 5]) // (B, rows, cols, 3, p, p)
            .reshape([b, side * side, 3 * p * p]); // (B, N, 3·p·p)
        let patches = (patches - 0.5).to_kind(self.pos.kind()); // bf16 weights take bf16 pixels
        let mut x = self.patch_embed.forward(&patches) + &self.pos; // (B, N, D)
        for block in &self.blocks {
            x = block.forward(&x, Attend::Everything, None);
        }
        self.ln.forward(&x)
    }
}

/// Where visual tokens come from.
#[derive(Debug)]
pub enum Encoder {
    /// Trained from raw pixels.
    Vit(Vit),
    /// Rows of precomputed features (B, N, D) used as they are.
    Features { width: i64 },
}

impl Encoder {
    pub fn width(&self) -> i64 {
        match self {
            Encoder::Vit(vit) => vit.config.d_model as i64,
            Encoder::Features { width } => *width,
        }
    }

    /// Pixels (ViT) or features -> visual tokens (B, N, width).
    pub fn forward(&self, input: &Tensor) -> Tensor {
        match self {
            Encoder::Vit(vit) => vit.forward(input),
            Encoder::Features { .. } => input.shallow_clone(),
        }
    }
}

/// Encoder width -> language-model width: Linear, GELU, Linear.
#[derive(Debug)]
pub struct Projector {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Projector {
    pub fn new(p: &nn::Path, from: i64, to: i64) -> Self {
        Self {
            fc1: nn::linear(p / "fc1", from, to, Default::default()),
            fc2: nn::linear(p / "fc2", to, to, Default::default()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.fc1.ws.kind()); // features arrive as stored
        self.fc2.forward(&self.fc1.forward(&x).gelu("tanh"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_vit_turns_pictures_into_one_token_per_patch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = VitConfig {
            image_size: 32,
            patch_size: 8,
            d_model: 24,
            n_layers: 1,
            n_heads: 4,
        };
        let vit = Vit::new(&(vs.root() / "vit"), config);
        let images = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(vit.forward(&images).size(), vec![2, 16, 24]);
        let projector = Projector::new(&(vs.root() / "projector"), 24, 64);
        assert_eq!(
            projector.forward(&vit.forward(&images)).size(),
            vec![2, 16, 64]
        );
        // Each patch token depends on its own pixels: change one patch, its token moves.
        let changed = images.copy();
        let _ = changed.narrow(2, 0, 8).narrow(3, 0, 8).fill_(0.0);
        let diff = (vit.forward(&images) - vit.forward(&changed))
            .abs()
            .sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
        assert!(diff.double_value(&[0, 0]) > 0.0);
    }
}
