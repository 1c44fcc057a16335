// rustc links with `--as-needed`, and nothing references libtorch_cuda directly, so the
// linker would drop it and `tch::Cuda::is_available()` would be false on a GPU machine.
// Keeping it (and libtorch) needed makes the same binary use CUDA where there is one.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
    println!("cargo:rustc-link-arg-bins=-ltorch");
    println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
}
