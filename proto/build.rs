//! Compiles `moltops/agent/v1/agent.proto` with a vendored `protoc`, so the build never depends
//! on a compiler installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=moltops/agent/v1/agent.proto");
    // No generated `connect()` constructor: it would clash with the `Connect` RPC, and every client
    // here builds its own TLS channel anyway.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(config, &["moltops/agent/v1/agent.proto"], &["."])?;
    Ok(())
}
