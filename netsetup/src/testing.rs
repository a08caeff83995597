//! Helpers of the privileged unit tests.

use std::io::Write as _;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, unshare};

/// True when the privileged tests can run (as root); fails them loudly when not, unless
/// PEAPOD_SKIP_PRIVILEGED=1. `what` names the tests in the message.
pub fn privileged(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("PEAPOD_SKIP_PRIVILEGED").as_deref() == Ok("1"),
        "{what} need root: they unshare a network namespace \
         (set PEAPOD_SKIP_PRIVILEGED=1 to skip them)"
    );
    eprintln!("not root and PEAPOD_SKIP_PRIVILEGED=1: skipping");
    false
}

/// Runs `f` on a thread of its own in a new network namespace (gone when the thread ends);
/// children it spawns inherit the namespace.
pub fn in_netns(what: &str, f: impl FnOnce() + Send) {
    if !privileged(what) {
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
            f();
        })
        .join()
        .expect("the test thread passed");
    });
}

/// Runs `nft -f -` with `ruleset`; panics if nft refuses it.
pub fn nft(ruleset: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -f - refused:\n{ruleset}"
    );
}
