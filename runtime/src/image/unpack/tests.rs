//! The unpacker against tars built here, hostile ones included. Needs root (devices,
//! ownership, trusted xattrs): run as root, e.g. with `hack/test.sh`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::*;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the unpacker tests need root (device nodes, ownership, trusted xattrs)"
    );
}

/// Builds tars entry by entry, writing names raw so that hostile ones get through.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, name: &str, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_size(0);
        let raw = &mut h.as_old_mut().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn add(mut self, mut h: tar::Header, data: &[u8]) -> Tar {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &str) -> Tar {
        let h = Tar::header(EntryType::Regular, name, 0o644);
        self.add(h, data.as_bytes())
    }

    fn dir(self, name: &str) -> Tar {
        let h = Tar::header(EntryType::Directory, name, 0o755);
        self.add(h, b"")
    }

    fn link(self, kind: EntryType, name: &str, target: &str) -> Tar {
        let mut h = Tar::header(kind, name, 0o777);
        let raw = &mut h.as_old_mut().linkname;
        raw.fill(0);
        raw[..target.len()].copy_from_slice(target.as_bytes());
        self.add(h, b"")
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn unpack_into(tar: Tar, root: &Path) -> Result<UnpackStats, UnpackError> {
    unpack(&tar.bytes()[..], root)
}

#[test]
fn unpacks_every_kind_with_its_metadata() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fs");
    fs::create_dir(&root).unwrap();
    let mut owned = Tar::header(EntryType::Regular, "etc/secret", 0o4750);
    owned.set_uid(1000);
    owned.set_gid(2000);
    let mut dev = Tar::header(EntryType::Char, "dev/null", 0o666);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    let mut b = Tar::new()
        .dir("./")
        .dir("etc")
        .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .add(owned, b"s3cret")
        .link(EntryType::Symlink, "bin/sh", "/bin/busybox")
        .link(EntryType::Link, "etc/passwd-", "etc/passwd")
        .add(dev, b"")
        .add(Tar::header(EntryType::Fifo, "run/fifo", 0o600), b"");
    // An xattr through a PAX record, as `tar --xattrs` writes it.
    b.0.append_pax_extensions([("SCHILY.xattr.user.note", &b"hi"[..])])
        .unwrap();
    let stats = unpack_into(b.file("etc/noted", "x"), &root).unwrap();
    assert_eq!(stats.entries, 8, "the root entry is not counted");
    assert_eq!(stats.bytes, 26 + 6 + 1);

    let passwd = root.join("etc/passwd");
    assert_eq!(
        fs::read_to_string(&passwd).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    let m = fs::metadata(&passwd).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o644);
    assert_eq!(m.mtime(), 1_000_000);
    assert_eq!(m.nlink(), 2, "the hardlink shares the inode");
    let s = fs::metadata(root.join("etc/secret")).unwrap();
    assert_eq!((s.uid(), s.gid(), s.mode() & 0o7777), (1000, 2000, 0o4750));
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let d = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(d.file_type().is_char_device());
    assert_eq!(d.rdev(), makedev(1, 3));
    assert!(
        fs::symlink_metadata(root.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(fs::metadata(root.join("etc")).unwrap().mtime(), 1_000_000);
    assert_eq!(
        lget(&root.join("etc/noted"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"hi"[..])
    );
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let b = Tar::new()
        .file("etc/.wh.motd", "")
        .dir("var/cache")
        .file("var/cache/.wh..wh..opq", "")
        .file("var/cache/kept", "new")
        .file("a/.wh..wh.plnk", "");
    unpack_into(b, root).unwrap();
    let w = fs::symlink_metadata(root.join("etc/motd")).unwrap();
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert!(!root.join("etc/.wh.motd").exists());
    assert_eq!(
        lget(&root.join("var/cache"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!root.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(
        fs::read_to_string(root.join("var/cache/kept")).unwrap(),
        "new"
    );
    assert!(!root.join("a/.wh..wh.plnk").exists());
}

/// Unpacks `tar` into `<tmp>/layer` and checks that nothing appeared beside it.
fn hostile(tar: Tar) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layer");
    fs::create_dir(&root).unwrap();
    fs::create_dir(dir.path().join("outside")).unwrap();
    fs::write(dir.path().join("outside/target"), "untouched").unwrap();
    let r = unpack_into(tar, &root);
    let beside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        beside.len(),
        2,
        "something was written beside the layer: {beside:?}"
    );
    let outside: Vec<_> = fs::read_dir(dir.path().join("outside")).unwrap().collect();
    assert_eq!(outside.len(), 1, "something was written outside the layer");
    assert_eq!(
        fs::read_to_string(dir.path().join("outside/target")).unwrap(),
        "untouched"
    );
    (dir, r)
}

fn assert_refused(r: Result<UnpackStats, UnpackError>, why: &str) {
    match r {
        Err(UnpackError::Refused { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

#[test]
fn dot_dot_is_refused() {
    for name in [
        "../evil",
        "a/../../evil",
        "./../outside/target",
        "a/b/../../..",
    ] {
        let (_d, r) = hostile(Tar::new().file(name, "pwned"));
        assert_refused(r, "\"..\"");
    }
}

#[test]
fn absolute_names_stay_inside() {
    let (d, r) = hostile(Tar::new().file("/abs/file", "inside"));
    r.unwrap();
    assert_eq!(
        fs::read_to_string(d.path().join("layer/abs/file")).unwrap(),
        "inside"
    );
}

#[test]
fn symlinked_parents_are_refused() {
    for target in ["../outside", "/tmp", "."] {
        let b = Tar::new()
            .link(EntryType::Symlink, "link", target)
            .file("link/target", "pwned");
        let (_d, r) = hostile(b);
        assert_refused(r, "symlink");
    }
    // Through a nested symlinked dir, and for a whiteout too.
    let b = Tar::new()
        .dir("a")
        .link(EntryType::Symlink, "a/b", "../../outside")
        .file("a/b/.wh.target", "");
    let (_d, r) = hostile(b);
    assert_refused(r, "symlink");
}

#[test]
fn a_later_entry_replaces_a_symlink_instead_of_following_it() {
    let b = Tar::new()
        .link(EntryType::Symlink, "x", "../outside/target")
        .file("x", "replaced");
    let (d, r) = hostile(b);
    r.unwrap();
    let x = d.path().join("layer/x");
    assert!(fs::symlink_metadata(&x).unwrap().is_file());
    assert_eq!(fs::read_to_string(x).unwrap(), "replaced");
}

#[test]
fn hardlinks_must_stay_in_the_layer() {
    let (_d, r) = hostile(Tar::new().link(EntryType::Link, "l", "../outside/target"));
    assert_refused(r, "\"..\"");
    for target in ["/etc/passwd", "missing"] {
        let (_d, r) = hostile(Tar::new().link(EntryType::Link, "l", target));
        assert_refused(r, "outside this layer");
    }
    let b = Tar::new().link(EntryType::Symlink, "s", "../outside").link(
        EntryType::Link,
        "l",
        "s/target",
    );
    let (_d, r) = hostile(b);
    assert_refused(r, "symlink");
    let (_d, r) = hostile(Tar::new().dir("d").link(EntryType::Link, "l", "d"));
    assert_refused(r, "directory");
}

#[test]
fn whiteouts_cannot_name_dot_or_dot_dot() {
    for name in ["a/.wh..", "a/.wh...", "a/.wh."] {
        let (_d, r) = hostile(Tar::new().dir("a").file(name, ""));
        assert_refused(r, "no single name");
    }
}

#[test]
fn layers_cannot_forge_overlay_xattrs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut b = Tar::new();
    b.0.append_pax_extensions([("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])])
        .unwrap();
    unpack_into(b.dir("d"), dir.path()).unwrap();
    assert_eq!(lget(&dir.path().join("d"), OPAQUE_XATTR).unwrap(), None);
}

/// Fuzzing by property: layers of random, often hostile entries (`..`, absolute names,
/// symlinks and hardlinks pointing out, whiteouts, entries through symlinked parents), and
/// truncated archives. Unpacking may refuse them, but never panics and never writes outside
/// its layer: a sibling directory and the parent stay exactly as they were.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const OUTSIDE: &str = "@OUTSIDE@";

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(".wh.a".to_owned()),
            Just(".wh..wh..opq".to_owned()),
            Just("link".to_owned()),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        (any::<bool>(), proptest::collection::vec(component(), 1..4)).prop_map(|(abs, parts)| {
            let joined = parts.join("/");
            if abs { format!("/{joined}") } else { joined }
        })
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            name(),
            Just(OUTSIDE.to_owned()),
            Just(format!("{OUTSIDE}/sentinel")),
            Just("../../..".to_owned()),
            Just("/".to_owned()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Entry {
        File(String),
        Dir(String),
        Symlink(String, String),
        Hardlink(String, String),
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            name().prop_map(Entry::File),
            name().prop_map(Entry::Dir),
            (name(), target()).prop_map(|(n, t)| Entry::Symlink(n, t)),
            (name(), target()).prop_map(|(n, t)| Entry::Hardlink(n, t)),
        ]
    }

    /// Every path below `dir`, with file contents, for before/after comparison.
    fn snapshot(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let meta = fs::symlink_metadata(&p).unwrap();
                let data = meta.is_file().then(|| fs::read(&p).unwrap());
                if meta.is_dir() {
                    stack.push(p.clone());
                }
                out.push((p.display().to_string(), data));
            }
        }
        out.sort();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn hostile_layers_never_escape(entries in proptest::collection::vec(entry(), 1..12),
                                       cut in proptest::option::of(0usize..4096)) {
            require_root();
            let dir = tempfile::tempdir().unwrap();
            let outside = dir.path().join("outside");
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("sentinel"), "untouched").unwrap();
            let root = dir.path().join("layer");
            fs::create_dir(&root).unwrap();
            let parent_before = snapshot(dir.path());
            let outside_before = snapshot(&outside);

            let real = |t: &str| t.replace(OUTSIDE, &outside.display().to_string());
            let mut tar = Tar::new();
            for e in &entries {
                tar = match e {
                    // Names longer than the old header's 100 bytes are not what is tested.
                    Entry::File(n) if n.len() < 100 => tar.file(n, "payload"),
                    Entry::Dir(n) if n.len() < 100 => tar.dir(n),
                    Entry::Symlink(n, t) if n.len() < 100 && real(t).len() < 100 => {
                        tar.link(EntryType::Symlink, n, &real(t))
                    }
                    Entry::Hardlink(n, t) if n.len() < 100 && real(t).len() < 100 => {
                        tar.link(EntryType::Link, n, &real(t))
                    }
                    _ => tar,
                };
            }
            // Then write through whatever the links made, the classic escape.
            tar = tar.file("link/escaped", "payload").file("a/link/escaped", "payload");
            let mut bytes = tar.bytes();
            if let Some(cut) = cut {
                bytes.truncate(cut.min(bytes.len()));
            }
            let _ = unpack(&bytes[..], &root);

            prop_assert_eq!(snapshot(&outside), outside_before);
            // Nothing new beside the layer: everything else under the parent is unchanged.
            let parent_after: Vec<_> = snapshot(dir.path())
                .into_iter()
                .filter(|(p, _)| !p.starts_with(&root.display().to_string()))
                .collect();
            let parent_before: Vec<_> = parent_before
                .into_iter()
                .filter(|(p, _)| !p.starts_with(&root.display().to_string()))
                .collect();
            prop_assert_eq!(parent_after, parent_before);
        }
    }
}
