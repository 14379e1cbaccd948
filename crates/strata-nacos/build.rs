//! Compiles `proto/nacos_grpc_service.proto` (the Nacos 2.x gRPC wire) into Rust messages and
//! servers. `protox` parses it in pure Rust, so building needs no system `protoc`.

use std::path::Path;

/// The file to compile, relative to `proto/`.
const PROTO: &str = "nacos_grpc_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed={}", root.join(PROTO).display());
    let descriptors = protox::compile([PROTO], [root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
