//! Who the container runs as: `run_as_user` / `run_as_username` / `run_as_group` or the
//! image's `User`, names resolved against the image's `/etc/passwd` and `/etc/group`, plus the
//! groups the user is a member of (unless the policy is Strict) and the request's supplemental
//! groups. The groups list starts with the primary group.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    NoSuchUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    NoSuchGroup(String),
    #[error("id {0} is out of range")]
    Range(i64),
}

/// What the request asks for.
#[derive(Debug, Default)]
pub struct UserReq<'a> {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: &'a str,
    pub supplemental_groups: &'a [i64],
    /// SupplementalGroupsPolicy Strict: no groups from the image's `/etc/group`.
    pub strict: bool,
    /// The image config's `User`: `name`, `uid`, `name:group`, `uid:gid`, or empty.
    pub image_user: &'a str,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some(Passwd {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
        })
    })
}

/// (name, gid, members)
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

fn id(v: i64) -> Result<u32, UserError> {
    u32::try_from(v).map_err(|_| UserError::Range(v))
}

/// Resolves the user from the request, the image's user and the image's passwd/group files.
pub fn resolve(req: &UserReq<'_>, passwd: &str, group: &str) -> Result<User, UserError> {
    let by_name = |n: &str| passwd_entries(passwd).find(|p| p.name == n);
    let by_uid = |u: u32| passwd_entries(passwd).find(|p| p.uid == u);
    let (mut user_part, mut group_part) = (String::new(), None::<String>);
    if !req.run_as_username.is_empty() {
        user_part = req.run_as_username.to_owned();
    } else if let Some(u) = req.run_as_user {
        user_part = id(u)?.to_string();
    } else if !req.image_user.is_empty() {
        let (u, g) = match req.image_user.split_once(':') {
            Some((u, g)) => (u, Some(g.to_owned())),
            None => (req.image_user, None),
        };
        user_part = u.to_owned();
        group_part = g;
    }
    let (uid, mut gid, name) = if user_part.is_empty() {
        (0, 0, by_uid(0).map(|p| p.name.to_owned()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let e = by_uid(uid);
        (
            uid,
            e.as_ref().map_or(0, |p| p.gid),
            e.map(|p| p.name.to_owned()),
        )
    } else {
        let e = by_name(&user_part).ok_or_else(|| UserError::NoSuchUser(user_part.clone()))?;
        (e.uid, e.gid, Some(e.name.to_owned()))
    };
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or(UserError::NoSuchGroup(g))?,
        };
    }
    if let Some(g) = req.run_as_group {
        gid = id(g)?;
    }
    // The primary group is a supplementary one too (as containerd and runc have it since
    // CVE-2023-25173: otherwise a process could shed it with setgroups-free tricks).
    let mut groups: Vec<u32> = vec![gid];
    if let Some(name) = name.as_ref().filter(|_| !req.strict) {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name.as_str()) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    for &g in req.supplemental_groups {
        let g = id(g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(User { uid, gid, groups })
}

/// What a layer holds at a path, looked up without following any symlink.
enum InLayer {
    File(std::fs::File),
    /// Something else, or a symlink on the way: the image's file is not plainly there.
    Other,
    Missing,
}

/// `rel` in the layer dir `layer`, resolved beneath it with no symlink followed
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`): a layer's `/etc -> /node/dir` must not
/// make the daemon read (or probe) the node's files.
fn in_layer(layer: &Path, rel: &Path) -> InLayer {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let Ok(dir) = nix::fcntl::open(
        layer,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return InLayer::Missing;
    };
    // O_NONBLOCK: a FIFO in a layer must not block the daemon (it is refused below).
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(&dir, rel, how) {
        Ok(fd) => {
            let file = std::fs::File::from(fd);
            match file.metadata() {
                Ok(m) if m.is_file() => InLayer::File(file),
                _ => InLayer::Other,
            }
        }
        Err(nix::errno::Errno::ENOENT) => InLayer::Missing,
        Err(_) => InLayer::Other,
    }
}

/// Reads `rel` (e.g. `etc/passwd`) from the topmost layer that has it; empty if none does,
/// a layer whites it out, or the topmost layer that has it holds no plain file there (a
/// symlink on the way is not followed: it could lead onto the node).
pub fn read_from_layers(layers: &[PathBuf], rel: &str) -> String {
    use std::io::Read;
    let rel = Path::new(rel);
    let whiteout = rel
        .file_name()
        .map(|n| format!(".wh.{}", n.to_string_lossy()))
        .unwrap_or_default();
    for layer in layers.iter().rev() {
        match in_layer(layer, rel) {
            InLayer::File(mut f) => {
                let mut text = String::new();
                return match f.read_to_string(&mut text) {
                    Ok(_) => text,
                    Err(_) => String::new(),
                };
            }
            InLayer::Other => return String::new(),
            InLayer::Missing => {}
        }
        if let Some(parent) = rel.parent()
            && !matches!(in_layer(layer, &parent.join(&whiteout)), InLayer::Missing)
        {
            return String::new();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/:/bin/false\n\
                          app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,root\nstaff:x:50:app\napp:x:1000:\n";

    fn r(req: UserReq<'_>) -> Result<User, UserError> {
        resolve(&req, PASSWD, GROUP)
    }

    #[test]
    fn defaults_to_root_with_roots_groups() {
        let u = r(UserReq::default()).unwrap();
        assert_eq!((u.uid, u.gid, u.groups), (0, 0, vec![0, 10]));
    }

    #[test]
    fn username_and_member_groups() {
        let u = r(UserReq {
            run_as_username: "app",
            supplemental_groups: &[2000, 50],
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 10, 50, 2000]);
    }

    /// The API's example: runAsUser 1000, runAsGroup 3000, supplementalGroups 4000, and the
    /// image's /etc/group lists the user in 50000.
    #[test]
    fn merge_adds_the_images_groups_and_strict_does_not() {
        let group = "app:x:1000:\nextra:x:50000:app\n";
        let req = |strict| UserReq {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: &[4000],
            strict,
            ..Default::default()
        };
        let merged = resolve(&req(false), PASSWD, group).unwrap();
        assert_eq!((merged.gid, merged.groups), (3000, vec![3000, 50000, 4000]));
        let strict = resolve(&req(true), PASSWD, group).unwrap();
        assert_eq!((strict.gid, strict.groups), (3000, vec![3000, 4000]));
    }

    #[test]
    fn uid_without_entry_gets_gid_0_and_run_as_group_wins() {
        let u = r(UserReq {
            run_as_user: Some(4242),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        let u = r(UserReq {
            run_as_user: Some(1000),
            run_as_group: Some(7),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
    }

    #[test]
    fn image_user_forms() {
        let img = |s| {
            r(UserReq {
                image_user: s,
                ..Default::default()
            })
        };
        assert_eq!(img("app:staff").unwrap().gid, 50);
        assert_eq!(img("1:5").unwrap().gid, 5);
        assert_eq!(img("daemon").unwrap().uid, 1);
        assert_eq!(img("nobody"), Err(UserError::NoSuchUser("nobody".into())));
        assert_eq!(
            img("app:nogroup"),
            Err(UserError::NoSuchGroup("nogroup".into()))
        );
        assert_eq!(
            r(UserReq {
                run_as_user: Some(-1),
                ..Default::default()
            }),
            Err(UserError::Range(-1))
        );
    }

    #[test]
    fn reads_the_topmost_layer() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("etc")).unwrap();
        std::fs::create_dir_all(b.join("etc")).unwrap();
        std::fs::write(a.join("etc/passwd"), "old").unwrap();
        assert_eq!(
            read_from_layers(&[a.clone(), b.clone()], "etc/passwd"),
            "old"
        );
        std::fs::write(b.join("etc/passwd"), "new").unwrap();
        assert_eq!(
            read_from_layers(&[a.clone(), b.clone()], "etc/passwd"),
            "new"
        );
        std::fs::remove_file(b.join("etc/passwd")).unwrap();
        std::fs::write(b.join("etc/.wh.passwd"), "").unwrap();
        assert_eq!(read_from_layers(&[a, b], "etc/passwd"), "");
    }

    #[test]
    fn symlinks_in_a_layer_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let node = tempfile::tempdir().unwrap();
        std::fs::write(
            node.path().join("passwd"),
            "hostonlyuser:x:4242:4242::/:/bin/sh\n",
        )
        .unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("etc")).unwrap();
        std::fs::write(a.join("etc/passwd"), "old").unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // The top layer's /etc leads onto the node: neither the node's nor the lower
        // layer's passwd.
        std::os::unix::fs::symlink(node.path(), b.join("etc")).unwrap();
        assert_eq!(read_from_layers(&[a.clone(), b.clone()], "etc/passwd"), "");
        // The file itself a symlink.
        std::fs::remove_file(b.join("etc")).unwrap();
        std::fs::create_dir_all(b.join("etc")).unwrap();
        std::os::unix::fs::symlink(node.path().join("passwd"), b.join("etc/passwd")).unwrap();
        assert_eq!(read_from_layers(&[a.clone(), b.clone()], "etc/passwd"), "");
        // A FIFO does not block.
        std::fs::remove_file(b.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&b.join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_from_layers(&[a, b], "etc/passwd"), "");
    }
}
