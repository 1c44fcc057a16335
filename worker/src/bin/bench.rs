//! `outloud-model-bench`: speed of the model code, for `scripts/bench train|decode`.
//! Prints one JSON object per measurement on stdout; the script sets PyTorch beside it.
//!
//! - `train`: tokens per second of one full training step (forward, backward, clip,
//!   AdamW) of the GPT, median over timed steps after warm-up.
//! - `decode`: captions per second, 32 new tokens after a visual prefix, with the KV
//!   cache and with full recomputation.

use std::time::Instant;

use clap::{Parser, Subcommand};
use outloud_worker::generate::{Sampling, generate, generate_without_cache};
use outloud_worker::model::{Gpt, GptConfig};
use outloud_worker::optim::AdamW;
use serde_json::json;
use tch::{Device, Kind, Tensor, nn};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
    /// Model width, layers, heads, context, vocabulary.
    #[arg(long, default_value_t = 64)]
    d_model: u32,
    #[arg(long, default_value_t = 2)]
    n_layers: u32,
    #[arg(long, default_value_t = 4)]
    n_heads: u32,
    #[arg(long, default_value_t = 64)]
    context: u32,
    #[arg(long, default_value_t = 1024)]
    vocab_size: u32,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Timed repetitions (after warm-up).
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// bf16 weights and activations (CUDA).
    #[arg(long)]
    bf16: bool,
}

#[derive(Subcommand)]
enum What {
    Train,
    Decode {
        /// Visual tokens before the prompt.
        #[arg(long, default_value_t = 16)]
        prefix: i64,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
    },
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = if args.device == "cuda" {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let config = GptConfig {
        vocab_size: args.vocab_size,
        context: args.context,
        d_model: args.d_model,
        n_layers: args.n_layers,
        n_heads: args.n_heads,
    };
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), config);
    if args.bf16 {
        vs.bfloat16();
    }
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let threads = tch::get_num_threads();
    match args.what {
        What::Train => {
            let mut optimizer = AdamW::new(&vs, 0.1);
            let t = args.context as i64;
            let mut times = Vec::new();
            for i in 0..args.repeats + 3 {
                let ids = Tensor::randint(
                    args.vocab_size as i64,
                    [args.batch, t + 1],
                    (Kind::Int64, device),
                );
                sync(device);
                let started = Instant::now();
                optimizer.zero_grad();
                let loss = model.loss(&ids.narrow(1, 0, t), &ids.narrow(1, 1, t));
                loss.backward();
                optimizer.clip_grad_norm(1.0);
                optimizer.step(1e-3);
                sync(device);
                if i >= 3 {
                    times.push(started.elapsed().as_secs_f64());
                }
            }
            let step = median(times);
            let tokens = (args.batch * t) as f64;
            // 6 N per token for the matmuls, plus attention's 12 L T d.
            let flops = tokens
                * (6.0 * params as f64
                    + 12.0 * (args.n_layers * args.context * args.d_model) as f64);
            println!(
                "{}",
                json!({"impl": "outloud (tch)", "what": "train", "params": params, "threads": threads, "step_ms": step * 1e3, "tokens_per_s": tokens / step, "tflops": flops / step / 1e12})
            );
        }
        What::Decode { prefix, new_tokens } => {
            let visual = Tensor::randn(
                [args.batch, prefix, args.d_model as i64],
                (Kind::Float, device),
            ) * 0.02;
            let visual = if args.bf16 {
                visual.to_kind(Kind::BFloat16)
            } else {
                visual
            };
            let prompts = vec![vec![1i64]; args.batch as usize];
            let sampling = Sampling::greedy(new_tokens);
            // A stop token that never comes: every caption is exactly `new_tokens` long.
            let never = -1;
            for (name, cached) in [("kv_cache", true), ("recompute", false)] {
                let mut times = Vec::new();
                for i in 0..args.repeats.min(10) + 1 {
                    sync(device);
                    let started = Instant::now();
                    let out = if cached {
                        generate(&model, Some(&visual), &prompts, &sampling, never)?
                    } else {
                        generate_without_cache(&model, Some(&visual), &prompts, &sampling, never)?
                    };
                    sync(device);
                    assert!(out.iter().all(|c| c.len() == new_tokens));
                    if i >= 1 {
                        times.push(started.elapsed().as_secs_f64());
                    }
                }
                let seconds = median(times);
                println!(
                    "{}",
                    json!({"impl": "outloud (tch)", "what": "decode", "mode": name, "params": params, "threads": threads, "batch": args.batch, "new_tokens": new_tokens, "captions_per_s": args.batch as f64 / seconds})
                );
            }
        }
    }
    Ok(())
}
