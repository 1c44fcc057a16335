//! `outloud-model-bench`: speed of the model code, for `scripts/bench train|decode`.
//! Prints one JSON object per measurement on stdout; the script sets PyTorch beside it.
//!
//! - `train`: tokens per second of one full training step (forward, backward, clip,
//!   AdamW) of the GPT, median over timed steps after warm-up.
//! - `decode`: captions per second, 32 new tokens after a visual prefix, with the KV
//!   cache and with full recomputation.
//! - `eval`: BLiMP pairs scored per second by the eval step's own path (tokenize,
//!   batch, summed log-likelihoods), from a checkpoint it writes for PyTorch to read.
//! - `loader`: tokens per second of the training input path on real text: tokenizing a
//!   source once, and drawing a step's batch from the token stream (what a training
//!   step waits for), median over draws.
//! - `checkpoint`: MB/s of saving and loading the model with its optimizer state to a
//!   storage URL, next to a plain write of the same bytes; and the training stall of a
//!   background checkpoint (the copy to host memory) as a share of one step.
//! - `glue` (`glue.rs`): examples per second fine-tuning and predicting a GLUE task,
//!   writing the token ids it used for PyTorch to run the same steps.

mod glue;

use std::time::Instant;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use outloud_core::storage::Location;
use outloud_worker::checkpoint::{self, Manifest, ToSave};
use outloud_worker::eval::benchmarks::discover;
use outloud_worker::eval::{EvalModel, Pictures, score_benchmark};
use outloud_worker::generate::{Sampling, generate, generate_without_cache};
use outloud_worker::mix::{Mixture, TextStream, text_batch};
use outloud_worker::model::{Gpt, GptConfig};
use outloud_worker::optim::AdamW;
use outloud_worker::tokenizer::Tokenizer;
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
    /// Brackets the last timed training step with the CUDA profiler's start and stop,
    /// for `ncu --profile-from-start off` (`scripts/gpu-check profile`).
    #[arg(long)]
    profile: bool,
}

#[derive(Subcommand)]
enum What {
    Train,
    Loader {
        /// Text to tokenize and draw from (lines are documents).
        #[arg(long)]
        text: PathBuf,
    },
    Eval {
        /// A folder of BLiMP-style JSONL files (sentence_good, sentence_bad).
        #[arg(long)]
        blimp: PathBuf,
        /// Text the tokenizer is trained on (vocabulary `--vocab-size`).
        #[arg(long)]
        text: PathBuf,
        /// Where the (randomly initialised) checkpoint is written.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Pairs per file at most.
        #[arg(long)]
        limit: Option<u64>,
    },
    Checkpoint {
        /// Where checkpoints are written: a folder URL (`file:///...`) or
        /// `s3://bucket/prefix` (store settings from `AWS_*`).
        #[arg(long)]
        to: String,
        /// A folder on the same disk for a plain write of the same bytes.
        #[arg(long)]
        plain: Option<PathBuf>,
    },
    /// Fine-tuning and predicting a GLUE task (`glue.rs`).
    Glue {
        /// The folder of `<task>.train.jsonl` and `<task>.valid.jsonl`.
        #[arg(long)]
        glue: PathBuf,
        #[arg(long, default_value = "rte")]
        task: String,
        /// Where the tokenizer and the token ids go, for PyTorch to read.
        #[arg(long)]
        out: PathBuf,
    },
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

/// Device memory in use, in GiB, as the driver sees it: the caching allocator's high
/// water mark (it keeps what it reserved) plus the context. None on the CPU.
fn device_memory_gib(device: Device) -> Option<f64> {
    let Device::Cuda(_) = device else {
        return None;
    };
    cudarc::driver::result::init().ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some((total - free) as f64 / f64::from(1u32 << 30))
}

/// A manifest for the benchmarks' checkpoints.
fn bench_manifest(model: GptConfig) -> Manifest {
    Manifest {
        format: String::new(),
        job: "bench".into(),
        phase: "bench".into(),
        step: 0,
        total_steps: 0,
        model,
        vision: None,
        loss: 0.0,
        tokens: 0,
        words: 0,
        synthetic_words: 0,
        files: Default::default(),
        provenance: Default::default(),
    }
}

/// `checkpoint`: save and load MB/s to `to`, a plain write of the same bytes to
/// `plain`, and the stall of a background checkpoint against a training step.
fn checkpoint_bench(
    args: &Args,
    model: &Gpt,
    mut optimizer: AdamW,
    vs: &nn::VarStore,
    to: &str,
    plain: Option<PathBuf>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let device = model.device();
    let t = args.context as i64;
    let ids = Tensor::randint(
        args.vocab_size as i64,
        [args.batch, t + 1],
        (Kind::Int64, device),
    );
    // Training steps, timed (after one), so the moments are real and the stall has a
    // step to be measured against.
    let train_step = |optimizer: &mut AdamW| {
        optimizer.zero_grad();
        model
            .loss(&ids.narrow(1, 0, t), &ids.narrow(1, 1, t))
            .backward();
        optimizer.clip_grad_norm(1.0);
        optimizer.step(1e-3);
    };
    // A GPU step is cheap and its time varies more: time more of them there.
    let timed = if device.is_cuda() {
        12
    } else {
        args.repeats.clamp(2, 4)
    };
    let mut steps = Vec::new();
    for i in 0..timed {
        let started = Instant::now();
        train_step(&mut optimizer);
        sync(device);
        if i > 0 {
            steps.push(started.elapsed().as_secs_f64());
        }
    }
    let weights = named_of(vs);
    let state = optimizer.state();
    let bytes: usize = weights
        .iter()
        .chain(&state)
        .map(|(_, w)| w.numel() * w.kind().elt_size_in_bytes())
        .sum();
    let root = Location::open(to)?;
    let tokenizer = b"{}".to_vec();
    let (mut saves, mut loads) = (Vec::new(), Vec::new());
    for i in 0..args.repeats.max(1) {
        let location = root.join(&format!("bench-{i}"));
        let pieces = ToSave {
            weights: &weights,
            optimizer: Some(&state),
            tokenizer: &tokenizer,
            ledger: None,
        };
        let started = Instant::now();
        runtime.block_on(checkpoint::save(
            &location,
            pieces,
            bench_manifest(model.config),
        ))?;
        saves.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        runtime.block_on(checkpoint::load(&location))?;
        loads.push(started.elapsed().as_secs_f64());
    }
    let mut plain_writes = Vec::new();
    if let Some(folder) = plain {
        let payload = vec![7u8; bytes];
        // Kept until all are written, as the checkpoints are: a file deleted at once
        // may never reach the disk at all.
        let paths: Vec<PathBuf> = (0..args.repeats.max(1))
            .map(|i| folder.join(format!("plain-{i}.bin")))
            .collect();
        for path in &paths {
            let started = Instant::now();
            std::fs::write(path, &payload)?;
            plain_writes.push(started.elapsed().as_secs_f64());
        }
        paths.iter().try_for_each(std::fs::remove_file)?;
    }
    // The stall: how long the training stream is held by a background checkpoint (on
    // CUDA, staging in device buffers; elsewhere the copy to host), each after the
    // previous one is written, as in training; the first also allocates. A training
    // step follows each at once, changing the state while it is copied out: the written
    // checkpoint must hold the state as it was at submission.
    let mut writer = checkpoint::Writer::start(runtime.handle().clone(), tokenizer, None);
    let (mut stalls, mut steps_beside) = (Vec::new(), Vec::new());
    let mut exact = true;
    for i in 0..args.repeats.max(2) {
        let location = root.join(&format!("background-{i}"));
        let (weights, state) = (named_of(vs), optimizer.state());
        let before: std::collections::HashMap<String, Tensor> =
            weights.iter().map(|(n, w)| (n.clone(), w.copy())).collect();
        let started = Instant::now();
        writer.submit(
            location.clone(),
            &weights,
            &state,
            &Default::default(),
            bench_manifest(model.config),
        )?;
        stream_wait(&weights[0].1)?;
        stalls.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        train_step(&mut optimizer);
        stream_wait(&weights[0].1)?;
        steps_beside.push(started.elapsed().as_secs_f64());
        writer.wait()?;
        let written = runtime.block_on(checkpoint::load(&location))?;
        for (name, saved) in &written.weights {
            let same = saved.to_device(device).equal(&before[name]);
            exact &= same;
            if !same {
                eprintln!("{name}: the checkpoint differs from the state at submission");
            }
        }
    }
    // The same copy done the plain way, holding the loop: to pinned host memory.
    let mut host_copies = Vec::new();
    if device.is_cuda() {
        let live = named_of(vs).into_iter().chain(optimizer.state());
        let (live, host): (Vec<Tensor>, Vec<Tensor>) = live
            .map(|(_, t)| {
                let host = Tensor::empty(t.size(), (t.kind(), Device::Cpu)).pin_memory(device);
                (t, host)
            })
            .unzip();
        for _ in 0..args.repeats.max(2) {
            let started = Instant::now();
            for (from, to) in live.iter().zip(&host) {
                to.shallow_clone().copy_(from);
            }
            sync(device);
            host_copies.push(started.elapsed().as_secs_f64());
        }
    }
    let first_stall = stalls.remove(0);
    steps_beside.remove(0);
    let mb = bytes as f64 / 1e6;
    let step = median(steps);
    let stall = median(stalls);
    println!(
        "{}",
        json!({"impl": "outloud (tch)", "what": "checkpoint", "params": model_params(vs), "mb": mb,
               "device": format!("{device:?}"),
               "save_mb_s": mb / median(saves), "load_mb_s": mb / median(loads),
               "plain_write_mb_s": (!plain_writes.is_empty()).then(|| mb / median(plain_writes)),
               "step_ms": step * 1e3, "stall_ms": stall * 1e3, "first_stall_ms": first_stall * 1e3,
               "stall_share": stall / step,
               "step_beside_copy_ms": median(steps_beside) * 1e3,
               "host_copy_ms": (!host_copies.is_empty()).then(|| median(host_copies) * 1e3),
               "written_as_submitted": exact})
    );
    anyhow::ensure!(
        exact,
        "a background checkpoint did not hold the state it was given"
    );
    Ok(())
}

/// The model's weights by name, in name order (as checkpoints list them).
fn named_of(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    weights
}

/// Waits for the training stream on CUDA (not the checkpoint's side stream).
fn stream_wait(t: &Tensor) -> anyhow::Result<()> {
    if t.device().is_cuda() {
        checkpoint::current_stream_wait(t).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn model_params(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
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
    let params = model_params(&vs);
    let threads = tch::get_num_threads();
    match args.what {
        What::Train => {
            let mut optimizer = AdamW::new(&vs, 0.1);
            let t = args.context as i64;
            let mut times = Vec::new();
            let steps = args.repeats + 3;
            // One batch, repeated: the loss must fall as the model learns it by heart,
            // which checks the whole step's arithmetic beside PyTorch's.
            let ids = Tensor::randint(
                args.vocab_size as i64,
                [args.batch, t + 1],
                (Kind::Int64, device),
            );
            let mut losses = Vec::new();
            for i in 0..steps {
                sync(device);
                let profiled = args.profile && i + 1 == steps && device.is_cuda();
                if profiled {
                    cudarc::driver::result::init()?;
                    cudarc::driver::profiler_start()?;
                }
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
                if profiled {
                    cudarc::driver::profiler_stop()?;
                }
                if i == 0 || i + 1 == steps {
                    losses.push(loss.double_value(&[]));
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
                json!({"impl": "outloud (tch)", "what": "train", "params": params, "threads": threads, "step_ms": step * 1e3, "tokens_per_s": tokens / step, "tflops": flops / step / 1e12, "device_gib": device_memory_gib(device), "loss_first": losses.first(), "loss_last": losses.last()})
            );
        }
        What::Loader { text } => {
            let text = std::fs::read_to_string(text)?;
            let docs: Vec<String> = text.lines().map(str::to_string).collect();
            let tokenizer = Tokenizer::train(&docs, args.vocab_size)?;
            let context = args.context as i64;
            let started = Instant::now();
            let ids = tokenizer.encode_stream(&docs)?;
            let tokenized = started.elapsed().as_secs_f64();
            let tokens = ids.len() as f64;
            let stream = TextStream::new(ids, "bench", &docs, context, false)?;
            let streams = [stream];
            let mixture = Mixture::new(&[1.0]);
            let mut times = Vec::new();
            for step in 0..args.repeats as u64 + 3 {
                let started = Instant::now();
                let batch = text_batch(
                    &streams,
                    &mixture,
                    7,
                    step,
                    args.batch as usize,
                    context,
                    device,
                );
                sync(device);
                std::hint::black_box(&batch.inputs);
                if step >= 3 {
                    times.push(started.elapsed().as_secs_f64());
                }
            }
            let batch_tokens = (args.batch * context) as f64;
            println!(
                "{}",
                json!({"impl": "outloud (tch)", "what": "loader", "tokenize_tokens_per_s": tokens / tokenized, "batch_tokens_per_s": batch_tokens / median(times)})
            );
        }
        What::Eval {
            blimp,
            text,
            checkpoint,
            limit,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let text: String = std::fs::read_to_string(text)?
                .chars()
                .take(2_000_000)
                .collect();
            let tokenizer = Tokenizer::train(&[text], args.vocab_size)?;
            let folder = |path: &std::path::Path| -> anyhow::Result<Location> {
                std::fs::create_dir_all(path)?;
                let url = url::Url::from_directory_path(path.canonicalize()?)
                    .map_err(|_| anyhow::anyhow!("bad path {}", path.display()))?;
                Ok(Location::open(url.as_str())?)
            };
            let manifest = bench_manifest(config);
            let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            let saved = folder(&checkpoint)?;
            let pieces = ToSave {
                weights: &weights,
                optimizer: None,
                tokenizer: &tokenizer.to_json()?,
                ledger: None,
            };
            runtime.block_on(checkpoint::save(&saved, pieces, manifest))?;
            let loaded = runtime.block_on(checkpoint::load(&saved))?;
            let scorer = EvalModel::from_checkpoint(&loaded, device)?;
            let (found, _) = runtime.block_on(discover(&folder(&blimp)?, None, limit))?;
            let pictures = Pictures::default();
            let mut times = Vec::new();
            let mut pairs = 0;
            for i in 0..args.repeats.min(5) + 1 {
                sync(device);
                let started = Instant::now();
                pairs = 0;
                for benchmark in &found {
                    let result =
                        score_benchmark(&scorer, benchmark, &pictures, args.batch as usize)?;
                    pairs += result.items;
                }
                sync(device);
                if i >= 1 {
                    times.push(started.elapsed().as_secs_f64());
                }
            }
            let seconds = median(times);
            println!(
                "{}",
                json!({"impl": "outloud (tch)", "what": "eval", "params": params, "threads": threads, "batch": args.batch, "pairs": pairs, "pairs_per_s": pairs as f64 / seconds})
            );
        }
        What::Checkpoint { ref to, ref plain } => {
            let optimizer = AdamW::new(&vs, 0.1);
            checkpoint_bench(&args, &model, optimizer, &vs, to, plain.clone())?;
        }
        What::Glue {
            ref glue,
            ref task,
            ref out,
        } => {
            let task = outloud_worker::glue::tasks::GlueTask::from_name(task)
                .ok_or_else(|| anyhow::anyhow!("no GLUE task `{task}`"))?;
            let result = glue::run(glue::Glue {
                config,
                device,
                folder: glue,
                task,
                batch: args.batch as usize,
                steps: args.repeats,
                out,
            })?;
            println!("{result}");
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
