//! Content-addressed blobs at `blobs/sha256/<hex>`. A blob is written to a scratch file while
//! its digest is computed, checked against what was expected, synced, and only then renamed
//! into place: a blob that is visible has the content its name says.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::digest::{Digest, Hasher};
use super::error::ImageError;
use super::scratch::Scratch;
use super::spec::Descriptor;

/// The largest JSON blob (manifest, index, config) we read into memory.
pub const MAX_JSON: u64 = 8 << 20;

pub struct Blobs {
    dir: PathBuf,
}

/// What a blob must be: its digest and size when known beforehand.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// What the blob is, for errors: "layer", "config", "manifest".
    pub what: &'static str,
    pub digest: Option<&'a Digest>,
    pub size: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    pub digest: Digest,
    pub size: u64,
    /// False when the store already had it.
    pub created: bool,
}

impl Blobs {
    pub fn open(dir: PathBuf) -> Result<Blobs, ImageError> {
        fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
        Ok(Blobs { dir })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.path(d)).is_ok_and(|m| m.is_file())
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, ImageError> {
        let p = self.path(d);
        File::open(&p).map_err(ImageError::io("cannot open blob", p))
    }

    /// The size of a stored blob.
    pub fn size(&self, d: &Digest) -> Result<u64, ImageError> {
        let p = self.path(d);
        fs::symlink_metadata(&p)
            .map(|m| m.len())
            .map_err(ImageError::io("cannot inspect blob", p))
    }

    /// Fails unless the stored blob `desc` names has the size `desc` claims.
    pub fn check_size(&self, what: &'static str, desc: &Descriptor) -> Result<(), ImageError> {
        let actual = self.size(&desc.digest)?;
        if actual != desc.size {
            return Err(ImageError::SizeMismatch {
                what,
                digest: desc.digest.clone(),
                expected: desc.size,
                actual,
            });
        }
        Ok(())
    }

    /// Reads a (small) blob into memory.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let mut buf = Vec::new();
        self.open_blob(d)?
            .take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(ImageError::io("cannot read blob", self.path(d)))?;
        Ok(buf)
    }

    pub fn writer<'a>(&'a self, scratch: &Scratch) -> Result<BlobWriter<'a>, ImageError> {
        Ok(BlobWriter {
            blobs: self,
            file: scratch.file()?,
            hasher: Hasher::new(),
        })
    }

    /// Copies `r` into the store, verifying it against `expect`.
    pub fn ingest(
        &self,
        scratch: &Scratch,
        mut r: impl Read,
        expect: Expect<'_>,
    ) -> Result<Ingested, ImageError> {
        let mut w = self.writer(scratch)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ImageError::ReadContent {
                        what: expect.what,
                        source,
                    });
                }
            };
            w.write_all(&buf[..n])
                .map_err(ImageError::io("cannot write to", scratch.dir()))?;
        }
        w.commit(expect)
    }

    pub fn remove(&self, d: &Digest) -> Result<(), ImageError> {
        match fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io("cannot remove blob", self.path(d))(e))
            }
            _ => Ok(()),
        }
    }

    /// Every blob in the store.
    pub fn list(&self) -> Vec<Digest> {
        list_hex_names(&self.dir)
    }
}

/// The entries of `dir` named by 64 hex digits, as digests.
pub fn list_hex_names(dir: &Path) -> Vec<Digest> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Digest::from_hex(e.file_name().to_str()?).ok())
        .collect()
}

/// A blob being written; it becomes visible only through a successful [`BlobWriter::commit`].
/// Dropped without commit, it leaves nothing behind.
pub struct BlobWriter<'a> {
    blobs: &'a Blobs,
    file: NamedTempFile,
    hasher: Hasher,
}

impl BlobWriter<'_> {
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    pub fn commit(mut self, expect: Expect<'_>) -> Result<Ingested, ImageError> {
        let tmp = self.file.path().to_owned();
        self.file
            .flush()
            .and_then(|()| self.file.as_file().sync_all())
            .map_err(ImageError::io("cannot write", &tmp))?;
        let size = self.hasher.len();
        let digest = self.hasher.finish();
        if let Some(want) = expect.size
            && want != size
        {
            return Err(ImageError::SizeMismatch {
                what: expect.what,
                digest: expect.digest.cloned().unwrap_or(digest),
                expected: want,
                actual: size,
            });
        }
        if let Some(want) = expect.digest
            && *want != digest
        {
            return Err(ImageError::DigestMismatch {
                what: expect.what,
                expected: want.clone(),
                actual: digest,
            });
        }
        let target = self.blobs.path(&digest);
        if self.blobs.contains(&digest) {
            return Ok(Ingested {
                digest,
                size,
                created: false,
            });
        }
        match self.file.persist_noclobber(&target) {
            Ok(_) => {
                File::open(&self.blobs.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(ImageError::io("cannot sync", &self.blobs.dir))?;
                Ok(Ingested {
                    digest,
                    size,
                    created: true,
                })
            }
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(Ingested {
                digest,
                size,
                created: false,
            }),
            Err(e) => Err(ImageError::io("cannot store blob", target)(e.error)),
        }
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
