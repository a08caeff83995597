//! Per-process scratch space under `images/tmp/`: temp files and dirs on the store's
//! filesystem, so that finished content is renamed into place. Each process owns one session
//! dir, held by a lock file; a session whose lock nobody holds is a dead process's, and is
//! swept when a store is opened.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use tempfile::{NamedTempFile, TempDir};

use super::error::ImageError;

pub struct Scratch {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Scratch {
    /// Sweeps dead sessions under `root` and starts this process's own.
    pub fn open(root: &Path) -> Result<Scratch, ImageError> {
        fs::create_dir_all(root).map_err(ImageError::io("cannot create", root))?;
        sweep(root);
        loop {
            let name = random_name();
            let lock_path = root.join(format!("{name}.lock"));
            let f = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lock_path)
            {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => other.map_err(ImageError::io("cannot create", &lock_path))?,
            };
            let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
                continue; // a sweeper got it first and is removing it
            };
            // A sweeper may have taken and unlinked it between create and lock.
            let same = fs::metadata(&lock_path)
                .ok()
                .zip(lock.metadata().ok())
                .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
            if !same {
                continue;
            }
            let dir = root.join(&name);
            fs::create_dir(&dir).map_err(ImageError::io("cannot create", &dir))?;
            return Ok(Scratch { dir, _lock: lock });
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self) -> Result<NamedTempFile, ImageError> {
        NamedTempFile::new_in(&self.dir)
            .map_err(ImageError::io("cannot create a temp file in", &self.dir))
    }

    pub fn tempdir(&self) -> Result<TempDir, ImageError> {
        tempfile::Builder::new()
            .tempdir_in(&self.dir)
            .map_err(ImageError::io("cannot create a temp dir in", &self.dir))
    }

    /// Moves `path` into the scratch dir (so it vanishes atomically), then deletes it.
    pub fn remove_tree(&self, path: &Path) -> Result<(), ImageError> {
        let grave = self.dir.join(format!("gone-{}", random_name()));
        match fs::rename(path, &grave) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(ImageError::io("cannot remove", path))?,
        }
        fs::remove_dir_all(&grave).map_err(ImageError::io("cannot remove", grave))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(self.dir.with_extension("lock"));
    }
}

fn random_name() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("kernel randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Removes the session dirs whose lock nobody holds.
fn sweep(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "lock") {
            if !path.with_extension("lock").exists() {
                // A session dir without its lock: left by a crash between the two removals.
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        if let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            let _ = fs::remove_dir_all(path.with_extension(""));
            let _ = fs::remove_file(&path);
            tracing::debug!(session = %path.display(), "swept a dead process's scratch space");
        }
    }
}
