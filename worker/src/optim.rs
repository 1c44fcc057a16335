//! AdamW over flat buffers, with its state in the open, so a checkpoint carries the
//! moments and a resumed run continues exactly; plus the learning-rate schedule and
//! gradient clipping.
//!
//! The trainable parameters live in two flat buffers, one for the parameters that
//! decay and one for those that do not: each parameter's data is a view into its
//! group's buffer (`set_data`), so the model reads and the optimizer writes the same
//! memory. The moments are flat f32 buffers beside them, and each step gathers the
//! gradients into one flat f32 buffer per group, so clipping and the update are a
//! handful of whole-buffer operations per group, not about ten kernel launches per
//! parameter. When the parameters are not f32 (bf16 on CUDA) the group keeps an f32
//! master copy that the update applies to, then casts back: small updates are not lost
//! to bf16 rounding. Checkpoints name every parameter's moments as before.

use tch::{Kind, Tensor, nn};

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
    /// This step's gradients, gathered; the first and second moments.
    grad: Tensor,
    m: Tensor,
    v: Tensor,
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
        let (len, device) = (flat.numel() as i64, flat.device());
        let zeros = || Tensor::zeros([len], (Kind::Float, device));
        Self {
            decays,
            parameters,
            flat,
            master: None,
            // Gathered each step before it is read.
            grad: Tensor::zeros([0], (Kind::Float, device)),
            m: zeros(),
            v: zeros(),
        }
    }

    /// Gathers every parameter's gradient into `grad`, one f32 buffer (zeros where a
    /// parameter has none).
    fn gather(&mut self) {
        self.grad = tch::no_grad(|| {
            let pieces: Vec<Tensor> = self
                .parameters
                .iter()
                .map(|(_, p)| {
                    let g = p.grad();
                    if g.defined() {
                        g.flatten(0, -1)
                    } else {
                        p.detach().zeros_like().flatten(0, -1)
                    }
                })
                .collect();
            // A cast only where the gradients are not f32 already (bf16 on CUDA).
            Tensor::cat(&pieces, 0).to_kind(Kind::Float)
        });
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
        }
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
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        let (beta1, beta2, eps, weight_decay) =
            (self.beta1, self.beta2, self.eps, self.weight_decay);
        tch::no_grad(|| {
            for group in &mut self.groups {
                let mut p = group.master();
                let g = &group.grad;
                if group.decays && weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                // As PyTorch's AdamW, on whole buffers.
                let _ = group.m.lerp_(g, 1.0 - beta1);
                let _ = group.v.g_mul_scalar_(beta2);
                let _ = group.v.addcmul_(&(g * (1.0 - beta2)), g);
                let mut denom = group.v.sqrt();
                let _ = denom.g_div_scalar_(bias2.sqrt());
                let _ = denom.g_add_scalar_(eps);
                let _ = p.addcdiv_(&(&group.m * (-lr / bias1)), &denom);
                if group.master.is_some() {
                    group.flat.copy_(&p);
                }
            }
        });
        self.gathered = false;
    }

    pub fn zero_grad(&mut self) {
        for group in &mut self.groups {
            for (_, p) in &mut group.parameters {
                p.zero_grad();
            }
        }
        self.gathered = false;
    }

    /// Scales this step's gradients so their global norm is at most `max_norm`;
    /// returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        self.gather();
        // Summed on the device, read once: one wait for the device a step.
        let total = tch::no_grad(|| {
            let squares: Vec<Tensor> = self
                .groups
                .iter()
                .map(|g| g.grad.square().sum(Kind::Double))
                .collect();
            match squares.is_empty() {
                true => 0.0,
                false => Tensor::stack(&squares, 0)
                    .sum(Kind::Double)
                    .double_value(&[])
                    .sqrt(),
            }
        });
        if total > max_norm {
            tch::no_grad(|| {
                for group in &mut self.groups {
                    let _ = group.grad.g_mul_scalar_(max_norm / (total + 1e-6));
                }
            });
        }
        total
    }

    /// The moments as named tensors, for the checkpoint (`<parameter>.exp_avg` and
    /// `<parameter>.exp_avg_sq`, as PyTorch names them).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for group in &self.groups {
            out.extend(group.named_views(&group.m, "exp_avg"));
            out.extend(group.named_views(&group.v, "exp_avg_sq"));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`].
    pub fn load_state(&mut self, saved: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let saved: std::collections::HashMap<&str, &Tensor> =
            saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for (key, mut target) in self.state() {
                let source = saved
                    .get(key.as_str())
                    .ok_or_else(|| format!("optimizer state lacks {key}"))?;
                if source.size() != target.size() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}",
                        source.size()
                    ));
                }
                target.copy_(source);
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
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
