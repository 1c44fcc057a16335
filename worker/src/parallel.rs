//! Data parallelism over a gang's [`Collective`]: every rank holds the whole model,
//! reads its own slice of each global batch, and after the backward pass the ranks
//! sum their gradients, each weighted by what its slice counted in the loss (its
//! predicted tokens), and divide by the gang's total, so every rank takes the step the
//! whole batch would have given one process.
//!
//! Parameters start equal (rank 0's, broadcast). Gradients travel in the optimizer's
//! flat buffers ([`crate::optim::AdamW`]: one per parameter group, on the model's
//! device), reduced in place in buckets of a few MiB, so a step makes a few large
//! transfers rather than one per parameter, and nothing is copied back. Ranks compare
//! parameter checksums every few steps ([`check_ranks_agree`]): ranks drifting apart is
//! an error, never a silent divergence.

use std::ops::Range;

use tch::{Device, Kind, Tensor, nn};

use crate::collective::{Collective, CollectiveError};

/// The rows of a global batch of `rows` that `rank` of `world` reads: contiguous,
/// disjoint, covering the batch, sizes differing by at most one (the earlier ranks
/// larger).
pub fn rank_rows(rows: usize, rank: usize, world: usize) -> Range<usize> {
    let bounds = crate::collective::chunk_bounds(rows, world.max(1));
    bounds[rank]..bounds[rank + 1]
}

/// The most bytes one collective call moves: large enough for full-speed transfers,
/// small enough that a gang's first bytes travel while later buckets are still cut.
pub const BUCKET_BYTES: usize = 4 << 20;

/// `buffer`'s consecutive pieces of at most `bucket_bytes` (views: reducing one
/// reduces that part of `buffer`).
fn buckets(buffer: &Tensor, bucket_bytes: usize) -> Vec<Tensor> {
    let len = buffer.numel() as i64;
    let per = (bucket_bytes / buffer.kind().elt_size_in_bytes()).max(1) as i64;
    (0..len)
        .step_by(per as usize)
        .map(|at| buffer.narrow(0, at, per.min(len - at)))
        .collect()
}

/// Sums every rank's flat f32 gradient buffers (the optimizer's,
/// [`crate::optim::AdamW::flat_grads`]) over the gang, bucket by bucket in place, and
/// multiplies the sums by `scale`; answers the bytes reduced. With each rank's
/// gradients the weighted sum of its micro-batches' and `scale` one over the gang's
/// total weight, every rank ends with the gradient of the whole global batch.
pub fn sum_scaled(
    grads: &[Tensor],
    collective: &mut dyn Collective,
    scale: f64,
    bucket_bytes: usize,
) -> Result<u64, CollectiveError> {
    let mut bytes = 0;
    tch::no_grad(|| {
        for buffer in grads {
            for mut bucket in buckets(buffer, bucket_bytes) {
                collective.all_reduce_sum(&mut bucket)?;
                bytes += bucket.numel() as u64 * 4;
            }
            let _ = buffer.shallow_clone().g_mul_scalar_(scale);
        }
        Ok(bytes)
    })
}

/// Makes every rank's flat parameter buffers
/// ([`crate::optim::AdamW::flat_parameters`]) rank 0's, a bucket at a time (through f32
/// where the parameters are not).
pub fn broadcast_parameters(
    parameters: &[Tensor],
    collective: &mut dyn Collective,
) -> Result<(), CollectiveError> {
    tch::no_grad(|| {
        for buffer in parameters {
            let floats = buffer.to_kind(Kind::Float).to_device(collective.device());
            for mut bucket in buckets(&floats, BUCKET_BYTES) {
                collective.broadcast(&mut bucket, 0)?;
            }
            buffer.shallow_clone().copy_(&floats);
        }
        Ok(())
    })
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
