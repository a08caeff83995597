use std::fs;
use std::os::unix::fs::symlink;

use super::*;

fn target(fd: &OwnedFd) -> PathBuf {
    fs::read_link(fd_path(fd)).unwrap()
}

fn root() -> (tempfile::TempDir, Root) {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("etc")).unwrap();
    fs::write(t.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    let r = Root::open(t.path()).unwrap();
    (t, r)
}

#[test]
fn absolute_links_and_dotdot_stay_inside() {
    let (t, r) = root();
    let base = t.path().canonicalize().unwrap();
    symlink("/etc", t.path().join("abs")).unwrap();
    symlink("../../..", t.path().join("etc/up")).unwrap();
    let fd = r.lookup(Path::new("/abs/passwd")).unwrap().unwrap();
    assert_eq!(target(&fd), base.join("etc/passwd"));
    let fd = r.mkdir_all(Path::new("/etc/up/x")).unwrap();
    assert_eq!(target(&fd), base.join("x"));
    let fd = r.mkdir_all(Path::new("/../../tmp")).unwrap();
    assert_eq!(target(&fd), base.join("tmp"));
    // An absolute link to a path that exists on the node, not in the root.
    let node = tempfile::tempdir().unwrap();
    symlink(node.path(), t.path().join("out")).unwrap();
    let fd = r.mkdir_all(Path::new("/out/new/dir")).unwrap();
    let inside = base.join(node.path().strip_prefix("/").unwrap());
    assert_eq!(target(&fd), inside.join("new/dir"));
    assert_eq!(fs::read_dir(node.path()).unwrap().count(), 0);
}

#[test]
fn loops_and_long_chains_are_refused() {
    let (t, r) = root();
    symlink("loop", t.path().join("loop")).unwrap();
    let e = r.mkdir_all(Path::new("/loop/x")).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ELOOP), "{e}");
    // 45 hops, then a node directory: refused, and nothing made on the node.
    let node = tempfile::tempdir().unwrap();
    for i in 0..45 {
        symlink(format!("/l{}", i + 1), t.path().join(format!("l{i}"))).unwrap();
    }
    symlink(node.path(), t.path().join("l45")).unwrap();
    let e = r.mkdir_all(Path::new("/l0/pwned/sub")).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ELOOP), "{e}");
    let e = r.create_file(Path::new("/l0/hosts")).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ELOOP), "{e}");
    assert_eq!(fs::read_dir(node.path()).unwrap().count(), 0);
}

#[test]
fn magic_links_are_refused() {
    let r = Root::open(Path::new("/")).unwrap();
    // /proc/self is a plain symlink; /proc/self/fd/N and /proc/self/root are magic.
    assert!(r.lookup(Path::new("/proc/self/status")).unwrap().is_some());
    for p in ["/proc/self/fd/0", "/proc/self/root/etc", "/proc/self/cwd"] {
        let e = r.lookup(Path::new(p)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ELOOP), "{p}: {e}");
    }
}

#[test]
fn dangling_links_are_followed_inside() {
    let (t, r) = root();
    let base = t.path().canonicalize().unwrap();
    symlink("/nowhere/deeper", t.path().join("d")).unwrap();
    let fd = r.mkdir_all(Path::new("/d/x")).unwrap();
    assert_eq!(target(&fd), base.join("nowhere/deeper/x"));
    symlink("../run/stub.conf", t.path().join("etc/resolv.conf")).unwrap();
    let fd = r.create_file(Path::new("/etc/resolv.conf")).unwrap();
    assert_eq!(target(&fd), base.join("run/stub.conf"));
    // A loop of dangling links ends.
    symlink("/m1/x", t.path().join("m0")).unwrap();
    symlink("/m0/x", t.path().join("m1")).unwrap();
    assert!(r.mkdir_all(Path::new("/m0")).is_err());
    assert!(r.create_file(Path::new("/m0")).is_err());
}

#[test]
fn files_are_made_under_their_parent() {
    let (t, r) = root();
    let base = t.path().canonicalize().unwrap();
    let fd = r.create_file(Path::new("/a/b/hosts")).unwrap();
    assert_eq!(target(&fd), base.join("a/b/hosts"));
    assert!(t.path().join("a/b/hosts").is_file());
    // An existing file is kept as it is.
    let fd = r.create_file(Path::new("/etc/passwd")).unwrap();
    assert_eq!(target(&fd), base.join("etc/passwd"));
    assert_eq!(
        fs::read_to_string(t.path().join("etc/passwd"))
            .unwrap()
            .len(),
        22
    );
    assert!(r.create_file(Path::new("/nodir/..")).is_err());
}
