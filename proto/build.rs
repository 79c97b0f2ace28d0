//! Compiles `proto/**/*.proto` with protox (a pure-Rust protobuf compiler), so
//! no system `protoc` is needed: `cargo build` alone works on a fresh machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/pact/v1/pact.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
