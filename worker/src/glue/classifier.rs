//! The model GLUE fine-tunes: the checkpoint's GPT with a classification head on the
//! state of each input's last real token (inputs are padded on the right, and causal
//! attention keeps padding out of that state). The head is the 2025 pipeline's shape:
//! norm, dense, GELU, norm, dropout, then a linear layer to the classes.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::model::{Gpt, GptConfig};

/// Where the head's weights live beside the model's (`glue_head/...`).
pub const HEAD: &str = "glue_head";
const NORM_EPS: f64 = 1e-5;

pub struct Classifier {
    pub gpt: Gpt,
    dense: nn::Linear,
    out: nn::Linear,
    dropout: f64,
}

impl Classifier {
    /// The GPT at `root` (where a checkpoint's weights load by name) and a fresh head.
    pub fn new(root: &nn::Path, config: GptConfig, labels: u32, dropout: f64) -> Self {
        let d = config.d_model as i64;
        let head = root / HEAD;
        Self {
            gpt: Gpt::new(root, config),
            dense: nn::linear(&head / "dense", d, d, Default::default()),
            out: nn::linear(&head / "out", d, i64::from(labels), Default::default()),
            dropout,
        }
    }

    /// Class logits (B, K) of right-padded `ids` (B, T) whose last real tokens are at
    /// `last` (B); dropout only while `train`.
    pub fn forward(&self, ids: &Tensor, last: &Tensor, train: bool) -> Tensor {
        let hidden = self.gpt.hidden(ids); // (B, T, C)
        let d = hidden.size()[2];
        let at = last.view([-1, 1, 1]).expand([-1, 1, d], false);
        let state = hidden.gather(1, &at, false).squeeze_dim(1); // (B, C)
        let normed =
            |x: &Tensor| x.layer_norm([d], None::<Tensor>, None::<Tensor>, NORM_EPS, false);
        let x = self.dense.forward(&normed(&state)).gelu("none");
        let x = normed(&x).dropout(self.dropout, train);
        self.out.forward(&x).to_kind(Kind::Float)
    }
}
