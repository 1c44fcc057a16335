//! Collectives between the ranks of a gang: the one interface data-parallel training
//! averages gradients through. [`ring`] is the CPU backend: TCP between worker
//! processes, ring all-reduce (reduce-scatter, then all-gather), any number of ranks,
//! every wait bounded by a timeout so a dead or hung rank never leaves the others
//! waiting. [`nccl`] is the GPU backend: NCCL through cudarc on the device memory of
//! tch tensors, with a watchdog that aborts a collective past its timeout.

pub mod nccl;
pub mod ring;

use std::time::Duration;

use tch::{Device, Tensor};

/// What went wrong in a collective; every variant names the rank that saw it.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank}: {peer} did not answer within {after:?} during {during}")]
    Timeout {
        rank: usize,
        peer: String,
        after: Duration,
        during: &'static str,
    },
    #[error("rank {rank}: {peer} failed during {during}: {source}")]
    Io {
        rank: usize,
        peer: String,
        during: &'static str,
        source: std::io::Error,
    },
    #[error("rank {rank}: {message}")]
    Protocol { rank: usize, message: String },
}

/// One rank's end of a gang's collectives. Every rank calls the same collectives in
/// the same order with buffers of the same length. Buffers are flat, contiguous f32
/// tensors on the backend's [`Collective::device`]: NCCL reduces GPU memory in place,
/// the ring the host memory of CPU tensors.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Where the buffers handed to this backend live.
    fn device(&self) -> Device;
    /// Sums `buffer` element-wise over every rank, in place on each.
    fn all_reduce_sum(&mut self, buffer: &mut Tensor) -> Result<(), CollectiveError>;
    /// Makes every rank's `buffer` what rank `root` holds.
    fn broadcast(&mut self, buffer: &mut Tensor, root: usize) -> Result<(), CollectiveError>;
}

/// An error unless `buffer` is what every backend reduces: a flat, contiguous f32
/// tensor on `device`.
pub fn check_buffer(buffer: &Tensor, device: Device, rank: usize) -> Result<(), CollectiveError> {
    let fits = buffer.device() == device
        && buffer.kind() == tch::Kind::Float
        && buffer.dim() == 1
        && buffer.is_contiguous();
    if fits {
        return Ok(());
    }
    Err(CollectiveError::Protocol {
        rank,
        message: format!(
            "collectives here reduce flat f32 tensors on {device:?}, not {:?} {:?} of shape {:?}",
            buffer.device(),
            buffer.kind(),
            buffer.size()
        ),
    })
}

/// How `len` elements split into `parts` contiguous chunks whose sizes differ by at most
/// one (the larger first): chunk `i` is `chunks[i]..chunks[i + 1]`.
pub fn chunk_bounds(len: usize, parts: usize) -> Vec<usize> {
    let (base, extra) = (len / parts, len % parts);
    let mut bounds = Vec::with_capacity(parts + 1);
    let mut at = 0;
    bounds.push(at);
    for i in 0..parts {
        at += base + usize::from(i < extra);
        bounds.push(at);
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_and_differ_by_at_most_one() {
        for (len, parts) in [(10, 3), (2, 5), (0, 2), (7, 7), (1_000_003, 4)] {
            let b = chunk_bounds(len, parts);
            assert_eq!((b[0], b[parts], b.len()), (0, len, parts + 1));
            let sizes: Vec<usize> = b.windows(2).map(|w| w[1] - w[0]).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{len} in {parts}: {sizes:?}");
        }
    }
}
