// rustc links with `--as-needed`, and nothing references libtorch_cuda directly, so the
// linker would drop it and `tch::Cuda::is_available()` would be false on a GPU machine.
// Keeping it (and libtorch) needed makes the same binary use CUDA where there is one.
//
// It also compiles what tch lacks (csrc/: the fused AdamW call, copies to host on a
// side stream) against the same libtorch that torch-sys found (its `links = "tch"`
// metadata names the lib folder).
//
// And it records the git commit it was built from (OUTLOUD_GIT_COMMIT, "unknown" outside
// a clone), which every checkpoint manifest names with the version.
fn main() {
    git_commit();

    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
    println!("cargo:rustc-link-arg-bins=-ltorch");
    println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");

    println!("cargo:rerun-if-changed=csrc/fused_adamw.cpp");
    println!("cargo:rerun-if-changed=csrc/copy_aside.cpp");
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
        .file("csrc/copy_aside.cpp")
        .compile("outloud_csrc");
}

fn git_commit() {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // An image build has no .git: it passes the commit in (deploy/docker).
    println!("cargo:rerun-if-env-changed=OUTLOUD_GIT_COMMIT");
    let commit = std::env::var("OUTLOUD_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OUTLOUD_GIT_COMMIT={commit}");
    // A new commit moves HEAD's branch (or HEAD itself, detached).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{branch}");
        }
    }
}
