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
        let size = self.blob_size(manifest_digest)
            + manifest.config.size
            + manifest.layers.iter().map(|l| l.size).sum::<u64>();
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

    fn blob_size(&self, d: &Digest) -> u64 {
        std::fs::metadata(self.blobs.path(d))
            .map(|m| m.len())
            .unwrap_or(0)
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
