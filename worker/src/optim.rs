//! AdamW with its state in the open, so a checkpoint carries the moments and a resumed
//! run continues exactly; plus the learning-rate schedule and gradient clipping.

use tch::{Tensor, nn};

/// Whether weight decay applies to a parameter: matrices decay; biases, norms and other
/// vectors do not, as in GPT-2 training.
pub fn decays(parameter: &Tensor) -> bool {
    parameter.dim() >= 2
}

pub struct AdamW {
    /// (name, parameter, first moment, second moment), in a fixed (sorted) order.
    slots: Vec<(String, Tensor, Tensor, Tensor)>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Updates applied so far (for bias correction).
    pub steps: i64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = variables
            .into_iter()
            .map(|(name, p)| {
                let (m, v) = (p.zeros_like(), p.zeros_like());
                (name, p, m, v)
            })
            .collect();
        Self {
            slots,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            steps: 0,
        }
    }

    /// One update with learning rate `lr`; parameters that [`decays`] also decay.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.slots {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if decays(p) && self.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                // As PyTorch's single-tensor AdamW: in place, one temporary per line.
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.addcmul_(&(&g * (1.0 - self.beta2)), &g);
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bias2.sqrt());
                let _ = denom.g_add_scalar_(self.eps);
                let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denom);
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.slots {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global norm is at most `max_norm`; returns the norm.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .slots
            .iter()
            .map(|s| s.1.grad())
            .filter(Tensor::defined)
            .collect();
        let total = tch::no_grad(|| {
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            if norms.is_empty() {
                0.0
            } else {
                Tensor::stack(&norms, 0).norm().double_value(&[])
            }
        });
        if total > max_norm {
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(max_norm / (total + 1e-6));
                }
            });
        }
        total
    }

    /// The moments as named tensors, for the checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for (name, _, m, v) in &self.slots {
            out.push((format!("{name}.exp_avg"), m.shallow_clone()));
            out.push((format!("{name}.exp_avg_sq"), v.shallow_clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`].
    pub fn load_state(&mut self, saved: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let saved: std::collections::HashMap<&str, &Tensor> =
            saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for (name, _, m, v) in &mut self.slots {
                for (suffix, target) in [("exp_avg", m), ("exp_avg_sq", v)] {
                    let key = format!("{name}.{suffix}");
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
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn adamw_minimises_a_quadratic() {
        let vs = nn::VarStore::new(Device::Cpu);
        let x = vs.root().var("x", &[4], nn::Init::Const(3.0));
        let mut opt = AdamW::new(&vs, 0.0);
        for _ in 0..300 {
            opt.zero_grad();
            (&x * &x).sum(Kind::Float).backward();
            opt.step(0.05);
        }
        assert!(x.abs().max().double_value(&[]) < 0.05);
    }

    #[test]
    fn the_schedule_warms_up_then_decays() {
        assert!(learning_rate(0, 100, 10, 1.0) < 0.2);
        assert!((learning_rate(10, 100, 10, 1.0) - 1.0).abs() < 1e-9);
        assert!((learning_rate(100, 100, 10, 1.0) - 0.1).abs() < 1e-9);
    }
}
