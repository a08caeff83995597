//! `peapod image import`: OCI image-layout archives and docker-archives (`docker save`),
//! plain or gzipped, named from the archive. The whole import runs under the store's write
//! lock; what a failed import added is removed again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::assemble::{Created, Names};
use super::blobs::{Expect, MAX_JSON};
use super::digest::Digest;
use super::error::ImageError;
use super::index::ImageRecord;
use super::layers::decompressed;
use super::reference::Reference;
use super::spec::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, Index, Manifest, ManifestDoc,
    OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, node_arch, pick_platform,
};
use super::{ImageInfo, ImageStore, Pin};

/// Small files of an archive that describe it, read into memory.
const META_FILES: &[&str] = &["index.json", "manifest.json", "oci-layout", "repositories"];

/// What the archive held: its metadata files, and every other file as a blob.
#[derive(Default)]
struct Contents {
    meta: HashMap<String, Vec<u8>>,
    files: HashMap<String, Digest>,
    links: HashMap<String, String>,
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports the images of an archive; returns them as stored.
    pub fn import(&self, file: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        let lock = self.write_lock()?;
        let mut pin = self.pin([]);
        let mut created = Created::default();
        let imp = Import { store: self, file };
        let result = imp
            .records(&mut pin, &mut created)
            .and_then(|records| self.commit(&lock, records));
        drop(pin);
        match result {
            Ok(records) => {
                for r in &records {
                    tracing::info!(id = %r.id, names = ?r.repo_tags, file = %file.display(),
                        "image imported");
                }
                Ok(records.iter().map(|r| self.info(r)).collect())
            }
            Err(e) => {
                self.discard(&lock, created);
                Err(e)
            }
        }
    }
}

struct Import<'a> {
    store: &'a ImageStore,
    file: &'a Path,
}

impl Import<'_> {
    fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Archive {
            file: self.file.to_owned(),
            reason: reason.into(),
        }
    }

    fn records(
        &self,
        pin: &mut Pin,
        created: &mut Created,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let contents = self.read(pin, created)?;
        let records = if let Some(m) = contents.meta.get("manifest.json") {
            self.docker(&contents, m, pin, created)?
        } else if let Some(i) = contents.meta.get("index.json") {
            self.oci(i, pin, created)?
        } else {
            return Err(self.bad(
                "neither an OCI image layout (no index.json) nor a docker-archive (no manifest.json)",
            ));
        };
        if records.is_empty() {
            return Err(self.bad("it holds no image"));
        }
        Ok(records)
    }

    /// One pass over the tar: metadata into memory, every other file into the blob store
    /// (`blobs/sha256/<hex>` checked against its name).
    fn read(&self, pin: &mut Pin, created: &mut Created) -> Result<Contents, ImageError> {
        let read_err = |source| ImageError::ArchiveRead {
            file: self.file.to_owned(),
            source,
        };
        let f = File::open(self.file).map_err(read_err)?;
        let mut archive = tar::Archive::new(decompressed(BufReader::new(f)).map_err(read_err)?);
        let mut c = Contents::default();
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            let name = clean(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned());
                let target =
                    target.ok_or_else(|| self.bad(format!("link {name} has no target")))?;
                let base = if kind.is_symlink() { parent(&name) } else { "" };
                let link = clean(&format!("{base}/{target}"));
                c.links.insert(name, link);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            if META_FILES.contains(&name.as_str()) {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_JSON + 1)
                    .read_to_end(&mut buf)
                    .map_err(read_err)?;
                if buf.len() as u64 > MAX_JSON {
                    return Err(self.bad(format!("{name} is larger than {MAX_JSON} bytes")));
                }
                c.meta.insert(name, buf);
                continue;
            }
            let expected = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| Digest::from_hex(hex).map_err(|e| self.bad(e.to_string())))
                .transpose()?;
            let what = if expected.is_some() {
                "blob"
            } else {
                "archive file"
            };
            let expect = Expect {
                what,
                digest: expected.as_ref(),
                size: Some(entry.size()),
            };
            let got = self
                .store
                .blobs
                .ingest(&self.store.scratch, &mut entry, expect)?;
            pin.add(&got.digest);
            if got.created {
                created.blob(&got.digest);
            }
            c.files.insert(name, got.digest);
        }
        Ok(c)
    }

    fn oci(
        &self,
        index: &[u8],
        pin: &mut Pin,
        created: &mut Created,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let index: Index = serde_json::from_slice(index)
            .map_err(|e| self.bad(format!("invalid index.json: {e}")))?;
        let mut out = Vec::new();
        for desc in &index.manifests {
            let mut names = Names::default();
            if let Some(r) = oci_name(desc) {
                names.repo_tags.extend(r.tagged());
                names
                    .repo_digests
                    .push(format!("{}@{}", r.name(), desc.digest));
            }
            let (digest, manifest) = self.manifest(desc)?;
            out.push(
                self.store
                    .assemble(pin, created, &digest, &manifest, names)?,
            );
        }
        Ok(out)
    }

    /// The image manifest a descriptor leads to (through an index, for this node), each
    /// descriptor on the way checked against its blob's size.
    fn manifest(&self, desc: &Descriptor) -> Result<(Digest, Manifest), ImageError> {
        let mut desc = desc.clone();
        for _ in 0..2 {
            let digest = desc.digest.clone();
            if !self.store.blobs.contains(&digest) {
                return Err(self.bad(format!("blob {digest} is missing")));
            }
            self.store.blobs.check_size("manifest", &desc)?;
            match ManifestDoc::parse(&self.store.blobs.read(&digest)?, None, &digest)? {
                ManifestDoc::Image(m) => return Ok((digest, m)),
                ManifestDoc::Index(i) => {
                    let arch = node_arch();
                    desc = pick_platform(&i, arch)
                        .ok_or(ImageError::NoMatchingPlatform {
                            index: digest.clone(),
                            os: "linux",
                            architecture: arch,
                        })?
                        .clone();
                }
            }
        }
        Err(self.bad(format!("index {} nests indexes too deep", desc.digest)))
    }

    fn docker(
        &self,
        c: &Contents,
        manifest_json: &[u8],
        pin: &mut Pin,
        created: &mut Created,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let entries: Vec<DockerEntry> = serde_json::from_slice(manifest_json)
            .map_err(|e| self.bad(format!("invalid manifest.json: {e}")))?;
        let mut out = Vec::new();
        for e in entries {
            let config = self.descriptor(c, &e.config, OCI_CONFIG.to_owned())?;
            let layers = e
                .layers
                .iter()
                .map(|l| {
                    let d = self.resolve(c, l)?;
                    self.descriptor(c, l, layer_media_type(&self.store.blobs.path(&d)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.into()),
                config,
                layers,
            };
            let bytes = serde_json::to_vec(&manifest).expect("manifests serialize");
            let expect = Expect {
                what: "manifest",
                digest: None,
                size: None,
            };
            let got = self
                .store
                .blobs
                .ingest(&self.store.scratch, &bytes[..], expect)?;
            pin.add(&got.digest);
            if got.created {
                created.blob(&got.digest);
            }
            let mut names = Names::default();
            for t in e.repo_tags.unwrap_or_default() {
                match Reference::parse(&t) {
                    Ok(r) => names.repo_tags.extend(r.tagged()),
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring a name in {}", self.file.display())
                    }
                }
            }
            out.push(
                self.store
                    .assemble(pin, created, &got.digest, &manifest, names)?,
            );
        }
        Ok(out)
    }

    /// The blob a path of the archive holds, following links.
    fn resolve(&self, c: &Contents, path: &str) -> Result<Digest, ImageError> {
        let mut p = clean(path);
        for _ in 0..8 {
            if let Some(d) = c.files.get(&p) {
                return Ok(d.clone());
            }
            match c.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Err(self.bad(format!("{path} is not in the archive")))
    }

    fn descriptor(
        &self,
        c: &Contents,
        path: &str,
        media_type: String,
    ) -> Result<Descriptor, ImageError> {
        let digest = self.resolve(c, path)?;
        let size = self.store.blobs.size(&digest)?;
        Ok(Descriptor {
            media_type,
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        })
    }
}

/// The name an OCI layout gives an image: containerd's full-name annotation, else
/// `org.opencontainers.image.ref.name` when it is a full reference (not just a tag).
fn oci_name(desc: &Descriptor) -> Option<Reference> {
    let a = &desc.annotations;
    let name = a.get(ANNOTATION_CONTAINERD_NAME).or_else(|| {
        a.get(ANNOTATION_REF_NAME)
            .filter(|n| n.contains(['/', ':', '@']))
    });
    match name.map(|n| Reference::parse(n)) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ignoring an image name in the archive");
            None
        }
        None => None,
    }
}

/// A layer's media type from its first bytes.
fn layer_media_type(path: &PathBuf) -> String {
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    match &head[..n] {
        [0x1f, 0x8b, ..] => format!("{OCI_LAYER}+gzip"),
        [0x28, 0xb5, 0x2f, 0xfd] => format!("{OCI_LAYER}+zstd"),
        _ => OCI_LAYER.to_owned(),
    }
}

/// A path of the archive without `./`, leading `/` and `x/..` pairs.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}
