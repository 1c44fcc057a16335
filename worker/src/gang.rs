//! A training task's gang: the ranks that train one phase together.
//!
//! Every rank publishes what the others need through the coordinator's rendezvous (the
//! CPU ring: each rank's listener address; NCCL: rank 0's unique id), joins the
//! backend, and starts from rank 0's parameters. Each step a rank runs its slice of
//! the global batch as micro-batches of at most `batch_size / max_world_size` rows (a
//! gang formed smaller than its largest size accumulates gradients and takes the same
//! steps), then the gang sums gradients and loss, weighted by predicted tokens. Every
//! wait is bounded by the phase's collective timeout: a dead or hung rank turns into an
//! error that fails this lease, so the coordinator revokes the gang and forms it anew.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use outloud_core::spec::GangPlan;
use tch::{Device, Kind, Tensor, nn};

use crate::collective::nccl::{self, Nccl};
use crate::collective::ring::{self, Ring};
use crate::collective::{Collective, CollectiveError, chunk_bounds};
use crate::context::TaskContext;
use crate::error::WorkerError;
use crate::optim::AdamW;
use crate::parallel::{self, BUCKET_BYTES};

/// The address this machine is reached at from the coordinator's side: the local end
/// of a route to it (no packet is sent). Ranks publish their listeners there.
pub fn advertised_host(coordinator: &str) -> String {
    let resolved = url::Url::parse(coordinator)
        .and_then(|url| {
            url.socket_addrs(|| None)
                .map_err(|_| url::ParseError::EmptyHost)
        })
        .ok()
        .and_then(|addresses| addresses.into_iter().next());
    let local = resolved.and_then(|remote| {
        let socket = std::net::UdpSocket::bind(if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .ok()?;
        socket.connect(remote).ok()?;
        socket.local_addr().ok()
    });
    local.map_or_else(|| "127.0.0.1".into(), |a| a.ip().to_string())
}

/// One rank's place in its gang, with what it spent in all-reduces.
pub struct Gang {
    collective: Box<dyn Collective>,
    plan: GangPlan,
    /// Seconds spent in collectives and bytes reduced, since the gang met.
    pub seconds: f64,
    pub bytes: u64,
}

impl Gang {
    /// Meets the other ranks of `ctx`'s lease and makes this rank's trained parameters
    /// (`optimizer`'s) rank 0's; `None` for a phase that trains alone.
    pub fn join(ctx: &TaskContext, optimizer: &AdamW) -> Result<Option<Self>, WorkerError> {
        let Some(plan) = ctx.train()?.gang else {
            return Ok(None);
        };
        let rank = ctx.assignment.rank as usize;
        let world = ctx.assignment.world_size.max(1) as usize;
        let _span = tracing::info_span!("collective", rank, world).entered();
        let timeout = Duration::from_millis(plan.collective_timeout_ms);
        let collective: Box<dyn Collective> = match ctx.device {
            Device::Cuda(_) => {
                let payload = if rank == 0 {
                    nccl::unique_id()?
                } else {
                    Vec::new()
                };
                let heard = ctx.meet(tagged("nccl", &payload), timeout)?;
                let id = untagged("nccl", &heard[0], rank)?;
                Box::new(Nccl::join(rank, world, id, ctx.device, timeout)?)
            }
            _ => {
                let listener = ring::listen(&ctx.rendezvous.host)?;
                let mine = listener.local_addr()?.to_string();
                let heard = ctx.meet(tagged("ring", mine.as_bytes()), timeout)?;
                let addresses = heard
                    .iter()
                    .map(|payload| ring_address(payload, rank))
                    .collect::<Result<Vec<SocketAddr>, _>>()?;
                Box::new(Ring::join(rank, &addresses, listener, timeout)?)
            }
        };
        tracing::info!(
            rank,
            world,
            backend = if ctx.device.is_cuda() { "nccl" } else { "ring" },
            "gang met"
        );
        let mut gang = Self {
            collective,
            plan,
            seconds: 0.0,
            bytes: 0,
        };
        let started = Instant::now();
        gang.check_backend()?;
        parallel::broadcast_parameters(&optimizer.flat_parameters(), gang.collective.as_mut())?;
        gang.seconds += started.elapsed().as_secs_f64();
        Ok(Some(gang))
    }

    /// The gang's first all-reduce is checked against what it must give: rank `r`
    /// offers `r + 1` in every element, so every element must sum to `n (n + 1) / 2`. A
    /// backend that reduces wrongly (or a device pointer misread) fails here, before it
    /// can corrupt training.
    fn check_backend(&mut self) -> Result<(), WorkerError> {
        let (rank, world) = (self.rank(), self.collective.world_size());
        let device = self.collective.device();
        let mut probe = Tensor::full([1_031], (rank + 1) as f64, (Kind::Float, device));
        self.collective.all_reduce_sum(&mut probe)?;
        let expected = (world * (world + 1) / 2) as f64;
        let (low, high) = (probe.min().double_value(&[]), probe.max().double_value(&[]));
        if (low, high) != (expected, expected) {
            return Err(CollectiveError::Protocol {
                rank,
                message: format!(
                    "the backend's test all-reduce gave values in {low}..{high}, not {expected}"
                ),
            }
            .into());
        }
        Ok(())
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// This rank's micro-batches of a global batch of `rows`: its slice, cut into
    /// pieces of at most `rows / max_world_size` (rounded up).
    pub fn micro_batches(&self, rows: usize) -> Vec<Range<usize>> {
        let world = self.collective.world_size();
        micro_batches(rows, self.rank(), world, self.plan.max_world_size as usize)
    }

    /// Sums the gradients and the loss of every rank's micro-batches (each rank's
    /// `loss_sum` is the sum of its micro-batches' mean losses times their weights)
    /// and divides both by the gang's total weight: every rank then holds the whole
    /// global batch's gradient. Answers the global batch's mean loss.
    pub fn reduce(
        &mut self,
        optimizer: &mut AdamW,
        loss_sum: f64,
        weight: f64,
    ) -> Result<f64, WorkerError> {
        let started = Instant::now();
        let collective = self.collective.as_mut();
        let totals = parallel::sum_values(collective, &[loss_sum, weight])?;
        let total_weight = totals[1].max(f64::MIN_POSITIVE);
        let grads = optimizer.flat_grads();
        self.bytes += parallel::sum_scaled(&grads, collective, 1.0 / total_weight, BUCKET_BYTES)?;
        self.seconds += started.elapsed().as_secs_f64();
        Ok(totals[0] / total_weight)
    }

    /// Every `check_ranks_every` steps, an error unless every rank's parameters are
    /// rank 0's to the bit.
    pub fn check_agreement(&mut self, vs: &nn::VarStore, step: u64) -> Result<(), WorkerError> {
        if !step.is_multiple_of(self.plan.check_ranks_every) {
            return Ok(());
        }
        parallel::check_ranks_agree(vs, self.collective.as_mut())
            .map_err(|e| WorkerError::Diverged(format!("at step {step}: {e}")))
    }
}

/// [`Gang::micro_batches`] for `rank` of `world` in a gang of at most `max_world`.
pub fn micro_batches(
    rows: usize,
    rank: usize,
    world: usize,
    max_world: usize,
) -> Vec<Range<usize>> {
    let mine = parallel::rank_rows(rows, rank, world);
    let most = rows.div_ceil(max_world.max(1)).max(1);
    let pieces = mine.len().div_ceil(most);
    let bounds = chunk_bounds(mine.len(), pieces.max(1));
    bounds
        .windows(2)
        .map(|w| mine.start + w[0]..mine.start + w[1])
        .filter(|r| !r.is_empty())
        .collect()
}

/// A payload names its backend, so a gang that somehow mixed them fails at once.
fn tagged(backend: &str, payload: &[u8]) -> Vec<u8> {
    [backend.as_bytes(), b" ", payload].concat()
}

fn untagged<'p>(
    backend: &str,
    payload: &'p [u8],
    rank: usize,
) -> Result<&'p [u8], CollectiveError> {
    payload
        .strip_prefix(backend.as_bytes())
        .and_then(|rest| rest.strip_prefix(b" "))
        .ok_or_else(|| CollectiveError::Protocol {
            rank,
            message: format!(
                "a rank of this {backend} gang published `{}`: ranks of one gang must share a backend",
                String::from_utf8_lossy(&payload[..payload.len().min(40)])
            ),
        })
}

fn ring_address(payload: &[u8], rank: usize) -> Result<SocketAddr, CollectiveError> {
    let text = String::from_utf8_lossy(untagged("ring", payload, rank)?).to_string();
    text.parse().map_err(|_| CollectiveError::Protocol {
        rank,
        message: format!("a rank published `{text}`, not an address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_keep_the_global_batch_whatever_the_gang() {
        // 10 rows, a gang of at most 4: pieces of at most 3 rows.
        assert_eq!(micro_batches(10, 0, 4, 4), vec![0..3]);
        assert_eq!(micro_batches(10, 3, 4, 4), vec![8..10]);
        // Re-formed with 2 ranks: each accumulates over two micro-batches.
        assert_eq!(micro_batches(10, 0, 2, 4), vec![0..3, 3..5]);
        assert_eq!(micro_batches(10, 1, 2, 4), vec![5..8, 8..10]);
        // Alone: the whole batch, four pieces.
        let alone = micro_batches(10, 0, 1, 4);
        assert_eq!(alone.len(), 4);
        assert_eq!((alone[0].start, alone[3].end), (0, 10));
        assert_eq!(micro_batches(10, 0, 1, 1), vec![0..10]);
    }

    #[test]
    fn payloads_name_their_backend() {
        let ring = tagged("ring", b"127.0.0.1:5000");
        assert_eq!(ring_address(&ring, 0).unwrap().port(), 5000);
        let error = untagged("nccl", &ring, 1).unwrap_err().to_string();
        assert!(error.contains("must share a backend"), "{error}");
        assert_eq!(advertised_host("http://127.0.0.1:9"), "127.0.0.1");
    }
}
