//! Unpacked layers, one per chain id and shared by every image that has it:
//! `layers/<chain hex>/fs/` (an overlayfs lower dir) and `layer.json` beside it. A layer is
//! unpacked into scratch space, its diff id checked, synced, then renamed into place.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::blobs::list_hex_names;
use super::digest::{Digest, HashingReader};
use super::error::ImageError;
use super::scratch::Scratch;
use super::unpack::{self, UnpackStats};

pub struct Layers {
    dir: PathBuf,
}

/// `layer.json`: what a layer dir holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct LayerMeta {
    pub chain_id: Digest,
    pub diff_id: Digest,
    /// The blob it was unpacked from.
    pub blob: Digest,
    pub entries: u64,
    pub bytes: u64,
}

impl Layers {
    pub fn open(dir: PathBuf) -> Result<Layers, ImageError> {
        fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
        Ok(Layers { dir })
    }

    pub fn dir(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex())
    }

    /// The unpacked content: an overlayfs lower dir.
    pub fn fs_path(&self, chain_id: &Digest) -> PathBuf {
        self.dir(chain_id).join("fs")
    }

    pub fn contains(&self, chain_id: &Digest) -> bool {
        self.dir(chain_id).join("layer.json").is_file()
    }

    pub fn list(&self) -> Vec<Digest> {
        list_hex_names(&self.dir)
    }

    /// Unpacks `blob` (gzip, zstd or plain tar, told by its first bytes) as layer `chain_id`
    /// unless it is there already; the uncompressed content must have digest `diff_id`.
    /// Returns whether it was created.
    pub fn unpack(
        &self,
        scratch: &Scratch,
        blob: &Digest,
        file: File,
        chain_id: &Digest,
        diff_id: &Digest,
    ) -> Result<bool, ImageError> {
        if self.contains(chain_id) {
            return Ok(false);
        }
        let tmp = scratch.tempdir()?;
        let fs_dir = tmp.path().join("fs");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&fs_dir)
            .map_err(ImageError::io("cannot create", &fs_dir))?;
        let unpack_err = |source| ImageError::Unpack {
            layer: blob.clone(),
            source,
        };
        let mut hashing = HashingReader::new(
            decompressed(BufReader::new(file))
                .map_err(|e| unpack_err(unpack::UnpackError::Read(e)))?,
        );
        let stats: UnpackStats = unpack::unpack(&mut hashing, &fs_dir).map_err(unpack_err)?;
        let (actual, _) = hashing
            .finish()
            .map_err(|e| unpack_err(unpack::UnpackError::Read(e)))?;
        if actual != *diff_id {
            return Err(ImageError::DiffIdMismatch {
                blob: blob.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
        let meta = LayerMeta {
            chain_id: chain_id.clone(),
            diff_id: diff_id.clone(),
            blob: blob.clone(),
            entries: stats.entries,
            bytes: stats.bytes,
        };
        crate::store::write_json(&tmp.path().join("layer.json"), &meta)?;
        // Everything unpacked reaches the disk before the layer becomes visible.
        let dir = File::open(tmp.path()).map_err(ImageError::io("cannot open", tmp.path()))?;
        nix::unistd::syncfs(&dir)
            .map_err(|e| ImageError::io("cannot sync", tmp.path())(e.into()))?;
        let target = self.dir(chain_id);
        let src = tmp.keep();
        match fs::rename(&src, &target) {
            Ok(()) => {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(ImageError::io("cannot sync", &self.dir))?;
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                scratch.remove_tree(&src)?; // unpacked meanwhile by another pull
                Ok(false)
            }
            Err(e) => {
                let _ = scratch.remove_tree(&src);
                Err(ImageError::io("cannot move a layer to", target)(e))
            }
        }
    }

    pub fn remove(&self, scratch: &Scratch, chain_id: &Digest) -> Result<(), ImageError> {
        scratch.remove_tree(&self.dir(chain_id))
    }
}

/// A reader of the tar inside `r`: gunzipped, un-zstd'd, or as is.
pub(super) fn decompressed<'a>(mut r: impl BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}
