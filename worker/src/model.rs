//! The language model: a decoder-only transformer (GPT), bottom-up.
//!
//! attention -> MLP -> block -> model. Pre-norm residual blocks, causal scaled
//! dot-product attention, learned positions, and an output layer tied to the token
//! embedding. Parameter paths (`blocks.0.attn.qkv.weight`) are the checkpoint's tensor
//! names. Shapes in comments: B batch, T time (new positions), S all positions seen
//! (past + new), C channels (d_model), nh heads, hs head size.
//!
//! Training runs whole sequences with a causal mask. Decoding ([`crate::generate`])
//! feeds only new positions and keeps every layer's keys and values in a [`KvCache`];
//! padded batches pass an explicit mask of which positions may be attended. The blocks
//! also serve the vision encoder ([`crate::vision`]), which attends everywhere.

use outloud_core::spec::ModelShape;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The model's hyper-parameters, saved in every checkpoint manifest. The model's own
/// type: a task's resolved model shape converts into it, so the checkpoint format does
/// not change when the spec format does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: u32,
    /// Positions the model sees at once (visual tokens included).
    pub context: u32,
    pub d_model: u32,
    pub n_layers: u32,
    pub n_heads: u32,
}

impl From<ModelShape> for GptConfig {
    fn from(shape: ModelShape) -> Self {
        Self {
            vocab_size: shape.vocab_size,
            context: shape.context,
            d_model: shape.d_model,
            n_layers: shape.n_layers,
            n_heads: shape.n_heads,
        }
    }
}

/// One layer's past keys and values, each (B, nh, S, hs).
pub type LayerCache = Option<(Tensor, Tensor)>;

/// Every layer's past keys and values during decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layers: u32) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
        }
    }
}

/// What each position may attend to.
#[derive(Debug, Clone, Copy)]
pub enum Attend<'a> {
    /// Itself and every earlier position (language).
    Causal,
    /// Every position (vision).
    Everything,
    /// As the boolean mask (B, 1, T, S) says (padded batches, decoding).
    Mask(&'a Tensor),
}

#[derive(Debug)]
struct SelfAttention {
    qkv: nn::Linear,
    proj: nn::Linear,
    n_heads: i64,
}

impl SelfAttention {
    fn new(p: nn::Path, d: i64, n_heads: i64) -> Self {
        Self {
            qkv: nn::linear(&p / "qkv", d, 3 * d, Default::default()),
            proj: nn::linear(&p / "proj", d, d, Default::default()),
            n_heads,
        }
    }

    /// `cache` holds this layer's past keys and values when decoding.
    fn forward(&self, x: &Tensor, attend: Attend, cache: Option<&mut LayerCache>) -> Tensor {
        let (b, t, c) = x.size3().expect("attention input is (B, T, C)");
        let hs = c / self.n_heads;
        let heads = |y: Tensor| y.view([b, t, self.n_heads, hs]).transpose(1, 2); // (B, nh, T, hs)
        let qkv = self.qkv.forward(x).split(c, 2); // 3 x (B, T, C)
        let q = heads(qkv[0].shallow_clone());
        let (mut k, mut v) = (heads(qkv[1].shallow_clone()), heads(qkv[2].shallow_clone()));
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.take() {
                k = Tensor::cat(&[past_k, k], 2); // (B, nh, S, hs)
                v = Tensor::cat(&[past_v, v], 2);
            }
            *cache = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let (mask, causal) = match attend {
            Attend::Causal => (None, true),
            Attend::Everything => (None, false),
            Attend::Mask(mask) => (Some(mask), false),
        };
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None, false);
        let y = y.transpose(1, 2).contiguous().view([b, t, c]); // (B, T, C)
        self.proj.forward(&y)
    }
}

#[derive(Debug)]
struct Mlp {
    fc: nn::Linear,
    proj: nn::Linear,
}

impl Mlp {
    fn new(p: nn::Path, d: i64) -> Self {
        Self {
            fc: nn::linear(&p / "fc", d, 4 * d, Default::default()),
            proj: nn::linear(&p / "proj", 4 * d, d, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.proj.forward(&self.fc.forward(x).gelu("tanh"))
    }
}

/// A pre-norm transformer block: attention then MLP, each around a residual.
#[derive(Debug)]
pub struct Block {
    ln1: nn::LayerNorm,
    attn: SelfAttention,
    ln2: nn::LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(p: nn::Path, d: i64, n_heads: i64) -> Self {
        Self {
            ln1: nn::layer_norm(&p / "ln1", vec![d], Default::default()),
            attn: SelfAttention::new(&p / "attn", d, n_heads),
            ln2: nn::layer_norm(&p / "ln2", vec![d], Default::default()),
            mlp: Mlp::new(&p / "mlp", d),
        }
    }

    pub fn forward(&self, x: &Tensor, attend: Attend, cache: Option<&mut LayerCache>) -> Tensor {
        let x = x + self.attn.forward(&self.ln1.forward(x), attend, cache);
        &x + self.mlp.forward(&self.ln2.forward(&x))
    }
}

#[derive(Debug)]
pub struct Gpt {
    wte: nn::Embedding,
    wpe: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    pub config: GptConfig,
}

impl Gpt {
    pub fn new(p: &nn::Path, config: GptConfig) -> Self {
        let d = config.d_model as i64;
        let embedding = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        Self {
            wte: nn::embedding(p / "wte", config.vocab_size as i64, d, embedding),
            wpe: nn::embedding(p / "wpe", config.context as i64, d, embedding),
            blocks: (0..config.n_layers)
                .map(|i| Block::new(p / "blocks" / i, d, config.n_heads as i64))
                .collect(),
            ln_f: nn::layer_norm(p / "ln_f", vec![d], Default::default()),
            config,
        }
    }

    pub fn device(&self) -> tch::Device {
        self.wte.ws.device()
    }

    /// Token ids (B, T) -> next-token logits (B, T, vocab), whole sequences, causal.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let (_, t) = ids.size2().expect("ids are (B, T)");
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        self.forward_with(ids, &positions, Attend::Causal, None)
    }

    /// Token ids (B, T) -> their embeddings (B, T, C), before positions are added.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        self.wte.forward(ids)
    }

    /// Token `ids` (B, T) at `positions` (T, or B x T), attending as `attend` says,
    /// extending `cache` when decoding.
    pub fn forward_with(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        attend: Attend,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        self.forward_embeddings(&self.embed(ids), positions, attend, cache)
    }

    /// The transformer over input embeddings `x` (B, T, C): tokens, or visual tokens
    /// followed by tokens. Answers next-token logits (B, T, vocab).
    pub fn forward_embeddings(
        &self,
        x: &Tensor,
        positions: &Tensor,
        attend: Attend,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        // The output layer shares the token embedding's weights.
        self.states(x, positions, attend, cache)
            .matmul(&self.wte.ws.tr()) // (B, T, vocab)
    }

    /// Token ids (B, T) -> the last layer's states after the final norm (B, T, C),
    /// causal: what a head on top of the model reads (GLUE's classifier).
    pub fn hidden(&self, ids: &Tensor) -> Tensor {
        let (_, t) = ids.size2().expect("ids are (B, T)");
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        self.states(&self.embed(ids), &positions, Attend::Causal, None)
    }

    fn states(
        &self,
        x: &Tensor,
        positions: &Tensor,
        attend: Attend,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let mut x = x + self.wpe.forward(positions); // (B, T, C)
        for (i, block) in self.blocks.iter().enumerate() {
            let layer = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(&x, attend, layer);
        }
        self.ln_f.forward(&x)
    }

    /// Mean next-token cross-entropy of `targets` (B, T) given `ids` (B, T).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.forward(ids);
        let vocab = logits.size()[2];
        cross_entropy(&logits.view([-1, vocab]), &targets.reshape([-1]), -100)
    }
}

/// Mean cross-entropy of `logits` (N, vocab) against `targets` (N), skipping targets
/// equal to `ignore`, computed in f32 whatever the logits' kind (where autocast puts
/// it). bf16 logits are copied to f32 first: ATen fuses that conversion into the
/// log-softmax for fp16 only. Measured on an H200 at the base preset, batch 16, the
/// copy, the f32 log-softmax and its backward and the gradient's cast back take 1.3 ms
/// of a 17.8 ms step (BENCHMARKS.md): a fused bf16 kernel is where to win it back.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore: i64) -> Tensor {
    logits.log_softmax(-1, Kind::Float).g_nll_loss::<Tensor>(
        targets,
        None,
        tch::Reduction::Mean,
        ignore,
    )
}

/// A small shape for unit tests: vocabulary 300, width 32, 2 layers, 4 heads.
#[cfg(test)]
pub(crate) fn test_config(context: u32) -> GptConfig {
    GptConfig {
        vocab_size: 300,
        context,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 50,
            context: 16,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
        }
    }

    #[test]
    fn logits_have_the_right_shape_and_names_match_the_checkpoint_layout() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), tiny());
        let ids = Tensor::randint(50, [3, 10], (Kind::Int64, Device::Cpu));
        assert_eq!(model.forward(&ids).size(), vec![3, 10, 50]);
        let names = vs.variables();
        assert!(names.contains_key("blocks.1.attn.qkv.weight"));
        assert!(names.contains_key("wte.weight"));
        assert!(
            !names.keys().any(|n| n.starts_with("lm_head")),
            "the output layer is tied"
        );
    }

    #[test]
    fn attention_is_causal() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), tiny());
        let a = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let b = Tensor::from_slice(&[1i64, 2, 3, 9, 9, 9]).view([1, 6]);
        let (la, lb) = (model.forward(&a), model.forward(&b));
        // Positions before the first change see the same prefix: same logits.
        let diff = (la.narrow(1, 0, 3) - lb.narrow(1, 0, 3))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        let diff = (la.narrow(1, 3, 1) - lb.narrow(1, 3, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff > 1e-6);
    }
}
