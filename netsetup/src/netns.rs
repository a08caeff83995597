//! Running code inside other namespaces, on a throwaway thread.
//!
//! `setns` changes the namespaces of the calling thread only. Doing it on a pooled thread (a
//! tokio worker, a rayon thread) would leave that thread in the pod's namespace for whatever
//! runs on it next, so here every call gets a fresh OS thread that joins the namespaces, runs
//! the closure and ends. Sockets (netlink included) opened on that thread stay bound to the
//! namespace they were opened in, and may be returned and used from any thread.
//!
//! Only namespaces that a single thread of a multithreaded process may join work here: net,
//! ipc and uts. Mount and user namespaces refuse threads that share their filesystem
//! attributes, and a pid namespace applies to children only.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;

use nix::sched::{CloneFlags, setns};

/// Run `f` on a fresh OS thread that has joined the network namespace at `netns` (and,
/// when given, other namespaces via further setns calls inside `f`); the thread ends after.
///
/// `netns` is a file naming a namespace: a bind-mounted pin like `/run/netns/peapod-<id>` or a
/// `/proc/<pid>/task/<tid>/ns/net` link. A panic in `f` is carried over to the caller.
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    run_in_namespaces(&[(netns, CloneFlags::CLONE_NEWNET)], f)
}

/// Like [`run_in`], for several namespaces at once: each `(path, kind)` is opened and joined,
/// in order, before `f` runs, e.g. `[(net_pin, CLONE_NEWNET), (ipc_pin, CLONE_NEWIPC)]` to write
/// a pod's sysctls. All files are opened before any is joined, so that relative paths and
/// `/proc` links resolve as seen from the caller.
pub fn run_in_namespaces<T: Send>(
    namespaces: &[(&Path, CloneFlags)],
    f: impl FnOnce() -> T + Send,
) -> io::Result<T> {
    let files = namespaces
        .iter()
        .map(|(path, kind)| {
            let file = File::open(path).map_err(|e| annotate(e, "cannot open namespace", path))?;
            Ok((file, *kind, *path))
        })
        .collect::<io::Result<Vec<_>>>()?;
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("netsetup-ns".into())
            .spawn_scoped(scope, move || {
                for (file, kind, path) in &files {
                    setns(file, *kind)
                        .map_err(|e| annotate(e.into(), "cannot join namespace", path))?;
                }
                drop(files);
                Ok(f())
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The namespace a [`run_in`] call could not open or join; carried inside the `io::Error`
/// (which keeps the original error's kind), its source is the original error.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct NamespaceError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn annotate(source: io::Error, what: &'static str, path: &Path) -> io::Error {
    let kind = source.kind();
    io::Error::new(
        kind,
        NamespaceError {
            what,
            path: path.to_owned(),
            source,
        },
    )
}
