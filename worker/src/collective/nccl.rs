//! The GPU backend: NCCL through cudarc, loaded at run time (no CUDA toolkit at build
//! time; `libnccl.so` must be on the library path, see the toolchain notes).
//!
//! Collectives run on the device memory of tch tensors, on the legacy default stream
//! that tch computes on, so they are ordered after the backward pass that wrote the
//! gradients. NCCL waits forever for a dead peer; a watchdog thread aborts the
//! communicator once a collective outlives the timeout (as PyTorch's NCCL watchdog
//! does), which turns the wait into an error, and the communicator is then unusable:
//! the gang is revoked and formed anew.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cudarc::nccl::{result, sys};
use tch::{Device, Kind, Tensor};

use super::{Collective, CollectiveError, check_buffer};

/// An error unless `libnccl.so` can be loaded (cudarc would panic at the first call).
fn loadable(rank: usize) -> Result<(), CollectiveError> {
    // SAFETY: only tries to open the library.
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    Err(CollectiveError::Protocol {
        rank,
        message: "cannot load libnccl.so: put a directory holding libnccl.so (a link to the \
                  libnccl.so.2 torch loads) on LD_LIBRARY_PATH"
            .into(),
    })
}

/// The unique id rank 0 makes and every rank joins with, as bytes to publish.
pub fn unique_id() -> Result<Vec<u8>, CollectiveError> {
    loadable(0)?;
    let id = result::get_uniqueid().map_err(|e| failed(0, "creating the unique id", &e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn failed(rank: usize, during: &str, error: &result::NcclError) -> CollectiveError {
    CollectiveError::Protocol {
        rank,
        message: format!("NCCL failed {during}: {:?}", error.0),
    }
}

/// A communicator pointer, shared with the watchdog that may abort it.
#[derive(Clone, Copy)]
struct Comm(sys::ncclComm_t);
// SAFETY: NCCL allows ncclCommAbort from another thread while a collective runs on
// the communicator; that is the only call the watchdog makes.
unsafe impl Send for Comm {}

impl Comm {
    /// Ends the collective in flight with an error and frees the communicator.
    fn abort(self) {
        // SAFETY: see `Comm`; the communicator is not destroyed while the watchdog
        // runs (drop marks it aborted first, and no collective is in flight then).
        unsafe {
            let _ = result::comm_abort(self.0);
        }
    }
}

/// When the collective in flight must have finished; `None` when none is.
type Deadline = Arc<(Mutex<Option<Instant>>, Condvar)>;

/// One rank's NCCL communicator, bound to one CUDA device.
pub struct Nccl {
    rank: usize,
    world: usize,
    device: Device,
    comm: Comm,
    timeout: Duration,
    deadline: Deadline,
    aborted: Arc<AtomicBool>,
}

impl Nccl {
    /// Joins the gang `id` (rank 0's [`unique_id`]) as `rank` of `world` on `device`.
    pub fn join(
        rank: usize,
        world: usize,
        id: &[u8],
        device: Device,
        timeout: Duration,
    ) -> Result<Self, CollectiveError> {
        let Device::Cuda(index) = device else {
            return Err(CollectiveError::Protocol {
                rank,
                message: format!("NCCL needs a CUDA device, not {device:?}"),
            });
        };
        loadable(rank)?;
        let mut unique = sys::ncclUniqueId { internal: [0; 128] };
        if id.len() != unique.internal.len() {
            return Err(CollectiveError::Protocol {
                rank,
                message: format!("a NCCL unique id has 128 bytes, got {}", id.len()),
            });
        }
        for (to, from) in unique.internal.iter_mut().zip(id) {
            *to = *from as _;
        }
        // Torch's context must exist on the device before NCCL binds to it.
        let _ = Tensor::zeros([1], (Kind::Float, device));
        tch::Cuda::synchronize(index as i64);
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is written by NCCL; the id came from rank 0's get_uniqueid.
        unsafe { result::comm_init_rank(&mut comm, world as i32, unique, rank as i32) }
            .map_err(|e| failed(rank, "joining the gang", &e))?;
        let nccl = Self {
            rank,
            world,
            device,
            comm: Comm(comm),
            timeout,
            deadline: Arc::new((Mutex::new(None), Condvar::new())),
            aborted: Arc::new(AtomicBool::new(false)),
        };
        nccl.start_watchdog();
        Ok(nccl)
    }

    /// Aborts the communicator when a collective outlives its deadline.
    fn start_watchdog(&self) {
        let (deadline, aborted, comm) = (self.deadline.clone(), self.aborted.clone(), self.comm);
        std::thread::spawn(move || {
            let (lock, wake) = &*deadline;
            let mut due = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !aborted.load(Ordering::Relaxed) {
                match *due {
                    Some(at) if Instant::now() >= at => {
                        aborted.store(true, Ordering::Relaxed);
                        comm.abort();
                    }
                    Some(at) => {
                        let left = at.saturating_duration_since(Instant::now());
                        due = wake
                            .wait_timeout(due, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => due = wake.wait(due).unwrap_or_else(|p| p.into_inner()),
                }
            }
        });
    }

    /// Runs `launch` (which enqueues one collective) and waits for the device, under
    /// the watchdog.
    fn guarded(
        &mut self,
        buffer: &Tensor,
        during: &'static str,
        launch: impl FnOnce(
            *mut std::ffi::c_void,
            usize,
            sys::ncclComm_t,
        ) -> Result<(), result::NcclError>,
    ) -> Result<(), CollectiveError> {
        check_buffer(buffer, self.device, self.rank)?;
        if self.aborted.load(Ordering::Relaxed) {
            return Err(self.timed_out(during));
        }
        let (lock, wake) = &*self.deadline;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.timeout);
        wake.notify_one();
        let launched = launch(buffer.data_ptr(), buffer.numel(), self.comm.0);
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = None;
        wake.notify_one();
        if self.aborted.load(Ordering::Relaxed) {
            return Err(self.timed_out(during));
        }
        launched.map_err(|e| failed(self.rank, during, &e))
    }

    fn timed_out(&self, during: &'static str) -> CollectiveError {
        CollectiveError::Timeout {
            rank: self.rank,
            peer: "a rank of the gang".into(),
            after: self.timeout,
            during,
        }
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn device(&self) -> Device {
        self.device
    }

    fn all_reduce_sum(&mut self, buffer: &mut Tensor) -> Result<(), CollectiveError> {
        self.guarded(buffer, "all-reduce", |data, count, comm| {
            // SAFETY: `data` is the device memory of a contiguous f32 tensor of `count`
            // elements, reduced in place on the null stream tch uses.
            unsafe {
                result::all_reduce(
                    data,
                    data,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    std::ptr::null_mut(),
                )
            }
            .map(|_| ())
        })
    }

    fn broadcast(&mut self, buffer: &mut Tensor, root: usize) -> Result<(), CollectiveError> {
        self.guarded(buffer, "broadcast", |data, count, comm| {
            // SAFETY: as in `all_reduce_sum`.
            unsafe {
                result::broadcast(
                    data,
                    data,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    root as i32,
                    comm,
                    std::ptr::null_mut(),
                )
            }
            .map(|_| ())
        })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let was_aborted = self.aborted.swap(true, Ordering::Relaxed);
        self.deadline.1.notify_one();
        // SAFETY: no collective is in flight (they are synchronous here); an aborted
        // communicator was already freed by the abort.
        if !was_aborted {
            unsafe {
                let _ = result::comm_destroy(self.comm.0);
            }
        }
    }
}
