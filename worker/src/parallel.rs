//! Data parallelism over a gang's [`Collective`]: every rank holds the whole model,
//! reads its own slice of each global batch, and after the backward pass the ranks
//! average their gradients, weighted by slice size, so every rank takes the step the
//! whole batch would have given one process.
//!
//! Parameters start equal (rank 0's, broadcast). Gradients travel in flat buckets of a
//! few MiB: each bucket gathers its parameters' gradients into one buffer, is all-reduced
//! in one collective, and is copied back, so a step makes a few large transfers rather
//! than one per parameter.

use std::ops::Range;

use tch::{Kind, Tensor, nn};

use crate::collective::{Collective, CollectiveError};

/// The rows of a global batch of `rows` that `rank` of `world` reads: contiguous,
/// disjoint, covering the batch, sizes differing by at most one (the earlier ranks
/// larger).
pub fn rank_rows(rows: usize, rank: usize, world: usize) -> Range<usize> {
    let bounds = crate::collective::chunk_bounds(rows, world.max(1));
    bounds[rank]..bounds[rank + 1]
}

/// Parameters grouped into buckets of about `bucket_bytes` each, in a fixed order that
/// every rank shares (sorted by name).
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
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let mut buckets: Vec<Vec<Tensor>> = vec![Vec::new()];
        let mut filled = 0;
        for (_, parameter) in variables {
            let bytes = parameter.numel() * parameter.kind().elt_size_in_bytes();
            if filled > 0 && filled + bytes > bucket_bytes {
                buckets.push(Vec::new());
                filled = 0;
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

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Replaces every rank's gradients by their mean over the gang, each rank's
    /// weighted by `weight` (its slice's rows). Every trainable parameter must have a
    /// gradient: one missing on some rank would leave the ranks' parameters apart.
    pub fn average(
        &self,
        collective: &mut dyn Collective,
        weight: f32,
    ) -> Result<(), CollectiveError> {
        let rank = collective.rank();
        tch::no_grad(|| {
            for bucket in &self.buckets {
                let mut grads = Vec::with_capacity(bucket.len());
                for p in bucket {
                    let g = p.grad();
                    if !g.defined() {
                        return Err(CollectiveError::Protocol {
                            rank,
                            message: format!(
                                "a parameter of shape {:?} has no gradient to average",
                                p.size()
                            ),
                        });
                    }
                    grads.push(g);
                }
                let flat: Vec<Tensor> = grads
                    .iter()
                    .map(|g| g.to_kind(Kind::Float).flatten(0, -1))
                    .collect();
                let flat = Tensor::cat(&flat, 0).to_device(tch::Device::Cpu);
                let mut values: Vec<f32> =
                    Vec::try_from(&flat).expect("a float tensor converts to f32");
                collective.all_reduce_weighted_mean(&mut values, weight)?;
                let mut at = 0;
                for g in &mut grads {
                    let n = g.numel();
                    let averaged = Tensor::from_slice(&values[at..at + n])
                        .view(g.size().as_slice())
                        .to_kind(g.kind())
                        .to_device(g.device());
                    g.copy_(&averaged);
                    at += n;
                }
            }
            Ok(())
        })
    }
}

/// Makes every rank's parameters rank 0's.
pub fn broadcast_parameters(
    vs: &nn::VarStore,
    collective: &mut dyn Collective,
) -> Result<(), CollectiveError> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut p) in variables {
            let flat = p
                .to_kind(Kind::Float)
                .flatten(0, -1)
                .to_device(tch::Device::Cpu);
            let mut values: Vec<f32> = Vec::try_from(&flat).expect("a float tensor converts");
            collective.broadcast(&mut values, 0)?;
            let from_root = Tensor::from_slice(&values)
                .view(p.size().as_slice())
                .to_kind(p.kind())
                .to_device(p.device());
            p.copy_(&from_root);
        }
        Ok(())
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
