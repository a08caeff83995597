//! PullImage: the manifest (through an index, for this node), the config and the layers into
//! the blob store, every blob verified before it becomes visible; then the layers unpacked and
//! the image stored under the name asked for. Concurrent pulls share each blob's download. A
//! pull that fails, or is cancelled, removes what it added.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use super::assemble::{Created, Names};
use super::blobs::Expect;
use super::digest::Digest;
use super::error::ImageError;
use super::index::ImageRecord;
use super::reference::Reference;
use super::registry::{Credentials, RegistryError, Session};
use super::spec::{Descriptor, Manifest, ManifestDoc, node_arch, pick_platform};
use super::{ImageInfo, ImageStore, Pin};

/// How often a long download says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One async lock per blob digest: the second puller of a blob waits for the first, then
/// finds it in the store.
#[derive(Default)]
pub(super) struct KeyedLocks(Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: &Digest) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().expect("keyed locks");
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(key.clone()).or_default().clone()
        };
        m.lock_owned().await
    }
}

/// What a pull in flight holds; dropped unfinished (failure or cancellation), it removes
/// what the pull added.
struct Job {
    store: Arc<ImageStore>,
    pin: Option<Pin>,
    created: Option<Created>,
}

impl Job {
    fn pin(&mut self) -> &mut Pin {
        self.pin.as_mut().expect("job in flight")
    }

    fn created(&mut self) -> &mut Created {
        self.created.as_mut().expect("job in flight")
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        drop(self.pin.take());
        if let Some(created) = self.created.take() {
            let store = self.store.clone();
            // Taking the write lock may block: not on a runtime worker.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || store.discard_now(created))),
                Err(_) => store.discard_now(created),
            }
        }
    }
}

/// Sets the flag when dropped, unless disarmed: tells the blocking half that its caller left.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl ImageStore {
    /// Pulls `image` (normalised; by tag or digest) and stores it under that name.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        creds: Option<&Credentials>,
    ) -> Result<ImageInfo, ImageError> {
        let reference = Reference::parse(image)?;
        let wrap = |e: ImageError| ImageError::Pull {
            reference: reference.to_string(),
            registry: reference.domain.clone(),
            source: Box::new(e),
        };
        let started = Instant::now();
        let mut job = Job {
            store: self.clone(),
            pin: Some(self.pin([])),
            created: Some(Created::default()),
        };
        let (digest, manifest, names) = match self.download(&reference, creds, &mut job).await {
            Ok(got) => got,
            Err(e) => {
                // Clean before answering: a failed pull leaves nothing visible when it returns.
                // (Dropping the job cleans too, in the background, for a cancelled pull.)
                drop(job.pin.take());
                if let Some(created) = job.created.take() {
                    let store = self.clone();
                    let _ = tokio::task::spawn_blocking(move || store.discard_now(created)).await;
                }
                return Err(wrap(e));
            }
        };
        let rec = self
            .finish(job, digest, manifest, names)
            .await
            .map_err(wrap)?;
        tracing::info!(image = %reference, id = %rec.id, bytes = rec.size, layers = rec.layers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(self.info(&rec))
    }

    /// Fetches the manifest, config and layer blobs; returns the image manifest.
    async fn download(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        job: &mut Job,
    ) -> Result<(Digest, Manifest, Names), ImageError> {
        let (mut session, top) = self.registries.open(reference, creds).await?;
        tracing::debug!(image = %reference, endpoint = %session.endpoint.v2(), "pulling");
        let names = Names {
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![format!("{}@{}", reference.name(), top.digest)],
        };
        let (digest, bytes, manifest) =
            match ManifestDoc::parse(&top.bytes, top.content_type.as_deref(), &top.digest)? {
                ManifestDoc::Image(m) => (top.digest, top.bytes, m),
                ManifestDoc::Index(index) => {
                    let arch = node_arch();
                    let desc =
                        pick_platform(&index, arch).ok_or(ImageError::NoMatchingPlatform {
                            index: top.digest.clone(),
                            os: "linux",
                            architecture: arch,
                        })?;
                    let f = session.manifest(desc.digest.as_str()).await?;
                    if f.bytes.len() as u64 != desc.size {
                        return Err(ImageError::SizeMismatch {
                            what: "manifest",
                            digest: desc.digest.clone(),
                            expected: desc.size,
                            actual: f.bytes.len() as u64,
                        });
                    }
                    match ManifestDoc::parse(&f.bytes, f.content_type.as_deref(), &f.digest)? {
                        ManifestDoc::Image(m) => (f.digest, f.bytes, m),
                        ManifestDoc::Index(_) => {
                            return Err(ImageError::Malformed {
                                what: "image index",
                                digest: top.digest,
                                reason: format!("its entry {} is another index", desc.digest),
                            });
                        }
                    }
                }
            };
        manifest.check()?;
        let expect = Expect {
            what: "manifest",
            digest: Some(&digest),
            size: None,
        };
        job.pin().add(&digest); // before it may be found in the store, so GC leaves it
        let got = self.blobs.ingest(&self.scratch, &bytes[..], expect)?;
        if got.created {
            job.created().blob(&got.digest);
        }
        self.fetch(&mut session, reference, &manifest.config, "config", job)
            .await?;
        let n = manifest.layers.len();
        for (i, layer) in manifest.layers.iter().enumerate() {
            self.fetch(&mut session, reference, layer, "layer", job)
                .await?;
            tracing::debug!(image = %reference, layer = %layer.digest, "layer {}/{n} fetched", i + 1);
        }
        Ok((digest, manifest, names))
    }

    /// One blob into the store, unless it is there; verified against its descriptor.
    async fn fetch(
        &self,
        session: &mut Session<'_>,
        reference: &Reference,
        desc: &Descriptor,
        what: &'static str,
        job: &mut Job,
    ) -> Result<(), ImageError> {
        let _one_download = self.downloads.lock(&desc.digest).await;
        job.pin().add(&desc.digest);
        if self.blobs.contains(&desc.digest) {
            return Ok(());
        }
        let (url, mut resp) = session.blob(&desc.digest).await?;
        let mut w = self.blobs.writer(&self.scratch)?;
        let mut said = Instant::now();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| RegistryError::Request {
                url: url.clone(),
                source,
            })?
        {
            w.write_all(&chunk)
                .map_err(ImageError::io("cannot write to", self.scratch.dir()))?;
            if w.written() > desc.size {
                return Err(ImageError::SizeMismatch {
                    what,
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: w.written(),
                });
            }
            if said.elapsed() >= PROGRESS_EVERY {
                tracing::info!(image = %reference, blob = %desc.digest, bytes = w.written(),
                    total = desc.size, "pulling {what}");
                said = Instant::now();
            }
        }
        let expect = Expect {
            what,
            digest: Some(&desc.digest),
            size: Some(desc.size),
        };
        let got = w.commit(expect)?;
        if got.created {
            job.created().blob(&got.digest);
        }
        Ok(())
    }

    /// Unpacks and stores the image on a blocking thread. If the caller goes away meanwhile,
    /// the image is not stored and what the pull added is removed.
    async fn finish(
        self: &Arc<Self>,
        mut job: Job,
        digest: Digest,
        manifest: Manifest,
        names: Names,
    ) -> Result<ImageRecord, ImageError> {
        let (mut pin, mut created) = (job.pin.take(), job.created.take());
        drop(job);
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut guard = CancelOnDrop(Some(cancelled.clone()));
        let store = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let (p, c) = (
                pin.as_mut().expect("pin"),
                created.as_mut().expect("created"),
            );
            let stored = store
                .assemble(p, c, &digest, &manifest, names)
                .and_then(|rec| {
                    let lock = store.write_lock()?;
                    if cancelled.load(Ordering::SeqCst) {
                        return Err(ImageError::Cancelled);
                    }
                    store.commit(&lock, vec![rec])
                });
            drop(pin);
            if stored.is_err() {
                store.discard_now(created.take().expect("created"));
            }
            stored
        });
        let stored = task.await.map_err(|_| ImageError::Cancelled)?;
        guard.0 = None;
        Ok(stored?.remove(0))
    }

    /// Removes what a failed operation created (taking the write lock).
    pub(super) fn discard_now(&self, created: Created) {
        match self.write_lock() {
            Ok(lock) => self.discard(&lock, created),
            Err(e) => tracing::warn!(error = %e.chain(), "cannot clean up after a failed pull"),
        }
    }
}
