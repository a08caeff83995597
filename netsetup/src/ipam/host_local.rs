//! The lease-file-per-address IPAM.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::{IpNet, Ipv4Net};

use super::{Ipam, IpamError, Release, pod_range_v4};
use crate::Lease;

/// Leases as files in one directory; see the [module docs](super).
///
/// Allocation goes round-robin: it starts after the address handed out last in that subnet
/// (kept in `last_reserved_ip.<network>_<prefix>`, e.g. `last_reserved_ip.10.88.0.0_16`) and
/// wraps around, so a released address is not reused at once. The lease files make it safe
/// across processes; a mutex per instance only keeps this process's threads from racing for
/// the same candidates.
pub struct HostLocal {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl HostLocal {
    pub fn new(dir: impl Into<PathBuf>) -> HostLocal {
        HostLocal {
            dir: dir.into(),
            lock: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lease_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn last_reserved_path(&self, subnet: Ipv4Net) -> PathBuf {
        self.dir.join(last_reserved_name(subnet))
    }

    fn last_reserved(&self, subnet: Ipv4Net) -> Option<u32> {
        let text = fs::read_to_string(self.last_reserved_path(subnet)).ok()?;
        let ip: Ipv4Addr = text.trim().parse().ok()?;
        Some(u32::from(ip))
    }

    /// Records the last address handed out, in place: padded to one fixed width, written at
    /// the start of the file in one write, so that no file is created after the first time
    /// (a file creation is the dearest step of an allocation on some disks). It is only a
    /// hint for where to start next time: failing to write it is not an error, and a torn
    /// one only means starting from the beginning of the range.
    fn set_last_reserved(&self, subnet: Ipv4Net, ip: Ipv4Addr) {
        use std::os::unix::fs::FileExt;
        let path = self.last_reserved_path(subnet);
        let line = format!("{:<width$}\n", ip.to_string(), width = HINT_LEN - 1);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .and_then(|f| {
                f.write_all_at(line.as_bytes(), 0)?;
                f.set_len(HINT_LEN as u64)
            });
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "cannot record the last reserved ip");
        }
    }

    /// Creates the lease file for `ip`; `Ok(false)` when someone already holds it.
    fn try_lease(&self, ip: IpAddr, owner: &str) -> Result<bool, IpamError> {
        let path = self.lease_path(ip);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path);
        let mut file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => return Err(IpamError::Write { path, source }),
        };
        if let Err(source) = file.write_all(format!("{owner}\n").as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(IpamError::Write { path, source });
        }
        Ok(true)
    }

    fn allocate_v4(&self, subnet: Ipv4Net, owner: &str) -> Result<IpAddr, IpamError> {
        let range = pod_range_v4(subnet);
        let (first, last) = (*range.start(), *range.end());
        let exhausted = IpamError::PoolExhausted {
            subnet: IpNet::V4(subnet),
        };
        if first > last {
            return Err(exhausted);
        }
        fs::create_dir_all(&self.dir).map_err(|source| IpamError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = match self.last_reserved(subnet) {
            Some(prev) if range.contains(&prev) && prev < last => prev + 1,
            _ => first,
        };
        let candidates = (start..=last).chain(first..start);
        for candidate in candidates {
            let ip = Ipv4Addr::from(candidate);
            if self.try_lease(IpAddr::V4(ip), owner)? {
                self.set_last_reserved(subnet, ip);
                return Ok(IpAddr::V4(ip));
            }
        }
        Err(exhausted)
    }

    fn read_owner(&self, path: &Path) -> Result<Option<String>, IpamError> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim_end().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IpamError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// The length of the last-reserved hint: the longest IPv4 address, padded, and a newline.
const HINT_LEN: usize = 16;

fn last_reserved_name(subnet: Ipv4Net) -> String {
    format!(
        "last_reserved_ip.{}_{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

fn check_owner(owner: &str) -> Result<(), IpamError> {
    if owner.is_empty() || owner.contains(['\n', '\0']) || owner.trim() != owner {
        return Err(IpamError::InvalidOwner {
            owner: owner.to_owned(),
        });
    }
    Ok(())
}

impl Ipam for HostLocal {
    fn allocate(&self, subnet: IpNet, owner: &str) -> Result<IpAddr, IpamError> {
        check_owner(owner)?;
        match subnet.trunc() {
            IpNet::V4(v4) => self.allocate_v4(v4, owner),
            IpNet::V6(_) => Err(IpamError::Ipv6Unsupported { subnet }),
        }
    }

    fn release(&self, ip: IpAddr, owner: &str) -> Result<Release, IpamError> {
        let path = self.lease_path(ip);
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.read_owner(&path)? {
            None => return Ok(Release::NotLeased),
            Some(holder) if holder != owner => return Ok(Release::HeldByOther { owner: holder }),
            Some(_) => {}
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(Release::Released),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Release::NotLeased),
            Err(source) => Err(IpamError::Remove { path, source }),
        }
    }

    fn release_owner(&self, owner: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut freed = Vec::new();
        for lease in self.leases()? {
            if lease.owner == owner && self.release(lease.ip, owner)? == Release::Released {
                freed.push(lease.ip);
            }
        }
        Ok(freed)
    }

    fn leases(&self) -> Result<Vec<Lease>, IpamError> {
        let list_error = |source| IpamError::List {
            path: self.dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(list_error(e)),
        };
        let mut leases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(list_error)?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(owner) = self.read_owner(&entry.path())? {
                leases.push(Lease { ip, owner });
            }
        }
        Ok(leases)
    }
}
