//! How Rust calls the C++ shims in `csrc/` (compiled by `build.rs`): each call takes an
//! error buffer and its length, catches its own exceptions, and says it failed through
//! its answer (non-zero, or a null pointer), with the reason written into the buffer.

use std::ffi::{CStr, c_char, c_int};

/// Runs `call`, handing it an error buffer; its answer is an error when `failed` says
/// so, the buffer's text then prefixed with `what`.
pub fn call<T>(
    what: &str,
    call: impl FnOnce(*mut c_char, usize) -> T,
    failed: impl FnOnce(&T) -> bool,
) -> Result<T, String> {
    let mut error = [0 as c_char; 1024];
    let answer = call(error.as_mut_ptr(), error.len());
    if !failed(&answer) {
        return Ok(answer);
    }
    // SAFETY: the C++ side wrote a NUL-terminated message within the buffer (zeroed, so
    // still NUL-terminated if it wrote none).
    let message = unsafe { CStr::from_ptr(error.as_ptr()) };
    Err(format!("{what}: {}", message.to_string_lossy()))
}

/// [`call`] for the shims that answer 0 on success.
pub fn checked(what: &str, call: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    self::call(what, call, |code| *code != 0).map(|_| ())
}
