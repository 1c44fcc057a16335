//! AdamW over flat buffers, with its state in the open, so a checkpoint carries the
//! moments and a resumed run continues exactly; plus the learning-rate schedule and
//! gradient clipping.
//!
//! The trainable parameters live in two flat buffers, one for the parameters that
//! decay and one for those that do not: each parameter's data is a view into its
//! group's buffer (`set_data`), so the model reads and the optimizer writes the same
//! memory. Each parameter's gradient is likewise a view into a flat gradient buffer
//! that the backward pass accumulates into (as PyTorch DDP's `gradient_as_bucket_view`),
//! so zeroing is one fill and the gradients need no gathering. The moments are flat
//! f32 buffers beside them, and the update is one fused kernel per group (PyTorch's
//! `AdamW(fused=True)`, see [`fused`]) that also applies the clipping, not about ten
//! kernel launches per parameter. When the parameters are not f32 (bf16 on CUDA) the
//! group keeps an f32 master copy that the update applies to, then casts back: small
//! updates are not lost to bf16 rounding. Checkpoints name every parameter's moments
//! as before.

use tch::{Kind, Tensor, nn};

mod fused;

/// Whether weight decay applies to a parameter: matrices decay; biases, norms and other
/// vectors do not, as in GPT-2 training.
pub fn decays(parameter: &Tensor) -> bool {
    parameter.dim() >= 2
}

/// The parameters that decay alike, in one flat buffer.
struct Group {
    decays: bool,
    /// (name, parameter): each parameter a view into `flat`, in name order.
    parameters: Vec<(String, Tensor)>,
    /// The parameters' storage, in their own kind.
    flat: Tensor,
    /// An f32 copy of `flat` when `flat` is not f32 ([`Group::master`]).
    master: Option<Tensor>,
    /// The gradients' storage, in the parameters' kind: every parameter's gradient
    /// is a view into it.
    flat_grad: Tensor,
    /// This step's gradients in f32: `flat_grad` itself, or its f32 copy.
    grad: Tensor,
    /// The first and second moments.
    m: Tensor,
    v: Tensor,
    /// The number of the update being made, where the fused kernel reads it.
    step: Tensor,
}

impl Group {
    fn new(decays: bool, parameters: Vec<(String, Tensor)>) -> Self {
        let flat = tch::no_grad(|| {
            let pieces: Vec<Tensor> = parameters
                .iter()
                .map(|(_, p)| p.detach().flatten(0, -1))
                .collect();
            Tensor::cat(&pieces, 0)
        });
        for ((_, p), view) in parameters.iter().zip(views(&parameters, &flat)) {
            p.shallow_clone().set_data(&view);
        }
        let flat_grad = flat.zeros_like();
        attach_gradients(&parameters, &flat_grad);
        let (len, device) = (flat.numel() as i64, flat.device());
        let zeros = || Tensor::zeros([len], (Kind::Float, device));
        Self {
            decays,
            parameters,
            flat,
            master: None,
            grad: flat_grad.shallow_clone(),
            flat_grad,
            m: zeros(),
            v: zeros(),
            step: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// This step's gradients as one f32 buffer: the gradients' own storage, or (bf16)
    /// its f32 copy.
    fn gather(&mut self) {
        self.grad = match self.flat_grad.kind() {
            Kind::Float => self.flat_grad.shallow_clone(),
            _ => tch::no_grad(|| self.flat_grad.to_kind(Kind::Float)),
        };
    }

    /// The f32 buffer the update applies to: the parameters' own, or their master copy
    /// (made at the first step, after weights are loaded or broadcast).
    fn master(&mut self) -> Tensor {
        match &self.master {
            Some(master) => master.shallow_clone(),
            None if self.flat.kind() == Kind::Float => self.flat.shallow_clone(),
            None => self
                .master
                .insert(self.flat.to_kind(Kind::Float))
                .shallow_clone(),
        }
    }

    /// Views of `flat` (moments) shaped as each parameter, by name.
    fn named_views(&self, flat: &Tensor, suffix: &str) -> Vec<(String, Tensor)> {
        let names = self.parameters.iter().map(|(name, _)| name);
        names
            .zip(views(&self.parameters, flat))
            .map(|(name, view)| (format!("{name}.{suffix}"), view))
            .collect()
    }
}

/// Makes every parameter's gradient a view into `flat_grad`, so that the backward pass
/// accumulates into it (autograd adds into a gradient that exists, in place).
fn attach_gradients(parameters: &[(String, Tensor)], flat_grad: &Tensor) {
    // A backward pass of zero creates every gradient; then each takes its view's storage.
    let zero = parameters
        .iter()
        .map(|(_, p)| p.sum(Kind::Float) * 0.0)
        .reduce(|a, b| a + b);
    if let Some(zero) = zero {
        zero.backward();
    }
    for ((_, p), view) in parameters.iter().zip(views(parameters, flat_grad)) {
        p.grad().set_data(&view);
    }
}

/// Consecutive pieces of `flat`, each shaped as one of `parameters`, in order.
fn views<'a>(
    parameters: &'a [(String, Tensor)],
    flat: &'a Tensor,
) -> impl Iterator<Item = Tensor> + 'a {
    let mut at = 0;
    parameters.iter().map(move |(_, p)| {
        let n = p.numel() as i64;
        let view = flat.narrow(0, at, n).view(p.size().as_slice());
        at += n;
        view
    })
}

pub struct AdamW {
    groups: Vec<Group>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Updates applied so far (for bias correction).
    pub steps: i64,
    /// Whether this step's gradients are gathered into the groups yet.
    gathered: bool,
    /// What the next step divides the gradients by, when clipping scales them down.
    grad_scale: Option<Tensor>,
}

impl AdamW {
    /// The optimizer of `vs`'s trainable parameters (freeze first what must not train);
    /// their data moves into the optimizer's flat buffers.
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, p)| p.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let (decayed, others): (Vec<_>, Vec<_>) =
            variables.into_iter().partition(|(_, p)| decays(p));
        let groups = [(true, decayed), (false, others)]
            .into_iter()
            .filter(|(_, parameters)| !parameters.is_empty())
            .map(|(decays, parameters)| Group::new(decays, parameters))
            .collect();
        Self {
            groups,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            steps: 0,
            gathered: false,
            grad_scale: None,
        }
    }

    /// The same optimizer with other betas (fine-tuning uses PyTorch's 0.9, 0.999).
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        (self.beta1, self.beta2) = (beta1, beta2);
        self
    }

    fn gather(&mut self) {
        if !self.gathered {
            self.groups.iter_mut().for_each(Group::gather);
            self.gathered = true;
        }
    }

    /// This step's gradients, gathered: one flat f32 buffer per group, which a gang
    /// reduces in place before [`AdamW::step`] reads them.
    pub fn flat_grads(&mut self) -> Vec<Tensor> {
        self.gather();
        self.groups.iter().map(|g| g.grad.shallow_clone()).collect()
    }

    /// The parameters' own storage, one flat buffer per group: writing them writes
    /// the model's parameters.
    pub fn flat_parameters(&self) -> Vec<Tensor> {
        self.groups.iter().map(|g| g.flat.shallow_clone()).collect()
    }

    /// One update with learning rate `lr`, from the gradients the backward pass left
    /// (clipped if [`AdamW::clip_grad_norm`] ran); parameters that [`decays`] also decay.
    pub fn step(&mut self, lr: f64) {
        self.gather();
        self.steps += 1;
        let grad_scale = self.grad_scale.take();
        for group in &mut self.groups {
            let p = group.master();
            let hyper = fused::Hyper {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                weight_decay: if group.decays { self.weight_decay } else { 0.0 },
                eps: self.eps,
            };
            tch::no_grad(|| {
                let _ = group.step.fill_(self.steps as f64);
                let buffers = fused::Buffers {
                    param: &p,
                    grad: &group.grad,
                    exp_avg: &group.m,
                    exp_avg_sq: &group.v,
                    step: &group.step,
                    grad_scale: grad_scale.as_ref(),
                };
                // The buffers are made here, f32, flat and on one device: a failure
                // is a bug (or a libtorch without the kernel), not bad input.
                fused::adamw(buffers, hyper).unwrap_or_else(|e| panic!("{e}"));
                if group.master.is_some() {
                    group.flat.copy_(&p);
                }
            });
        }
        self.gathered = false;
    }

    pub fn zero_grad(&mut self) {
        for group in &mut self.groups {
            let _ = group.flat_grad.zero_();
        }
        self.gathered = false;
    }

    /// Scales this step's gradients so their global norm is at most `max_norm` (the
    /// update divides them, inside its kernel); returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        self.gather();
        // Summed on the device, read once: one wait for the device a step.
        let total = tch::no_grad(|| {
            let norms: Vec<Tensor> = self.groups.iter().map(|g| g.grad.norm()).collect();
            match norms.is_empty() {
                true => 0.0,
                false => Tensor::stack(&norms, 0).norm().double_value(&[]),
            }
        });
        self.grad_scale = (total > max_norm).then(|| {
            let device = self.groups[0].grad.device();
            Tensor::from_slice(&[((total + 1e-6) / max_norm) as f32]).to_device(device)
        });
        total
    }

    /// The moments as named tensors, for the checkpoint (`<parameter>.exp_avg` and
    /// `<parameter>.exp_avg_sq`, as PyTorch names them), and the f32 master weights
    /// where the parameters are bf16 (`<parameter>.master`): a resumed run continues
    /// from the exact state, not from weights rounded to bf16.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for group in &self.groups {
            out.extend(group.named_views(&group.m, "exp_avg"));
            out.extend(group.named_views(&group.v, "exp_avg_sq"));
            if let Some(master) = &group.master {
                out.extend(group.named_views(master, "master"));
            }
        }
        out
    }

    /// Restores moments (and master weights, where saved) written by [`AdamW::state`].
    /// Call it after the weights are loaded: saved masters replace what the weights say.
    pub fn load_state(&mut self, saved: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let saved: std::collections::HashMap<&str, &Tensor> =
            saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let copy = |key: &str, target: &mut Tensor| -> Result<bool, String> {
            let Some(source) = saved.get(key) else {
                return Ok(false);
            };
            if source.size() != target.size() {
                return Err(format!(
                    "optimizer state {key} has shape {:?}",
                    source.size()
                ));
            }
            target.copy_(source);
            Ok(true)
        };
        tch::no_grad(|| {
            for group in &mut self.groups {
                for (flat, suffix) in [(&group.m, "exp_avg"), (&group.v, "exp_avg_sq")] {
                    for (key, mut target) in group.named_views(flat, suffix) {
                        if !copy(&key, &mut target)? {
                            return Err(format!("optimizer state lacks {key}"));
                        }
                    }
                }
                group.load_master(&copy)?;
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

/// How [`AdamW::load_state`] copies one saved tensor: whether it was there.
type CopySaved<'a> = dyn Fn(&str, &mut Tensor) -> Result<bool, String> + 'a;

impl Group {
    /// Restores the f32 master weights if the checkpoint has them (all or none): into
    /// the parameters themselves when they are f32, else into a master copy.
    fn load_master(&mut self, copy: &CopySaved) -> Result<(), String> {
        let target = match self.flat.kind() {
            Kind::Float => self.flat.shallow_clone(),
            _ => self.flat.to_kind(Kind::Float),
        };
        let mut found = 0;
        for (key, mut view) in self.named_views(&target, "master") {
            found += usize::from(copy(&key, &mut view)?);
        }
        match found {
            0 => Ok(()),
            n if n < self.parameters.len() => Err(format!(
                "optimizer state has {n} of {} master weights",
                self.parameters.len()
            )),
            _ if self.flat.kind() == Kind::Float => Ok(()),
            _ => {
                self.flat.copy_(&target);
                self.master = Some(target);
                Ok(())
            }
        }
    }
}

/// Linear warm-up, then cosine decay to a tenth of the peak.
pub fn learning_rate(step: u64, total: u64, warmup: u64, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let floor = peak * 0.1;
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

#[cfg(test)]
mod tests;
