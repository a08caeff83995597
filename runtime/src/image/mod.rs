//! The image store: content-addressed blobs, images in `index.json`, layers unpacked once per
//! chain id and shared, imports of image archives and pulls from registries. Knows nothing of
//! CRI or protobuf.
//!
//! ```text
//! <state_dir>/images/index.json              the images: names, manifest, layers, run config
//!                    lock                    held by whoever rewrites index.json (any process)
//!                    blobs/sha256/<hex>      manifests, configs, layer blobs
//!                    layers/<chain hex>/fs/  an unpacked layer: an overlayfs lower dir
//!                    layers/<chain hex>/layer.json
//!                    tmp/<session>/          scratch space of a live process
//! ```
//!
//! Readers never lock: `index.json` is replaced atomically and re-read when it changed.
//! Writers serialise on an in-process mutex and `flock(images/lock)`, so `peapod image import`
//! may run beside the daemon. Content that an operation in flight uses is pinned in memory so
//! that garbage collection (which runs under the lock) leaves it alone.

mod archive;
mod assemble;
mod blobs;
mod digest;
mod error;
mod hosts;
mod index;
mod layers;
mod pull;
mod reference;
mod registry;
mod scratch;
mod spec;
#[cfg(test)]
mod tests;
mod unpack;
mod usage;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub use digest::Digest;
pub use error::ImageError;
pub use hosts::RegistryConfig;
pub use registry::{Credentials, RegistryError};

use blobs::Blobs;
use index::{INDEX_VERSION, ImageRecord, IndexDoc, Named};
use layers::Layers;
use pull::KeyedLocks;
use registry::Registries;
use scratch::Scratch;

pub struct ImageStore {
    root: PathBuf,
    blobs: Blobs,
    layers: Layers,
    scratch: Scratch,
    registries: Registries,
    downloads: KeyedLocks,
    cache: Mutex<Cached>,
    writer: Mutex<()>,
    pins: Pins,
}

#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// `sha256:<hex of the config blob digest>`.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    /// Unpacked layer directories, bottom layer first: overlayfs lowerdirs (reversed) for a
    /// rootfs.
    #[allow(dead_code)] // read by containers, which build their rootfs from it
    pub layers: Vec<PathBuf>,
    pub config: RunConfig,
}

/// What the image config says about running it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
}

#[derive(Default)]
struct Cached {
    stamp: Option<(u64, u64, i64, i64)>,
    doc: Arc<IndexDoc>,
}

/// Held while rewriting `index.json`: the in-process writer lock and the cross-process flock.
pub(crate) struct WriteLock<'a> {
    _local: MutexGuard<'a, ()>,
    _file: Flock<File>,
}

impl ImageStore {
    /// Opens (creating) the store under `<state_dir>/images/`.
    pub fn open(state_dir: &Path, registries: RegistryConfig) -> Result<ImageStore, ImageError> {
        let root = state_dir.join("images");
        fs::create_dir_all(&root).map_err(ImageError::io("cannot create", &root))?;
        Ok(ImageStore {
            blobs: Blobs::open(root.join("blobs/sha256"))?,
            layers: Layers::open(root.join("layers"))?,
            scratch: Scratch::open(&root.join("tmp"))?,
            root,
            registries: Registries::new(registries)?,
            downloads: KeyedLocks::default(),
            cache: Mutex::default(),
            writer: Mutex::default(),
            pins: Pins::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The current index, re-read if another writer replaced it.
    fn doc(&self) -> Result<Arc<IndexDoc>, ImageError> {
        let mut cache = self.cache.lock().expect("image cache lock");
        self.refresh(&mut cache)
    }

    fn refresh(&self, cache: &mut Cached) -> Result<Arc<IndexDoc>, ImageError> {
        let path = self.index_path();
        let stamp = fs::metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()));
        if stamp != cache.stamp || stamp.is_none() {
            let doc: IndexDoc = crate::store::read_json_opt(&path)?.unwrap_or_default();
            cache.doc = Arc::new(doc);
            cache.stamp = stamp;
        }
        Ok(cache.doc.clone())
    }

    pub(crate) fn write_lock(&self) -> Result<WriteLock<'_>, ImageError> {
        let local = self.writer.lock().expect("image writer lock");
        let path = self.root.join("lock");
        let f = File::create(&path).map_err(ImageError::io("cannot open", &path))?;
        let file = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::io("cannot lock", &path)(e.into()))?;
        Ok(WriteLock {
            _local: local,
            _file: file,
        })
    }

    /// Applies `f` to a copy of the index and, if it succeeds, writes that copy atomically.
    /// The caller holds the write lock.
    fn update<T>(
        &self,
        _lock: &WriteLock<'_>,
        f: impl FnOnce(&mut IndexDoc) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let mut cache = self.cache.lock().expect("image cache lock");
        let mut doc = (*self.refresh(&mut cache)?).clone();
        let out = f(&mut doc)?;
        doc.version = INDEX_VERSION;
        let path = self.index_path();
        crate::store::write_json(&path, &doc)?;
        cache.doc = Arc::new(doc);
        cache.stamp = fs::metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()));
        Ok(out)
    }

    fn info(&self, r: &ImageRecord) -> ImageInfo {
        ImageInfo {
            id: r.id.to_string(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            layers: r
                .layers
                .iter()
                .map(|l| self.layers.fs_path(&l.chain_id))
                .collect(),
            config: r.run.clone(),
        }
    }

    /// By name (normalised: `busybox` → `docker.io/library/busybox:latest`), by id
    /// (`sha256:<config digest>` or its hex, or a unique hex prefix of at least 12), or by
    /// repo digest (`name@sha256:…`). Unknown → [`ImageError::NotFound`].
    pub fn resolve(&self, image: &str) -> Result<ImageInfo, ImageError> {
        let doc = self.doc()?;
        let (r, _) = doc.lookup(image)?;
        Ok(self.info(r))
    }

    /// Every image, oldest first.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        Ok(self.doc()?.images.iter().map(|r| self.info(r)).collect())
    }

    /// The image and a JSON description of it (manifest, chain ids, the image config as
    /// stored), for verbose status.
    pub fn inspect(&self, image: &str) -> Result<(ImageInfo, serde_json::Value), ImageError> {
        let doc = self.doc()?;
        let (r, _) = doc.lookup(image)?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.blobs.read(&r.id)?).map_err(|source| {
                ImageError::BadJson {
                    what: "image config",
                    digest: r.id.clone(),
                    source,
                }
            })?;
        let info = serde_json::json!({
            "id": r.id,
            "manifest": r.manifest,
            "layers": r.layers,
            "chainIDs": r.layers.iter().map(|l| &l.chain_id).collect::<Vec<_>>(),
            "createdAt": r.created_at,
            "imageSpec": config,
        });
        Ok((self.info(r), info))
    }

    /// Removes a name of an image, or the image. By id: the image goes. By a tag: the tag
    /// goes, and the image with it when that was its last tag. By a repo digest: that name
    /// goes, and the image when it has no name left. Deleting an image `in_use(id)` says a
    /// container uses is refused ([`ImageError::InUse`]). Content no image needs any more is
    /// deleted.
    pub fn remove(&self, image: &str, in_use: &dyn Fn(&str) -> bool) -> Result<(), ImageError> {
        let lock = self.write_lock()?;
        let deleted = self.update(&lock, |doc| {
            let (rec, named) = doc.lookup(image)?;
            let id = rec.id.clone();
            let rec = doc.images.iter_mut().find(|r| r.id == id).expect("found");
            let delete = match named {
                Named::Id(_) => true,
                Named::Name(n) => {
                    let was_tag = rec.repo_tags.contains(&n);
                    rec.repo_tags.retain(|t| *t != n);
                    rec.repo_digests.retain(|d| *d != n);
                    rec.repo_tags.is_empty() && (was_tag || rec.repo_digests.is_empty())
                }
            };
            if delete {
                if in_use(id.as_str()) {
                    return Err(ImageError::InUse {
                        image: image.to_owned(),
                        containers: Vec::new(),
                    });
                }
                doc.images.retain(|r| r.id != id);
            }
            Ok(delete.then_some(id))
        })?;
        if let Some(id) = deleted {
            tracing::info!(image, %id, "image removed");
            self.collect_garbage_locked(&lock);
        } else {
            tracing::info!(image, "image name removed");
        }
        Ok(())
    }

    /// Deletes blobs and layers that no image needs and no operation in flight uses (left by
    /// a crash or by removed images).
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let lock = self.write_lock()?;
        self.collect_garbage_locked(&lock);
        Ok(())
    }

    fn collect_garbage_locked(&self, _lock: &WriteLock<'_>) {
        let doc = match self.doc() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "image garbage collection skipped");
                return;
            }
        };
        let mut keep: HashSet<&Digest> = doc.images.iter().flat_map(ImageRecord::blobs).collect();
        keep.extend(
            doc.images
                .iter()
                .flat_map(|r| r.layers.iter().map(|l| &l.chain_id)),
        );
        let pins = self.pins.0.lock().expect("pins lock");
        for d in self.blobs.list() {
            if !keep.contains(&d)
                && !pins.contains_key(&d)
                && let Err(e) = self.blobs.remove(&d)
            {
                tracing::warn!(error = %e.chain(), "cannot remove an unused blob");
            }
        }
        for c in self.layers.list() {
            if !keep.contains(&c)
                && !pins.contains_key(&c)
                && let Err(e) = self.layers.remove(&self.scratch, &c)
            {
                tracing::warn!(error = %e.chain(), "cannot remove an unused layer");
            }
        }
    }

    /// Keeps `digests` (blobs or chain ids) from garbage collection until the guard drops.
    fn pin(&self, digests: impl IntoIterator<Item = Digest>) -> Pin {
        let mut pin = Pin {
            pins: self.pins.clone(),
            digests: Vec::new(),
        };
        for d in digests {
            pin.add(&d);
        }
        pin
    }
}

/// Content in use by operations in flight, with a count each.
#[derive(Clone, Default)]
struct Pins(Arc<Mutex<HashMap<Digest, usize>>>);

pub(crate) struct Pin {
    pins: Pins,
    digests: Vec<Digest>,
}

impl Pin {
    fn add(&mut self, d: &Digest) {
        *self
            .pins
            .0
            .lock()
            .expect("pins lock")
            .entry(d.clone())
            .or_default() += 1;
        self.digests.push(d.clone());
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.0.lock().expect("pins lock");
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}
