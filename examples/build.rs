//! Compiles the examples' protobuf definitions (with `protox`, so no system `protoc`), and
//! keeps their descriptors for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Each binary reflects only the service it serves.
    for name in ["orders", "checkout"] {
        let own = protox::compile([format!("{name}.proto")], ["proto"])?;
        std::fs::write(
            out.join(format!("{name}.bin")),
            prost::Message::encode_to_vec(&own),
        )?;
    }
    let descriptors = protox::compile(["orders.proto", "checkout.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
