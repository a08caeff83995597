//! From a manifest whose blobs are in the store to an image record: the config read, every
//! layer unpacked (once per chain id), and the cleanup of a failed operation.

use super::digest::{Digest, chain_ids};
use super::error::ImageError;
use super::index::{ImageRecord, LayerRef};
use super::spec::{ImageConfig, Manifest};
use super::{ImageStore, Pin, WriteLock};

/// What an operation added to the store, to be removed again if it fails.
#[derive(Default)]
pub(super) struct Created {
    blobs: Vec<Digest>,
    layers: Vec<Digest>,
}

impl Created {
    pub fn blob(&mut self, d: &Digest) {
        self.blobs.push(d.clone());
    }
}

/// The names an image is stored under.
#[derive(Clone, Debug, Default)]
pub(super) struct Names {
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// The bytes of an image's content: its manifest, config and layer blobs; `None` on overflow.
fn total_size(manifest_size: u64, manifest: &Manifest) -> Option<u64> {
    manifest.layers.iter().try_fold(
        manifest_size.checked_add(manifest.config.size)?,
        |sum, l| sum.checked_add(l.size),
    )
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl ImageStore {
    /// Reads the config and unpacks the layers of `manifest` (all of its blobs are in the
    /// store, pinned by `pin`); returns the image's record.
    pub(super) fn assemble(
        &self,
        pin: &mut Pin,
        created: &mut Created,
        manifest_digest: &Digest,
        manifest: &Manifest,
        names: Names,
    ) -> Result<ImageRecord, ImageError> {
        manifest.check()?;
        // Every descriptor's size is the stored blob's, checked before anything is unpacked:
        // the image's size is then true, and a lie is refused however the blob got here.
        self.blobs.check_size("config", &manifest.config)?;
        for l in &manifest.layers {
            self.blobs.check_size("layer", l)?;
        }
        let size = total_size(self.blobs.size(manifest_digest)?, manifest).ok_or_else(|| {
            ImageError::SizeOverflow {
                what: format!("image {manifest_digest}"),
            }
        })?;
        let config_digest = &manifest.config.digest;
        let config = ImageConfig::parse(&self.blobs.read(config_digest)?, config_digest)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Malformed {
                what: "manifest",
                digest: manifest_digest.clone(),
                reason: format!(
                    "{} layers, but its config lists {} diff ids",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let chains = chain_ids(diff_ids);
        let mut layers = Vec::with_capacity(chains.len());
        for ((desc, diff_id), chain_id) in manifest.layers.iter().zip(diff_ids).zip(chains) {
            pin.add(&chain_id);
            let file = self.blobs.open_blob(&desc.digest)?;
            let started = std::time::Instant::now();
            if self
                .layers
                .unpack(&self.scratch, &desc.digest, file, &chain_id, diff_id)?
            {
                tracing::debug!(layer = %desc.digest, chain_id = %chain_id,
                    elapsed_ms = started.elapsed().as_millis() as u64, "layer unpacked");
                created.layers.push(chain_id.clone());
            }
            layers.push(LayerRef {
                blob: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                diff_id: diff_id.clone(),
                chain_id,
            });
        }
        Ok(ImageRecord {
            id: config_digest.clone(),
            repo_tags: names.repo_tags,
            repo_digests: names.repo_digests,
            manifest: manifest_digest.clone(),
            layers,
            size,
            run: config.run_config(),
            created_at: now_ns(),
        })
    }

    /// Stores `records` in the index; returns them as stored (merged with what was there).
    pub(super) fn commit(
        &self,
        lock: &WriteLock<'_>,
        records: Vec<ImageRecord>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        self.update(lock, |doc| {
            for r in &records {
                let missing = r.blobs().find(|d| !self.blobs.contains(d));
                let missing = missing.or(r
                    .layers
                    .iter()
                    .map(|l| &l.chain_id)
                    .find(|c| !self.layers.contains(c)));
                if let Some(d) = missing {
                    return Err(ImageError::Vanished { digest: d.clone() });
                }
            }
            Ok(records.into_iter().map(|r| doc.add(r)).collect())
        })
    }

    /// Removes what a failed operation created, unless an image or another operation in
    /// flight uses it. The failed operation's own pin must be dropped first.
    pub(super) fn discard(&self, _lock: &WriteLock<'_>, created: Created) {
        let Ok(doc) = self.doc() else { return };
        let pins = self.pins.0.lock().expect("pins lock");
        let used = |d: &Digest| {
            pins.contains_key(d)
                || doc
                    .images
                    .iter()
                    .any(|r| r.blobs().any(|b| b == d) || r.layers.iter().any(|l| l.chain_id == *d))
        };
        for d in created.blobs.iter().filter(|d| !used(d)) {
            if let Err(e) = self.blobs.remove(d) {
                tracing::warn!(error = %e.chain(), "cannot remove a failed operation's blob");
            }
        }
        for c in created.layers.iter().filter(|c| !used(c)) {
            if let Err(e) = self.layers.remove(&self.scratch, c) {
                tracing::warn!(error = %e.chain(), "cannot remove a failed operation's layer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::spec::{Descriptor, OCI_CONFIG, OCI_LAYER};

    fn desc(size: u64) -> Descriptor {
        Descriptor {
            media_type: OCI_LAYER.into(),
            digest: Digest::of(&size.to_le_bytes()),
            size,
            annotations: Default::default(),
            platform: None,
        }
    }

    fn manifest(config: u64, layers: &[u64]) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor {
                media_type: OCI_CONFIG.into(),
                ..desc(config)
            },
            layers: layers.iter().map(|&s| desc(s)).collect(),
        }
    }

    #[test]
    fn sizes_add_up_or_overflow_is_none() {
        assert_eq!(total_size(10, &manifest(20, &[30, 40])), Some(100));
        assert_eq!(total_size(0, &manifest(0, &[])), Some(0));
        let huge = i64::MAX as u64;
        // Three claims of 2^63-1 wrap a u64 sum: refused, never wrapped.
        assert_eq!(total_size(1, &manifest(huge, &[huge, huge])), None);
        assert_eq!(total_size(u64::MAX, &manifest(1, &[])), None);
        assert_eq!(total_size(0, &manifest(0, &[u64::MAX, 1])), None);
        assert_eq!(total_size(0, &manifest(huge, &[huge, 1])), Some(u64::MAX));
    }
}
