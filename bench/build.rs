//! Compiles the etcd v3 API subset the etcd backend uses with protox (a
//! pure-Rust protobuf compiler), so building needs no system `protoc`;
//! `--version` names the git commit (see `pact-buildinfo`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    pact_buildinfo::emit();
    let files = ["proto/etcd_kv.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
