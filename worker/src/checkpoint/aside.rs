//! Copies of the training state for checkpoints (`csrc/copy_aside.cpp`, compiled by
//! `build.rs`), into buffers laid out like it ([`mirror`]): the state's tensors are
//! views of a few flat buffers, so a copy is a few large ones, one per buffer. On a CPU
//! [`copy`] copies to the host at once. On CUDA [`stage`] copies the live state into
//! device buffers on the current stream (about a millisecond for ~100M parameters with
//! their optimizer state). [`Staged::drain`], on the checkpoint thread, copies
//! those to pinned host memory on a side stream that waits for the staging and nothing
//! else, so the training steps queued meanwhile run beside it. A plain copy to host
//! would hold the training stream for the whole transfer over the host link.

use std::ffi::{c_char, c_int, c_void};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::ffi;

unsafe extern "C" {
    fn outloud_mirror(
        src: *mut *mut C_tensor,
        n: usize,
        on_host: c_int,
        out: *mut *mut C_tensor,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn outloud_copy(
        dst: *mut *mut C_tensor,
        src: *mut *mut C_tensor,
        n: usize,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn outloud_stage(
        dst: *mut *mut C_tensor,
        src: *mut *mut C_tensor,
        n: usize,
        error: *mut c_char,
        error_len: usize,
    ) -> *mut c_void;
    fn outloud_drain(
        staged: *mut c_void,
        host: *mut *mut C_tensor,
        device_buffers: *mut *mut C_tensor,
        n: usize,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn outloud_staged_free(staged: *mut c_void);
    fn outloud_current_stream_wait(t: *mut C_tensor, error: *mut c_char, error_len: usize)
    -> c_int;
}

/// State staged on the device: the staging buffers, and the event behind the copies
/// into them.
pub struct Staged {
    event: *mut c_void,
    buffers: Vec<Tensor>,
}

// SAFETY: the event is a heap-allocated c10 event, used by one thread at a time (made on
// the training thread, drained or freed on the checkpoint thread); CUDA events may be
// waited on from any thread, and tch tensors are Send.
unsafe impl Send for Staged {}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.event.is_null() {
            // SAFETY: a live event from outloud_stage, freed once.
            unsafe { outloud_staged_free(self.event) }
        }
    }
}

/// Handles to `tensors` the C++ side writes through, and their raw pointers.
fn handles(tensors: &[&Tensor]) -> (Vec<Tensor>, Vec<*mut C_tensor>) {
    let mut owned: Vec<Tensor> = tensors.iter().map(|t| t.shallow_clone()).collect();
    let pointers = owned.iter_mut().map(|t| t.as_mut_ptr()).collect();
    (owned, pointers)
}

/// Buffers laid out like `live` (same storage offsets, sizes and strides), one new
/// storage per storage of `live`: on its device, or on the host (pinned when `live` is
/// on a GPU). Copies between such mirrors are a few large ones, one per storage.
pub fn mirror(live: &[&Tensor], on_host: bool) -> Result<Vec<Tensor>, String> {
    let (_src, mut src) = handles(live);
    let mut out = vec![std::ptr::null_mut::<C_tensor>(); live.len()];
    // SAFETY: the pointers are live tensor handles owned above for the whole call, and
    // `out` has room for one handle per tensor; the C++ side catches its exceptions.
    ffi::checked("making checkpoint buffers", |error, len| unsafe {
        outloud_mirror(
            src.as_mut_ptr(),
            live.len(),
            c_int::from(on_host),
            out.as_mut_ptr(),
            error,
            len,
        )
    })?;
    // SAFETY: each pointer is a fresh `at::Tensor` the C++ side allocated for us, now
    // owned here (freed when the tensor drops).
    Ok(out
        .into_iter()
        .map(|p| unsafe { Tensor::from_ptr(p) })
        .collect())
}

/// `dst[i].copy_(src[i])` (by storage between mirrors), waiting for the copies.
pub fn copy(dst: &[&Tensor], src: &[&Tensor]) -> Result<(), String> {
    assert_eq!(dst.len(), src.len());
    if src.is_empty() {
        return Ok(());
    }
    let (_dst, mut dst_ptrs) = handles(dst);
    let (_src, mut src_ptrs) = handles(src);
    // SAFETY: as in `mirror`.
    ffi::checked("copying the checkpoint", |error, len| unsafe {
        outloud_copy(
            dst_ptrs.as_mut_ptr(),
            src_ptrs.as_mut_ptr(),
            src.len(),
            error,
            len,
        )
    })
}

/// Queues `device_buffers[i].copy_(live[i])` on the current stream.
pub fn stage(device_buffers: &[&Tensor], live: &[&Tensor]) -> Result<Staged, String> {
    assert_eq!(device_buffers.len(), live.len());
    if live.is_empty() {
        return Err("nothing to stage".into());
    }
    let (buffers, mut dst) = handles(device_buffers);
    let (_src, mut src) = handles(live);
    // SAFETY: as in `mirror`.
    let event = ffi::call(
        "staging the checkpoint on the device",
        |error, len| unsafe {
            outloud_stage(dst.as_mut_ptr(), src.as_mut_ptr(), live.len(), error, len)
        },
        |event| event.is_null(),
    )?;
    Ok(Staged { event, buffers })
}

impl Staged {
    /// Copies the staged buffers into `host` on a side stream; returns once done.
    pub fn drain(mut self, host: &[&Tensor]) -> Result<(), String> {
        assert_eq!(host.len(), self.buffers.len());
        let (_host, mut host) = handles(host);
        let staged: Vec<&Tensor> = self.buffers.iter().collect();
        let (_device, mut device) = handles(&staged);
        let event = std::mem::replace(&mut self.event, std::ptr::null_mut());
        // SAFETY: as in `mirror`; the event is handed over and freed by the C++ side.
        ffi::checked(
            "copying the checkpoint to host memory",
            |error, len| unsafe {
                outloud_drain(
                    event,
                    host.as_mut_ptr(),
                    device.as_mut_ptr(),
                    host.len(),
                    error,
                    len,
                )
            },
        )
    }
}

/// Waits for the work queued on the current stream of `t`'s device (not the side
/// streams'): what the next training step would wait behind. For benchmarks.
pub fn current_stream_wait(t: &Tensor) -> Result<(), String> {
    let mut handle = t.shallow_clone();
    // SAFETY: as in `mirror`.
    ffi::checked("waiting for the current stream", |error, len| unsafe {
        outloud_current_stream_wait(handle.as_mut_ptr(), error, len)
    })
}
