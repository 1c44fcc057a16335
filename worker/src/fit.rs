//! The training loop every phase shares, nanoGPT-style: resume or start ->
//! (lr -> loss -> backward -> clip -> step -> report -> checkpoint) per step -> final
//! checkpoint. A phase supplies only its model and a function from step to loss.
//!
//! Batches are drawn from a seeded generator per step, so a run resumed from step N
//! sees exactly the batches the lost run would have seen. Training also stops once the
//! phase has consumed its planned `words`.

use std::collections::BTreeMap;

use outloud_coordinator::scheduler::Metrics;
use outloud_coordinator::spec::{PhaseSpec, VisionSpec};
use outloud_coordinator::storage::Location;
use tch::{Tensor, nn};

use crate::checkpoint::{self, Loaded, Manifest, ToSave};
use crate::error::WorkerError;
use crate::model::GptConfig;
use crate::optim::{AdamW, learning_rate};
use crate::task::{TaskContext, TaskOutput};

pub const WEIGHT_DECAY: f64 = 0.1;
const MAX_GRAD_NORM: f64 = 1.0;

/// Where the phase keeps its checkpoints: `<storage>/jobs/<job>/<phase>/`.
pub fn phase_root(ctx: &TaskContext) -> Result<Location, WorkerError> {
    let a = &ctx.assignment;
    Ok(Location::open(&a.spec.storage)?.join(&format!("jobs/{}/{}", a.job_id, a.phase)))
}

/// The phase's spec.
pub fn phase(ctx: &TaskContext) -> &PhaseSpec {
    &ctx.assignment.spec.phases[ctx.assignment.spec_phase as usize]
}

/// Where training resumes: the newest checkpoint of this task that verifies, else
/// nothing. The coordinator names the newest one reported; if it is corrupt or
/// incomplete it is refused (never loaded) and older ones are tried, newest first.
pub async fn resume_point(ctx: &TaskContext) -> Option<Loaded> {
    let newest = ctx.assignment.resume_checkpoint.as_deref()?;
    let mut candidates = vec![newest.to_string()];
    if let Ok(root) = phase_root(ctx) {
        candidates.extend(older_checkpoints(&root.join("checkpoints"), newest).await);
    }
    for url in candidates {
        let Ok(location) = Location::open(&url) else {
            continue;
        };
        match checkpoint::load(&location).await {
            Ok(loaded) => return Some(loaded),
            Err(e) => tracing::warn!(error = %e, "checkpoint refused; trying an older one"),
        }
    }
    tracing::warn!("no checkpoint verifies; starting over");
    None
}

/// Checkpoint folders under `folder` named before `newest` (names sort by step), newest first.
async fn older_checkpoints(folder: &Location, newest: &str) -> Vec<String> {
    let Ok(objects) = folder.list().await else {
        return Vec::new();
    };
    let mut found: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            o.url()
                .strip_suffix(&format!("/{}", checkpoint::MANIFEST_FILE))
        })
        .filter(|dir| *dir < newest)
        .map(str::to_string)
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found
}

/// Overwrites every variable of `vs` whose name `wanted` accepts with the saved tensor of
/// the same name; answers how many were loaded.
pub fn load_weights(
    vs: &nn::VarStore,
    saved: &[(String, Tensor)],
    wanted: impl Fn(&str) -> bool,
) -> Result<usize, WorkerError> {
    let saved: std::collections::HashMap<&str, &Tensor> =
        saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| {
        let mut loaded = 0;
        for (name, mut var) in vs.variables().into_iter().filter(|(n, _)| wanted(n)) {
            let source = saved
                .get(name.as_str())
                .ok_or_else(|| WorkerError::Config(format!("checkpoint lacks weight `{name}`")))?;
            if source.size() != var.size() {
                return Err(WorkerError::Config(format!(
                    "weight `{name}` is {:?} in the checkpoint, {:?} in the model",
                    source.size(),
                    var.size()
                )));
            }
            var.copy_(source);
            loaded += 1;
        }
        Ok(loaded)
    })
}

/// Restores weights, optimizer moments and counters from a checkpoint of this phase.
pub fn resume(
    vs: &nn::VarStore,
    optimizer: &mut AdamW,
    loaded: &Loaded,
) -> Result<Metrics, WorkerError> {
    load_weights(vs, &loaded.weights, |_| true)?;
    if let Some(state) = &loaded.optimizer {
        optimizer
            .load_state(state, loaded.manifest.step as i64)
            .map_err(WorkerError::Config)?;
    }
    tracing::info!(step = loaded.manifest.step, "resumed from checkpoint");
    let m = &loaded.manifest;
    Ok(Metrics {
        step: m.step,
        total_steps: m.total_steps,
        loss: m.loss,
        tokens: m.tokens,
        words: m.words,
    })
}

/// bf16 weights and activations on CUDA (fast Tensor Cores), f32 on CPU. Call before
/// the optimizer is made, so its moments take the same type.
pub fn set_precision(vs: &mut nn::VarStore) {
    if vs.device().is_cuda() {
        vs.bfloat16();
    }
}

/// What one step consumed.
pub struct Consumed {
    pub tokens: u64,
    pub words: u64,
}

/// A phase's training run: its model's checkpoint description and where it writes.
pub struct Fit<'a> {
    pub ctx: &'a TaskContext,
    pub root: Location,
    pub tokenizer_json: Vec<u8>,
    pub model: GptConfig,
    pub vision: Option<VisionSpec>,
}

impl Fit<'_> {
    fn manifest(&self, metrics: &Metrics) -> Manifest {
        Manifest {
            format: checkpoint::FORMAT.into(),
            job: self.ctx.assignment.job_id.clone(),
            phase: self.ctx.assignment.phase.clone(),
            step: metrics.step,
            total_steps: metrics.total_steps,
            model: self.model,
            vision: self.vision,
            loss: metrics.loss,
            tokens: metrics.tokens,
            words: metrics.words,
            files: Default::default(),
        }
    }

    fn save(
        &self,
        location: &Location,
        vs: &nn::VarStore,
        optimizer: &AdamW,
        metrics: &Metrics,
    ) -> Result<(), WorkerError> {
        let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let pieces = ToSave {
            weights,
            optimizer: Some(optimizer.state()),
            tokenizer: &self.tokenizer_json,
        };
        self.ctx
            .runtime
            .block_on(checkpoint::save(location, pieces, self.manifest(metrics)))
    }

    /// Trains from `start` (a fresh or resumed count) until the phase's steps or words
    /// are spent; `step_loss` answers the loss of a step and what it consumed.
    pub fn run(
        &self,
        vs: &nn::VarStore,
        optimizer: &mut AdamW,
        start: Metrics,
        resumed: bool,
        mut step_loss: impl FnMut(u64) -> Result<(Tensor, Consumed), WorkerError>,
    ) -> Result<TaskOutput, WorkerError> {
        let phase = phase(self.ctx);
        let mut metrics = Metrics {
            total_steps: phase.steps,
            ..start
        };
        let mut window = LossWindow::default();
        let mut resumed_from = resumed.then_some(start.step);
        let out_of_words = |m: &Metrics| phase.words.is_some_and(|w| m.words >= w);
        for step in start.step..phase.steps {
            if out_of_words(&metrics) {
                tracing::info!(words = metrics.words, "the phase's words are spent");
                break;
            }
            self.ctx.check_stop()?;
            let lr = learning_rate(step, phase.steps, phase.warmup_steps, phase.learning_rate);
            optimizer.zero_grad();
            let (loss, consumed) = step_loss(step)?;
            loss.backward();
            optimizer.clip_grad_norm(MAX_GRAD_NORM);
            optimizer.step(lr);
            window.add(loss.double_value(&[]));

            metrics.step = step + 1;
            metrics.tokens += consumed.tokens;
            metrics.words += consumed.words;
            let checkpoint_due =
                metrics.step.is_multiple_of(phase.checkpoint_every) && metrics.step < phase.steps;
            if checkpoint_due || step == start.step || window.due() {
                metrics.loss = window.take();
                let checkpoint = if checkpoint_due {
                    let location = self
                        .root
                        .join(&format!("checkpoints/step-{:06}", metrics.step));
                    self.save(&location, vs, optimizer, &metrics)?;
                    Some(location.url().to_string())
                } else {
                    None
                };
                self.ctx.report(metrics, checkpoint, resumed_from.take());
            }
        }
        if window.count > 0 {
            metrics.loss = window.take();
        }
        let location = self.root.join("final");
        self.save(&location, vs, optimizer, &metrics)?;
        Ok(TaskOutput {
            output: location.url().to_string(),
            metrics,
            scores: BTreeMap::new(),
        })
    }
}

/// Mean loss since the last report, and when the next report is due.
#[derive(Default)]
struct LossWindow {
    sum: f64,
    count: u32,
    since: Option<std::time::Instant>,
}

impl LossWindow {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);

    fn add(&mut self, loss: f64) {
        self.sum += loss;
        self.count += 1;
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= Self::EVERY)
    }

    fn take(&mut self) -> f64 {
        let mean = self.sum / self.count.max(1) as f64;
        *self = Self::default();
        mean
    }
}
