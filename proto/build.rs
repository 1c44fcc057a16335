// Generates the tonic + prost code for proto/outloud.proto with a vendored protoc, so a
// fresh machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure().compile_protos(&["proto/outloud.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/outloud.proto");
    Ok(())
}
