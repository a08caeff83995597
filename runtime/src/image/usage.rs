//! How much the store takes on its filesystem (for ImageFsInfo).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::ImageStore;
use super::error::ImageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes allocated on disk (hardlinked files counted once).
    pub used_bytes: u64,
    pub inodes_used: u64,
}

impl FsUsage {
    /// One more inode of `blocks` 512-byte blocks; `None` on overflow.
    fn add(self, blocks: u64) -> Option<FsUsage> {
        Some(FsUsage {
            used_bytes: self.used_bytes.checked_add(blocks.checked_mul(512)?)?,
            inodes_used: self.inodes_used.checked_add(1)?,
        })
    }
}

impl ImageStore {
    /// The disk space and inodes the store's directory tree takes. Symlinks are not followed.
    pub fn usage(&self) -> Result<FsUsage, ImageError> {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut used = FsUsage {
            used_bytes: 0,
            inodes_used: 0,
        };
        let mut stack: Vec<PathBuf> = vec![self.root.clone()];
        while let Some(p) = stack.pop() {
            let m = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                // Removed while we walk (a pull or removal in flight): not ours to count.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io("cannot inspect", p)(e)),
            };
            if !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            used = used
                .add(m.blocks())
                .ok_or_else(|| ImageError::SizeOverflow {
                    what: format!("the files under {}", self.root.display()),
                })?;
            if m.is_dir() {
                match fs::read_dir(&p) {
                    Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ImageError::io("cannot list", p)(e)),
                }
            }
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_up_or_overflow_is_none() {
        let zero = FsUsage {
            used_bytes: 0,
            inodes_used: 0,
        };
        let one = zero.add(8).unwrap();
        assert_eq!(
            one,
            FsUsage {
                used_bytes: 4096,
                inodes_used: 1
            }
        );
        assert_eq!(zero.add(u64::MAX / 512 + 1), None);
        let full = FsUsage {
            used_bytes: u64::MAX - 511,
            inodes_used: 1,
        };
        assert_eq!(full.add(1), None);
        assert!(full.add(0).is_some());
    }
}
