//! Generates the Rust types, client and server of peapod's own protos with tonic/prost
//! (protoc from the system, as for the CRI in proto/cri-api).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "peapod/net/v1/net.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &["."])?;
    Ok(())
}
