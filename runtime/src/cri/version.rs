use cri_api::v1 as cri;

pub const RUNTIME_NAME: &str = "peapod";
pub const API_VERSION: &str = "v1";

pub fn handle(_req: cri::VersionRequest) -> cri::VersionResponse {
    cri::VersionResponse {
        // The kubelet API version this runtime speaks.
        version: "0.1.0".into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: API_VERSION.into(),
    }
}
