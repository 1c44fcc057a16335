//! Data parallelism over a gang's [`Collective`]: every rank holds the whole model,
//! reads its own slice of each global batch, and after the backward pass the ranks
//! sum their gradients, each weighted by what its slice counted in the loss (its
//! predicted tokens), and divide by the gang's total, so every rank takes the step the
//! whole batch would have given one process.
//!
//! Parameters start equal (rank 0's, broadcast). Gradients travel in flat buckets of a
//! few MiB: each bucket gathers its parameters' gradients into one buffer on the
//! backend's device, is all-reduced in one collective, and is copied back, so a step
//! makes a few large transfers rather than one per parameter. Ranks compare parameter
//! checksums every few steps ([`check_ranks_agree`]): ranks drifting apart is an error,
//! never a silent divergence.

use std::ops::Range;

use tch::{Device, Kind, Tensor, nn};

use crate::collective::{Collective, CollectiveError};
use crate::optim::decays;

/// The rows of a global batch of `rows` that `rank` of `world` reads: contiguous,
/// disjoint, covering the batch, sizes differing by at most one (the earlier ranks
/// larger).
pub fn rank_rows(rows: usize, rank: usize, world: usize) -> Range<usize> {
    let bounds = crate::collective::chunk_bounds(rows, world.max(1));
    bounds[rank]..bounds[rank + 1]
}

/// Parameters grouped into buckets of about `bucket_bytes` each, in a fixed order that
/// every rank shares: the decayed parameters (sorted by name), then the others, a bucket
/// never holding both, so a bucket's flat buffer can later be one optimizer group's.
pub struct GradBuckets {
    buckets: Vec<Vec<Tensor>>,
}

/// The default bucket size: large enough for full-speed transfers, small enough to
/// keep the copy buffers small.
pub const BUCKET_BYTES: usize = 4 << 20;

impl GradBuckets {
    pub fn new(vs: &nn::VarStore, bucket_bytes: usize) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by_key(|(name, p)| (!decays(p), name.clone()));
        let mut buckets: Vec<Vec<Tensor>> = vec![Vec::new()];
        let mut filled = 0;
        let mut group = variables.first().is_some_and(|(_, p)| decays(p));
        for (_, parameter) in variables {
            let bytes = parameter.numel() * parameter.kind().elt_size_in_bytes();
            let full = filled > 0 && filled + bytes > bucket_bytes;
            if full || decays(&parameter) != group {
                buckets.push(Vec::new());
                (filled, group) = (0, decays(&parameter));
            }
            filled += bytes;
            buckets
                .last_mut()
                .expect("one bucket at least")
                .push(parameter);
        }
        Self { buckets }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether each bucket's parameters decay (every parameter of a bucket agrees).
    pub fn decay_groups(&self) -> Vec<bool> {
        self.buckets
            .iter()
            .map(|b| b.first().is_some_and(decays))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Sums every rank's gradients over the gang and multiplies the sums by `scale`,
    /// bucket by bucket; answers the bytes reduced. With each rank's gradient the
    /// weighted sum of its micro-batches' and `scale` one over the gang's total weight,
    /// every rank ends with the gradient of the whole global batch. Every trainable
    /// parameter must have a gradient: one missing on some rank would leave the ranks'
    /// parameters apart.
    pub fn sum_scaled(
        &self,
        collective: &mut dyn Collective,
        scale: f64,
    ) -> Result<u64, CollectiveError> {
        let rank = collective.rank();
        let mut bytes = 0;
        tch::no_grad(|| {
            for bucket in &self.buckets {
                let mut grads = Vec::with_capacity(bucket.len());
                for p in bucket {
                    let g = p.grad();
                    if !g.defined() {
                        return Err(CollectiveError::Protocol {
                            rank,
                            message: format!(
                                "a parameter of shape {:?} has no gradient to reduce",
                                p.size()
                            ),
                        });
                    }
                    grads.push(g);
                }
                let mut flat = flat_floats(&grads, collective.device());
                collective.all_reduce_sum(&mut flat)?;
                bytes += flat.numel() as u64 * 4;
                let _ = flat.g_mul_scalar_(scale);
                unflatten_into(&flat, &mut grads);
            }
            Ok(bytes)
        })
    }

    /// Makes every rank's parameters rank 0's, a bucket at a time.
    pub fn broadcast_parameters(
        &self,
        collective: &mut dyn Collective,
    ) -> Result<(), CollectiveError> {
        tch::no_grad(|| {
            for bucket in &self.buckets {
                let mut parameters: Vec<Tensor> =
                    bucket.iter().map(Tensor::shallow_clone).collect();
                let mut flat = flat_floats(&parameters, collective.device());
                collective.broadcast(&mut flat, 0)?;
                unflatten_into(&flat, &mut parameters);
            }
            Ok(())
        })
    }
}

/// `tensors` as one flat f32 buffer on `device`.
fn flat_floats(tensors: &[Tensor], device: Device) -> Tensor {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.to_kind(Kind::Float).flatten(0, -1).to_device(device))
        .collect();
    if flat.is_empty() {
        return Tensor::zeros([0], (Kind::Float, device));
    }
    Tensor::cat(&flat, 0)
}

/// Copies consecutive pieces of `flat` back into `tensors`, each in its own kind,
/// shape and device.
fn unflatten_into(flat: &Tensor, tensors: &mut [Tensor]) {
    let mut at = 0;
    for t in tensors {
        let n = t.numel() as i64;
        let piece = flat
            .narrow(0, at, n)
            .view(t.size().as_slice())
            .to_kind(t.kind())
            .to_device(t.device());
        t.copy_(&piece);
        at += n;
    }
}

/// Sums a few numbers over the gang (a step's loss and weight totals): f64 on the way
/// in and out, f32 on the wire.
pub fn sum_values(
    collective: &mut dyn Collective,
    values: &[f64],
) -> Result<Vec<f64>, CollectiveError> {
    let floats: Vec<f32> = values.iter().map(|v| *v as f32).collect();
    let mut buffer = Tensor::from_slice(&floats).to_device(collective.device());
    collective.all_reduce_sum(&mut buffer)?;
    let summed = Vec::<f32>::try_from(buffer.to_device(Device::Cpu)).expect("floats");
    Ok(summed.into_iter().map(f64::from).collect())
}

/// Compares every rank's parameters with rank 0's by [`parameter_checksum`]: an error
/// on every rank, naming the ranks that differ, when any does.
pub fn check_ranks_agree(
    vs: &nn::VarStore,
    collective: &mut dyn Collective,
) -> Result<(), CollectiveError> {
    let mine = parameter_checksum(vs);
    // 16 bits a float: exact in f32.
    let pieces: Vec<f32> = (0..4)
        .map(|i| ((mine >> (16 * i)) & 0xffff) as f32)
        .collect();
    let mut buffer = Tensor::from_slice(&pieces).to_device(collective.device());
    collective.broadcast(&mut buffer, 0)?;
    let root = Vec::<f32>::try_from(buffer.to_device(Device::Cpu)).expect("floats");
    let world = collective.world_size();
    let mut flags = vec![0.0; world];
    flags[collective.rank()] = f64::from(u8::from(root != pieces));
    let flags = sum_values(collective, &flags)?;
    let apart: Vec<usize> = (0..world).filter(|r| flags[*r] > 0.0).collect();
    if apart.is_empty() {
        return Ok(());
    }
    Err(CollectiveError::Protocol {
        rank: collective.rank(),
        message: format!("the parameters of ranks {apart:?} differ from rank 0's"),
    })
}

/// A checksum of every parameter's bits, to compare ranks: equal parameters give equal
/// sums on every rank.
pub fn parameter_checksum(vs: &nn::VarStore) -> u64 {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for (name, p) in variables {
        let values: Vec<f32> =
            Vec::try_from(p.to_kind(Kind::Float).flatten(0, -1)).expect("floats");
        for bits in name
            .bytes()
            .map(u32::from)
            .chain(values.iter().map(|v| v.to_bits()))
        {
            sum = (sum ^ u64::from(bits)).wrapping_mul(0x100_0000_01b3);
        }
    }
    sum
}

#[cfg(test)]
mod tests;
