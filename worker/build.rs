// rustc links with `--as-needed`, and nothing references libtorch_cuda directly, so the
// linker would drop it and `tch::Cuda::is_available()` would be false on a GPU machine.
// Keeping it (and libtorch) needed makes the same binary use CUDA where there is one.
//
// It also compiles the one ATen call tch lacks (csrc/fused_adamw.cpp) against the same
// libtorch that torch-sys found (its `links = "tch"` metadata names the lib folder).
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
    println!("cargo:rustc-link-arg-bins=-ltorch");
    println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");

    println!("cargo:rerun-if-changed=csrc/fused_adamw.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names libtorch's lib folder");
    let include = std::path::Path::new(&lib).with_file_name("include");
    // PyTorch's wheels are built with the C++11 ABI since 2.7 (torch-sys's default too).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("csrc/fused_adamw.cpp")
        .compile("outloud_fused");
}
