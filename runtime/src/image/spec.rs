//! The OCI image and Docker v2 schema 2 documents, as much of them as a runtime needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RunConfig;
use super::digest::Digest;
use super::error::ImageError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// What a registry is asked for, in order of preference.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub user: Option<String>,
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// A manifest or an index, told apart by media type, else by shape.
pub enum ManifestDoc {
    Image(Manifest),
    Index(Index),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    manifests: Option<serde::de::IgnoredAny>,
}

impl ManifestDoc {
    /// Parses a manifest document; `content_type` is the registry's `Content-Type`, if any.
    pub fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
        digest: &Digest,
    ) -> Result<ManifestDoc, ImageError> {
        let bad = |source| ImageError::BadJson {
            what: "manifest",
            digest: digest.clone(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(bad)?;
        if probe.schema_version != Some(2) {
            return Err(ImageError::Malformed {
                what: "manifest",
                digest: digest.clone(),
                reason: format!(
                    "schemaVersion {:?} (only 2 is supported)",
                    probe.schema_version
                ),
            });
        }
        let media_type = probe
            .media_type
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned()))
            .filter(|m| !m.is_empty() && m != "application/json");
        let is_index = match media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => {
                return Err(ImageError::UnsupportedMediaType {
                    what: "manifest",
                    media_type: other.to_owned(),
                });
            }
            None => probe.manifests.is_some(),
        };
        Ok(if is_index {
            ManifestDoc::Index(serde_json::from_slice(bytes).map_err(bad)?)
        } else {
            ManifestDoc::Image(serde_json::from_slice(bytes).map_err(bad)?)
        })
    }
}

impl Manifest {
    /// Refuses configs and layers that are not container images.
    pub fn check(&self) -> Result<(), ImageError> {
        let c = self.config.media_type.as_str();
        if !matches!(c, OCI_CONFIG | DOCKER_CONFIG | "") {
            return Err(ImageError::UnsupportedMediaType {
                what: "image config",
                media_type: c.to_owned(),
            });
        }
        for l in &self.layers {
            if !is_layer(&l.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    what: "layer",
                    media_type: l.media_type.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Layer media types we unpack: OCI tar (plain, gzip, zstd, non-distributable) and Docker's.
fn is_layer(m: &str) -> bool {
    let base = m
        .strip_suffix("+gzip")
        .or_else(|| m.strip_suffix("+zstd"))
        .unwrap_or(m);
    base == OCI_LAYER
        || base == "application/vnd.oci.image.layer.nondistributable.v1.tar"
        || m.starts_with(DOCKER_LAYER)
        || m.starts_with("application/vnd.docker.image.rootfs.foreign.diff.tar")
}

impl ImageConfig {
    pub fn parse(bytes: &[u8], digest: &Digest) -> Result<ImageConfig, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::BadJson {
            what: "image config",
            digest: digest.clone(),
            source,
        })
    }

    pub fn run_config(&self) -> RunConfig {
        let c = self.config.clone().unwrap_or_default();
        RunConfig {
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
        }
    }
}

/// The node's platform in OCI terms: always linux, the architecture this binary runs on.
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The manifest of `index` for linux on this node's architecture (a `v8` or unnamed variant
/// preferred on arm64).
pub fn pick_platform<'a>(index: &'a Index, arch: &str) -> Option<&'a Descriptor> {
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "")
    };
    let mut candidates: Vec<&Descriptor> = index.manifests.iter().filter(fits).collect();
    candidates.sort_by_key(|d| {
        let v = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        match (arch, v) {
            (_, None) => 0,
            ("arm64", Some("v8")) => 0,
            _ => 1,
        }
    });
    candidates.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> serde_json::Value {
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": Digest::of(&[n]).to_string(),
            "size": 1,
            "platform": {"architecture": arch, "os": "linux", "variant": variant},
        })
    }

    #[test]
    fn picks_the_node_platform() {
        let index: Index = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [desc("arm", Some("v7"), 1), desc("arm64", Some("v8"), 2),
                          desc("amd64", None, 3), desc("s390x", None, 4)],
        }))
        .unwrap();
        assert_eq!(
            pick_platform(&index, "amd64").unwrap().digest,
            Digest::of(&[3])
        );
        assert_eq!(
            pick_platform(&index, "arm64").unwrap().digest,
            Digest::of(&[2])
        );
        assert!(pick_platform(&index, "riscv64").is_none());
    }

    #[test]
    fn tells_index_from_manifest() {
        let d = Digest::of(b"x");
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            ManifestDoc::parse(index, None, &d),
            Ok(ManifestDoc::Index(_))
        ));
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": d.to_string(), "size": 1},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "digest": d.to_string(), "size": 1}],
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        match ManifestDoc::parse(&bytes, None, &d) {
            Ok(ManifestDoc::Image(m)) => m.check().unwrap(),
            _ => panic!("not a manifest"),
        }
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(
            ManifestDoc::parse(v1, None, &d),
            Err(ImageError::Malformed { .. })
        ));
        assert!(matches!(
            ManifestDoc::parse(b"<html>", None, &d),
            Err(ImageError::BadJson { .. })
        ));
    }
}
