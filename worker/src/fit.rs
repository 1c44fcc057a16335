//! The training loop every phase shares, nanoGPT-style: resume or start ->
//! (lr -> batch -> loss -> backward -> clip -> step -> report -> checkpoint) per step ->
//! final checkpoint. A phase supplies only its model, a function from step to batch and
//! one from batch to loss.
//!
//! A thread of its own draws the batches a couple of steps ahead (`prefetch`): a
//! phase's draw owns what it draws from, and the loop never waits on the input path.
//! Another writes the checkpoints ([`checkpoint::Writer`]): the loop only copies the
//! state to host memory; a checkpoint is reported once committed, and the task ends
//! only after its final one is.
//!
//! On a gang ([`crate::gang`]) every rank draws the same global batch (so every rank
//! counts the same words into the same ledger), runs its own rows as micro-batches, and
//! the gang sums the gradients before the step; only rank 0 reports and checkpoints.
//!
//! Batches are drawn from a seeded generator per step, so a run resumed from step N
//! sees exactly the batches the lost run would have seen. Training also stops once the
//! phase has consumed its planned `words`, or its lineage has read the job's budget of
//! distinct real words or of its own captions (the [`Ledger`]), whichever comes first.

use std::ops::Range;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::Scope;

use outloud_core::results::TaskResults;
use outloud_core::storage::Location;
use outloud_core::task::Metrics;
use tch::{Tensor, nn};

use crate::checkpoint::{self, Manifest, Provenance};
use crate::context::{TaskContext, TaskOutput};
use crate::error::WorkerError;
use crate::gang::Gang;
use crate::ledger::{Ledger, Seen};
use crate::model::GptConfig;
use crate::optim::{AdamW, learning_rate};
use crate::vlm::VisionPath;
use progress::{LossWindow, ProgressLog, StepRange};

mod progress;

pub const WEIGHT_DECAY: f64 = 0.1;
const MAX_GRAD_NORM: f64 = 1.0;

/// bf16 weights and activations on CUDA (fast Tensor Cores), f32 on CPU. Call before
/// the optimizer is made: its flat buffers take the parameters' type (and it keeps f32
/// masters of bf16 ones).
pub fn set_precision(vs: &mut nn::VarStore) {
    if vs.device().is_cuda() {
        vs.bfloat16();
    }
}

/// Stops training the parameters whose names start with any of `prefixes`. Call it
/// before the optimizer is made: [`AdamW`] trains (and decays) what needs a gradient
/// then.
pub fn freeze(vs: &tch::nn::VarStore, prefixes: &[&str]) {
    for (name, var) in vs.variables() {
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let _ = var.set_requires_grad(false);
        }
    }
}

/// A step's global batch, which the ranks of a gang cut into rows.
pub trait Rows {
    fn rows(&self) -> usize;
    /// Rows `range` of the batch.
    fn take(&self, range: Range<usize>) -> Self;
}

/// Tensors of one batch, each with a row per example: rows are cut in all of them.
impl Rows for (Tensor, Tensor) {
    fn rows(&self) -> usize {
        self.0.size()[0] as usize
    }

    fn take(&self, range: Range<usize>) -> Self {
        let (start, len) = (range.start as i64, range.len() as i64);
        (self.0.narrow(0, start, len), self.1.narrow(0, start, len))
    }
}

impl Rows for (Tensor, Tensor, Tensor) {
    fn rows(&self) -> usize {
        self.0.size()[0] as usize
    }

    fn take(&self, range: Range<usize>) -> Self {
        let (start, len) = (range.start as i64, range.len() as i64);
        (
            self.0.narrow(0, start, len),
            self.1.narrow(0, start, len),
            self.2.narrow(0, start, len),
        )
    }
}

/// A batch's loss: the mean over the tokens it predicts, and how many those are (what
/// the ranks of a gang weight their slices by).
pub struct Loss {
    pub mean: Tensor,
    pub weight: f64,
}

/// What one step consumed.
pub struct Consumed {
    pub tokens: u64,
    pub words: u64,
    /// Of `words`, those in synthesized captions.
    pub synthetic_words: u64,
    /// What it read of real sources, for the word ledger.
    pub seen: Vec<Seen>,
}

/// A phase's training run: its model's checkpoint description and where it writes.
pub struct Fit<'a> {
    pub ctx: &'a TaskContext,
    pub root: Location,
    pub tokenizer_json: Vec<u8>,
    pub model: GptConfig,
    pub vision: Option<VisionPath>,
    /// What the lineage had read when this run started, its sources registered.
    pub ledger: Ledger,
    /// The seed each step's batch is drawn with ([`crate::rng::draw_seed`]).
    pub draw_seed: u64,
    /// What every checkpoint of the run records of its origin; the phase sets
    /// `provenance.data` to the checksums of what it reads.
    pub provenance: Provenance,
}

impl<'a> Fit<'a> {
    /// The run of `ctx`'s phase: it writes under the task's attempt folder, saves
    /// `tokenizer` with every checkpoint, and counts words on top of `ledger`.
    pub fn new(
        ctx: &'a TaskContext,
        tokenizer: &crate::tokenizer::Tokenizer,
        model: GptConfig,
        vision: Option<VisionPath>,
        ledger: Ledger,
    ) -> Result<Self, WorkerError> {
        Ok(Self {
            ctx,
            root: ctx.output_root()?,
            tokenizer_json: tokenizer.to_json()?,
            model,
            vision,
            ledger,
            draw_seed: crate::rng::draw_seed(ctx.train()?.seed, &ctx.assignment.step),
            provenance: Provenance::of(&ctx.assignment),
        })
    }
}

impl Fit<'_> {
    fn manifest(&self, metrics: &Metrics) -> Manifest {
        Manifest {
            format: checkpoint::FORMAT.into(),
            job: self.ctx.assignment.job_id.clone(),
            phase: self.ctx.assignment.step.clone(),
            step: metrics.step,
            total_steps: metrics.total_steps,
            model: self.model,
            vision: self.vision,
            loss: metrics.loss,
            tokens: metrics.tokens,
            words: metrics.words,
            synthetic_words: metrics.synthetic_words,
            files: Default::default(),
            provenance: self.provenance.clone(),
        }
    }

    /// Hands the checkpoint of `metrics.step` to `writer`, or skips it (and says so) while
    /// the previous one is still being written.
    fn checkpoint_in_background(
        &self,
        writer: &mut checkpoint::Writer,
        vs: &nn::VarStore,
        optimizer: &AdamW,
        metrics: &Metrics,
        ledger: &Ledger,
    ) -> Result<(), WorkerError> {
        if let Some(writing) = writer.busy() {
            tracing::warn!(
                step = metrics.step,
                writing,
                "checkpoint skipped: the one of step {writing} is still being written"
            );
            return Ok(());
        }
        let location = self
            .root
            .join(&format!("checkpoints/step-{:06}", metrics.step));
        self.submit(writer, location, vs, optimizer, metrics, ledger)
    }

    /// Hands the checkpoint of `metrics.step` at `location` to `writer`, which is idle.
    fn submit(
        &self,
        writer: &mut checkpoint::Writer,
        location: Location,
        vs: &nn::VarStore,
        optimizer: &AdamW,
        metrics: &Metrics,
        ledger: &Ledger,
    ) -> Result<(), WorkerError> {
        let _span = tracing::info_span!("checkpoint", step = metrics.step).entered();
        let manifest = self.manifest(metrics);
        let (weights, state) = (sorted_weights(vs), optimizer.state());
        writer.submit(location, &weights, &state, ledger, manifest)
    }

    /// Trains from `start` (a fresh or resumed count) until the phase's steps or words
    /// are spent; `draw` answers a step's global batch and what it consumed, `loss` a
    /// batch's (or some of its rows') loss.
    pub fn run<B: Rows + Send>(
        self,
        vs: &nn::VarStore,
        optimizer: &mut AdamW,
        start: Metrics,
        resumed: bool,
        draw: impl FnMut(u64) -> Drawn<B> + Send,
        loss: impl Fn(&B) -> Loss,
    ) -> Result<TaskOutput, WorkerError> {
        let steps = start.step..self.ctx.train()?.steps;
        std::thread::scope(|scope| {
            let batches = prefetch(scope, steps, draw);
            self.train(vs, optimizer, start, resumed, &batches, loss)
        })
    }

    /// The loop of [`Fit::run`], on the batches drawn ahead.
    fn train<B: Rows>(
        mut self,
        vs: &nn::VarStore,
        optimizer: &mut AdamW,
        start: Metrics,
        resumed: bool,
        batches: &Receiver<Drawn<B>>,
        loss: impl Fn(&B) -> Loss,
    ) -> Result<TaskOutput, WorkerError> {
        let phase = self.ctx.train()?;
        let mut metrics = Metrics {
            total_steps: phase.steps,
            ..start
        };
        let mut gang = Gang::join(self.ctx, optimizer)?;
        let rank_zero = gang.as_ref().is_none_or(|g| g.rank() == 0);
        let retention = match phase.keep_checkpoints {
            Some(keep) => Some((self.ctx.task_folder()?, keep as usize)),
            None => None,
        };
        let runtime = self.ctx.runtime.clone();
        let tokenizer = self.tokenizer_json.clone();
        let mut writer = checkpoint::Writer::start(runtime, tokenizer, retention);
        let mut window = LossWindow::default();
        let mut resumed_from = resumed.then_some(start.step);
        let mut progress_log = ProgressLog::default();
        let mut ledger = std::mem::take(&mut self.ledger);
        metrics.unique_words = ledger.unique_words();
        let mut range = StepRange::open(start.step);
        for step in start.step..phase.steps {
            if let Some(spent) = words_spent(phase, &metrics, &ledger) {
                tracing::info!(
                    words = metrics.words,
                    unique_words = metrics.unique_words,
                    "{spent}"
                );
                break;
            }
            self.ctx.check_stop()?;
            let lr = learning_rate(step, phase.steps, phase.warmup_steps, phase.learning_rate);
            optimizer.zero_grad();
            let (batch, consumed) = batches
                .recv()
                .map_err(|_| WorkerError::Data(format!("no batch was drawn for step {step}")))??;
            let value = match &mut gang {
                None => {
                    let mean = loss(&batch).mean;
                    mean.backward();
                    optimizer.clip_grad_norm(MAX_GRAD_NORM);
                    optimizer.step(lr);
                    // Read after the step, where the loop already waited for the device.
                    mean.double_value(&[])
                }
                Some(gang) => {
                    let value = backward_on_gang(gang, optimizer, &batch, &loss)?;
                    optimizer.clip_grad_norm(MAX_GRAD_NORM);
                    optimizer.step(lr);
                    gang.check_agreement(vs, step + 1)?;
                    value
                }
            };
            // The weights just stepped are never saved: the last checkpoint is the good
            // one.
            if !value.is_finite() {
                return Err(WorkerError::Diverged(format!(
                    "the loss became {value} at step {}; the last good checkpoint is the \
                     newest under {}",
                    step + 1,
                    self.root.join("checkpoints").url()
                )));
            }
            window.add(value);

            metrics.step = step + 1;
            metrics.tokens += consumed.tokens;
            metrics.words += consumed.words;
            metrics.synthetic_words += consumed.synthetic_words;
            ledger.mark(&consumed.seen);
            ledger.add_synthetic(consumed.synthetic_words);
            metrics.unique_words = ledger.unique_words();
            if let Some(gang) = &gang {
                (metrics.allreduce_seconds, metrics.allreduce_bytes) = (gang.seconds, gang.bytes);
            }
            let checkpoint_due =
                metrics.step.is_multiple_of(phase.checkpoint_every) && metrics.step < phase.steps;
            if checkpoint_due {
                range = range.close(&metrics);
            }
            if rank_zero && checkpoint_due {
                self.checkpoint_in_background(&mut writer, vs, optimizer, &metrics, &ledger)?;
            }
            let committed = writer.poll()?;
            if let Some(checkpoint) = &committed {
                tracing::info!(step = checkpoint.step, url = %checkpoint.url, "checkpoint committed");
            }
            if rank_zero && (committed.is_some() || step == start.step || window.due()) {
                metrics.loss = window.take();
                progress_log.say(&metrics, phase.steps, lr);
                self.ctx.report(metrics, committed, resumed_from.take());
            }
        }
        range.close_last(&metrics);
        if window.count > 0 {
            metrics.loss = window.take();
        }
        if let Some(committed) = writer.wait()? {
            self.ctx
                .report(metrics, Some(committed), resumed_from.take());
        }
        if !rank_zero {
            // Rank 0 writes the model and commits the task for the gang.
            return Ok(TaskOutput {
                output: String::new(),
                metrics,
                results: TaskResults::default(),
            });
        }
        // The final checkpoint takes the same path, and the task waits for it.
        let location = self.root.join("final");
        self.submit(&mut writer, location, vs, optimizer, &metrics, &ledger)?;
        let written = writer.wait()?.expect("the final checkpoint was submitted");
        Ok(TaskOutput {
            output: written.url,
            metrics,
            results: TaskResults::default(),
        })
    }
}

/// The model's weights by name, in name order.
fn sorted_weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    weights
}

/// A step's batch and what it consumed, or why it could not be drawn.
pub type Drawn<B> = Result<(B, Consumed), WorkerError>;

/// Batches drawn ahead of training, at most this many.
const PREFETCH: usize = 2;

/// Draws the batches of `steps` in order on a thread of their own, at most
/// [`PREFETCH`] ahead of the training loop, which reads them from the answer. The thread
/// stops after a failed draw, or once the loop stops reading (the receiver dropped).
fn prefetch<'scope, B: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    steps: Range<u64>,
    mut draw: impl FnMut(u64) -> Drawn<B> + Send + 'scope,
) -> Receiver<Drawn<B>> {
    let (sender, batches) = sync_channel(PREFETCH);
    let span = tracing::Span::current();
    scope.spawn(move || {
        let _inside = span.enter();
        for step in steps {
            let drawn = draw(step);
            let failed = drawn.is_err();
            if sender.send(drawn).is_err() || failed {
                break;
            }
        }
    });
    batches
}

/// This rank's backward pass over its micro-batches of `batch`, each weighted by the
/// tokens it predicts, then the gang's sum: answers the global batch's mean loss.
fn backward_on_gang<B: Rows>(
    gang: &mut Gang,
    optimizer: &mut AdamW,
    batch: &B,
    loss: &impl Fn(&B) -> Loss,
) -> Result<f64, WorkerError> {
    let _span = tracing::debug_span!("allreduce").entered();
    let (mut loss_sum, mut weight) = (0.0, 0.0);
    for rows in gang.micro_batches(batch.rows()) {
        let part = loss(&batch.take(rows));
        (&part.mean * part.weight).backward();
        loss_sum += part.mean.double_value(&[]) * part.weight;
        weight += part.weight;
    }
    gang.reduce(optimizer, loss_sum, weight)
}

/// Which of the words a phase may read are spent, if any: the phase's own `words`, the
/// lineage's distinct real words (`word_budget`), or its own captions' words.
fn words_spent(
    phase: &outloud_core::task_spec::TrainSpec,
    metrics: &Metrics,
    ledger: &Ledger,
) -> Option<&'static str> {
    if phase.words.is_some_and(|w| metrics.words >= w) {
        return Some("the phase's words are spent");
    }
    if phase
        .word_budget
        .is_some_and(|w| ledger.unique_words() >= w)
    {
        return Some("the lineage has read the job's word_budget of distinct words");
    }
    if phase
        .synthetic_word_budget
        .is_some_and(|w| ledger.synthetic_words() >= w)
    {
        return Some("the lineage has read the job's synthetic_word_budget");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Seen;
    use outloud_core::task_spec::{TrainKind, TrainSpec};

    fn phase(words: Option<u64>, budget: Option<u64>, synthetic: Option<u64>) -> TrainSpec {
        TrainSpec {
            kind: TrainKind::Language,
            model: outloud_core::spec::ModelSpec::default().shape().unwrap(),
            vision: None,
            data: Vec::new(),
            steps: 10,
            words,
            batch_size: 1,
            learning_rate: 1e-3,
            warmup_steps: 0,
            checkpoint_every: 10,
            keep_checkpoints: None,
            seed: 0,
            word_budget: budget,
            synthetic_word_budget: synthetic,
            gang: None,
        }
    }

    fn nothing() -> Consumed {
        Consumed {
            tokens: 0,
            words: 0,
            synthetic_words: 0,
            seen: Vec::new(),
        }
    }

    #[test]
    fn batches_drawn_ahead_come_in_order_and_the_drawing_stops_with_the_loop() {
        let drawn = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            let batches = prefetch(scope, 5..1_000, |step| {
                drawn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok((step, nothing()))
            });
            let first: Vec<u64> = (0..3).map(|_| batches.recv().unwrap().unwrap().0).collect();
            assert_eq!(first, [5, 6, 7]);
            // The loop stops here (words spent, an error): the receiver goes, and the
            // drawing thread ends instead of drawing the other 990 steps.
        });
        let drawn = drawn.into_inner();
        assert!(drawn <= 3 + PREFETCH as u64 + 1, "{drawn} drawn");
        // A failed draw is the last one.
        std::thread::scope(|scope| {
            let batches = prefetch(scope, 0..10, |step| match step {
                2 => Err(WorkerError::Data("a corrupt shard".into())),
                _ => Ok((step, nothing())),
            });
            let got: Vec<Result<u64, String>> = batches
                .iter()
                .map(|d| d.map(|(step, _)| step).map_err(|e| e.to_string()))
                .collect();
            assert_eq!(got, [Ok(0), Ok(1), Err("data: a corrupt shard".into())]);
        });
    }

    #[test]
    fn a_phase_stops_when_any_of_its_words_are_spent() {
        let mut ledger = Ledger::default();
        let text = ledger.register("t#tokens", 1_000);
        // 100 distinct words, read 5 times over: 500 consumed.
        for _ in 0..5 {
            ledger.mark(&[Seen {
                source: text,
                start: 0,
                len: 100,
                words_per_unit: 1.0,
            }]);
        }
        ledger.add_synthetic(30);
        let metrics = Metrics {
            words: 500,
            ..Metrics::default()
        };
        let spent = |p: &TrainSpec| words_spent(p, &metrics, &ledger);
        // Re-reading spends no budget of distinct words: 500 consumed, 100 distinct.
        assert_eq!(spent(&phase(None, Some(101), None)), None);
        assert!(
            spent(&phase(None, Some(100), None))
                .unwrap()
                .contains("word_budget")
        );
        assert!(
            spent(&phase(Some(500), None, None))
                .unwrap()
                .contains("phase's words")
        );
        assert!(
            spent(&phase(None, None, Some(30)))
                .unwrap()
                .contains("synthetic")
        );
        assert_eq!(spent(&phase(Some(501), Some(1_000), Some(31))), None);
    }
}
