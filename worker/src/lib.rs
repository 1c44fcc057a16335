//! An Outloud worker: leases phase tasks from the coordinator and trains through
//! libtorch (`tch`), checkpointing into the job's object storage.
//!
//! Layout:
//! - [`agent`]: the control loop (register, lease, heartbeat, report, complete).
//! - [`metrics`]: the worker's own `/metrics` (`--metrics-listen`).
//! - [`task_logs`]: each task's log lines, shipped to the job's storage in chunks
//!   (`outloud logs` reads them).
//! - [`gpu_meter`]: a task's peak GPU memory and GPU energy (NVML), for the cost ledger.
//! - [`per_gpu`]: `--gpus`: one worker process per GPU, restarted when one exits.
//! - [`task`]: the dispatch by what a task's resolved spec says to do.
//! - [`context`]: the context a task runs in (assignment, device, stop flag, progress).
//! - [`prepare`]: the prepare step (generated data written once, user data checked).
//! - [`inputs`]: checkpoints a task reads (resume, hand-over, the one an eval scores).
//! - [`gang`]: a training task's gang: rendezvous through the coordinator, the backend
//!   (NCCL or the TCP ring), micro-batches, gradient reduction, all-reduce counters.
//! - [`parallel`]: data parallelism over a collective (rank slices, gradient buckets,
//!   parameter broadcast, rank checksums).
//! - [`fit`]: the training loop every phase shares (steps, checkpoints, resume).
//! - [`language`]: phase 1, language bootstrapping.
//! - [`multimodal`]: phases 2 and 4, captioning and question answering.
//! - [`dreams`]: phase 3, self-synthesis: sharded captioning of unlabeled pictures
//!   (filtered, committed once a shard), then training on the captions and real text.
//! - [`ledger`]: the word ledger (distinct real words a model's lineage has read).
//! - [`mix`]: weighted mixing of a phase's sources, reproducible by seed.
//! - [`prompts`]: how captions and questions are taught and asked.
//! - [`visual`]: what the encoder reads for a picture (pixels, or precomputed features).
//! - [`probes`]: held-out caption accuracy after phase 2, with its chance level.
//! - [`eval`]: zero-shot benchmarks (BLiMP, EWoK, Winoground, VQA, ...) after phases.
//! - [`glue`]: GLUE fine-tuning evaluation: the pipeline's inputs, a classification
//!   head, fine-tuning and scoring per task.
//! - [`model`]: the GPT, bottom-up, readable in one sitting.
//! - [`vision`]: the ViT, precomputed-feature input, and the projector.
//! - [`vlm`]: visual tokens before text; losses on taught tokens only.
//! - [`generate`]: batched decoding with a KV cache (greedy, temperature, top-p).
//! - `ffi`: how Rust calls the C++ shims in `csrc/` (errors come back as text).
//! - [`optim`]: AdamW over flat buffers with checkpointable state (its update is
//!   PyTorch's fused kernel, through the C++ shim in `csrc/`), the learning-rate schedule.
//! - [`collective`]: all-reduce and broadcast between the ranks of a gang (CPU: a TCP
//!   ring with timeouts; GPU: NCCL with a watchdog).
//! - [`export`]: a checkpoint as a Hugging Face GPT-2 folder (`transformers` loads it).
//! - [`checkpoint`]: safetensors + verified manifests in object storage, written in the
//!   background (`Writer`), kept as the phase's retention says (`retention`); exported
//!   folders read back (`gpt2`); copies beside the training stream (`aside`).
//! - [`tokenizer`]: byte-level BPE trained by the `tokenizers` crate.
//! - [`token_shards`]: text tokenized once, its ids kept in the job's storage.
//! - [`data`]: where data sources live (generated ones written first); reading text.
//! - [`loaders`]: image-caption pairs, questions, unlabeled images, features.
//! - [`corpus`]: the embedded, seeded child-directed text generator.
//! - [`world`]: the picture-book world (scenes, pictures, captions, questions).
//! - [`rng`]: a small reproducible random number generator.
//! - [`error`]: the worker's error type.

pub mod agent;
pub mod checkpoint;
pub mod collective;
pub mod context;
pub mod corpus;
pub mod data;
pub mod dreams;
pub mod error;
pub mod eval;
pub mod export;
mod ffi;
pub mod fit;
pub mod gang;
pub mod generate;
pub mod glue;
pub mod gpu_meter;
pub mod inputs;
pub mod language;
pub mod ledger;
pub mod loaders;
pub mod metrics;
pub mod mix;
pub mod model;
pub mod multimodal;
pub mod optim;
pub mod parallel;
pub mod per_gpu;
pub mod prepare;
pub mod probes;
pub mod prompts;
pub mod rng;
pub mod task;
pub mod task_logs;
pub mod token_shards;
pub mod tokenizer;
pub mod vision;
pub mod visual;
pub mod vlm;
pub mod world;
