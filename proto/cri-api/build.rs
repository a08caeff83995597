//! Generates the CRI's types, clients and servers from `api.proto`, kubernetes/cri-api's
//! `pkg/apis/runtime/v1/api.proto` at v0.36.3, vendored unchanged. Debian 12's protoc (3.21)
//! does not know the `debug_redact` field option (protobuf 22), which marks credentials for
//! redaction in debug output and changes nothing on the wire: it is taken out of the copy
//! protoc compiles.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let text = std::fs::read_to_string(proto)?.replace(" [debug_redact = true]", "");
    let copy = out.join("cri").join("api.proto");
    std::fs::create_dir_all(copy.parent().expect("a parent"))?;
    std::fs::write(&copy, text)?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_protos(std::slice::from_ref(&copy), &[out.join("cri")])?;
    Ok(())
}
