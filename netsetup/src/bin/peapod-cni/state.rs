//! The plugin's state on disk, in the network's own directory:
//!
//! - `lock`: held (flock, exclusive) for the whole of a command, so that the runtime's
//!   concurrent ADDs and DELs on one network take turns;
//! - `attachments/<key>.json`: one record per attachment that ADD completed, written whole
//!   (temporary file, fsync, rename) after the kernel side is made;
//! - `ipam/`: netsetup's lease files, one per address, naming the attachment that holds it.
//!
//! `<key>` is the sha256 of the container id and interface name, so any id the spec allows
//! makes a safe file name and the veth's host end gets a stable name from it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use netsetup::Attachment;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::conf::{AttachmentId, PortMapping};
use crate::error::CniError;

/// What ADD made for one attachment, enough for DEL, CHECK and GC to find all of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub id: AttachmentId,
    /// `CNI_NETNS` at ADD.
    pub netns: PathBuf,
    pub attachment: Attachment,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The result ADD printed, printed again for a repeated ADD.
    pub result: Value,
}

impl AttachmentId {
    /// Hex sha256 of `<container id> NUL <ifname>`.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.container_id.as_bytes());
        hasher.update([0]);
        hasher.update(self.ifname.as_bytes());
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The veth's host end: `pp` and 8 hex digits of the key, as netsetup names pod links.
    pub fn host_ifname(&self) -> String {
        format!("pp{}", &self.key()[..8])
    }

    /// The owner written in the lease file: `<container id>/<ifname>` (neither has a `/`).
    pub fn owner(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }

    /// The inverse of [`Self::owner`], for leases found on disk.
    pub fn from_owner(owner: &str) -> Option<AttachmentId> {
        let (container_id, ifname) = owner.rsplit_once('/')?;
        Some(AttachmentId {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }
}

/// The network's directory, locked.
pub struct State {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl State {
    /// Makes the directory if needed and waits for the lock.
    pub fn open(dir: &Path) -> Result<State, CniError> {
        let attachments = dir.join("attachments");
        fs::create_dir_all(&attachments).map_err(|source| CniError::State {
            action: "create",
            path: attachments.clone(),
            source,
        })?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| CniError::State {
                action: "open",
                path: lock_path.clone(),
                source,
            })?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| CniError::State {
                action: "lock",
                path: lock_path,
                source: errno.into(),
            })?;
        Ok(State {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    fn record_path(&self, id: &AttachmentId) -> PathBuf {
        self.dir
            .join("attachments")
            .join(format!("{}.json", id.key()))
    }

    pub fn load(&self, id: &AttachmentId) -> Result<Option<Record>, CniError> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(bytes) => decode(&path, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::State {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Every record, sorted by attachment.
    pub fn records(&self) -> Result<Vec<Record>, CniError> {
        let dir = self.dir.join("attachments");
        let list_error = |source| CniError::State {
            action: "list",
            path: dir.clone(),
            source,
        };
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).map_err(list_error)? {
            let path = entry.map_err(list_error)?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue; // a temporary file of an interrupted write
            }
            let bytes = fs::read(&path).map_err(|source| CniError::State {
                action: "read",
                path: path.clone(),
                source,
            })?;
            records.push(decode(&path, &bytes)?);
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Writes the record whole or not at all.
    pub fn store(&self, record: &Record) -> Result<(), CniError> {
        let path = self.record_path(&record.id);
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(record).map_err(io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(path.parent().expect("records are in a directory"))?.sync_all()
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            CniError::State {
                action: "write",
                path: path.clone(),
                source,
            }
        })
    }

    /// Removes the record; one already gone is no error.
    pub fn remove(&self, id: &AttachmentId) -> Result<(), CniError> {
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::State {
                action: "remove",
                path,
                source,
            }),
        }
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Record, CniError> {
    serde_json::from_slice(bytes).map_err(|source| CniError::Record {
        path: path.to_owned(),
        source,
    })
}
