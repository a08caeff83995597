//! Throwaway network namespaces for the privileged tests.
//!
//! Nothing here touches the host's network, `/run/netns` or mount table: the "node" is a fresh
//! thread that unshared its network namespace, and each pod namespace is held open by a thread
//! parked inside it, known by its `/proc/<pid>/task/<tid>/ns/net` path. When those threads end
//! (also when a test panics: Drop guards) the namespaces and everything in them go away.

#![allow(dead_code)] // each test file uses its own part of this

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use netsetup::{IpNet, Network, NodeNetConfig};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{getpid, gettid};

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the privileged netsetup tests need root: they create network namespaces"
    );
}

/// Runs `f` on a fresh thread in a new, empty network namespace: the node. Everything the
/// namespace holds (bridge, veths, nft table) goes when the thread ends.
pub fn on_node<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    require_root();
    thread::scope(|s| {
        let node = s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare the node netns");
            ip(&["link", "set", "lo", "up"]);
            f()
        });
        node.join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A pod network namespace, held by a parked thread until dropped.
pub struct PodNs {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    holder: Option<JoinHandle<()>>,
}

impl PodNs {
    pub fn new() -> PodNs {
        PodNs::with_flags(CloneFlags::CLONE_NEWNET)
    }

    /// New namespaces of the given kinds (net and, say, ipc); [`PodNs::ns`] names each.
    pub fn with_flags(flags: CloneFlags) -> PodNs {
        let (path_tx, path_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            unshare(flags).expect("unshare a pod namespace");
            path_tx
                .send(PathBuf::from(format!(
                    "/proc/{}/task/{}/ns",
                    getpid(),
                    gettid()
                )))
                .unwrap();
            let _ = stop_rx.recv(); // until the sender is dropped
        });
        PodNs {
            path: path_rx.recv().expect("pod namespace thread died"),
            stop: Some(stop),
            holder: Some(holder),
        }
    }

    /// The netns path to hand to `attach`.
    pub fn netns(&self) -> PathBuf {
        self.ns("net")
    }

    pub fn ns(&self, kind: &str) -> PathBuf {
        self.path.join(kind)
    }

    /// Runs `f` inside the pod's netns, on a throwaway thread.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        netsetup::netns::run_in(&self.netns(), f).expect("enter pod netns")
    }

    /// `ip -j <args>` inside the pod.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.run(move || ip_json(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

/// Runs `ip <args>` in the calling thread's netns; panics on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ip -j <args>` in the calling thread's netns, parsed.
pub fn ip_json(args: &[&str]) -> serde_json::Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&ip(&full)).expect("ip -j prints json")
}

/// Whether a link of that name exists in the calling thread's netns.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .expect("run ip")
        .status
        .success()
}

/// Names of the ports of `bridge` in the calling thread's netns.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let links = ip_json(&["link", "show", "master", bridge]);
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect()
}

/// `nft list table inet peapod` in the calling thread's netns.
pub fn nft_table() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "peapod"])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub const BRIDGE: &str = "ppbr0";
pub const MTU: u32 = 1450;

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A network whose leases live in `dir`.
pub fn network(dir: &Path) -> Network {
    Network::new(NodeNetConfig {
        bridge: BRIDGE.into(),
        mtu: MTU,
        ipam_dir: dir.join("ipam"),
    })
}
