//! The fused AdamW step: our one call into ATen that tch does not bind
//! (`csrc/fused_adamw.cpp`, compiled by `build.rs`), the kernel behind PyTorch's
//! `AdamW(fused=True)`, on CPU and CUDA alike.

use std::ffi::{c_char, c_int};

use tch::Tensor;
use torch_sys::C_tensor;

unsafe extern "C" {
    fn outloud_fused_adamw(
        param: *mut C_tensor,
        grad: *mut C_tensor,
        exp_avg: *mut C_tensor,
        exp_avg_sq: *mut C_tensor,
        step: *mut C_tensor,
        grad_scale: *mut C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

/// AdamW's hyper-parameters for one update.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// The buffers one update reads and writes, all f32, flat and on one device.
pub(super) struct Buffers<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    /// The update's number (1 for the first), a one-element f32 tensor: the kernel
    /// derives the bias corrections from it.
    pub step: &'a Tensor,
    /// Divides the gradient first, when given (clipping), a one-element f32 tensor.
    pub grad_scale: Option<&'a Tensor>,
}

/// One AdamW update of `buffers.param` in place (PyTorch's AdamW exactly: decoupled
/// weight decay, bias-corrected moments).
pub(super) fn adamw(buffers: Buffers, hyper: Hyper) -> Result<(), String> {
    // Handles to the same tensors: the call writes through them, and they outlive it.
    let handle = |t: &Tensor| t.shallow_clone();
    let (mut p, mut g) = (handle(buffers.param), handle(buffers.grad));
    let (mut m, mut v) = (handle(buffers.exp_avg), handle(buffers.exp_avg_sq));
    let mut step = handle(buffers.step);
    let mut scale = buffers.grad_scale.map(|s| s.shallow_clone());
    let scale_ptr = scale
        .as_mut()
        .map_or(std::ptr::null_mut(), |s| s.as_mut_ptr());
    // SAFETY: every pointer is a live tensor handle owned above for the whole call; the
    // C++ side catches its exceptions.
    crate::ffi::checked("fused AdamW", |error, len| unsafe {
        outloud_fused_adamw(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            step.as_mut_ptr(),
            scale_ptr,
            hyper.lr,
            hyper.beta1,
            hyper.beta2,
            hyper.weight_decay,
            hyper.eps,
            error,
            len,
        )
    })
}
