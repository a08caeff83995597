//! Reconcile: what carries peapod's names in the kernel and on disk but belongs to no record.
//! The daemon collects it at start-up; `peapod gc [--dry-run]` does the same on demand (with
//! the daemon stopped: it takes the state-dir lock).
//!
//! What a crash can leave, and what finds it: a pause (its environment names its sandbox), a
//! netns pin and the ipc/uts/pid pins (named by id), a host veth (`pp` + 8 hex), an IP lease
//! (names its owner), a sandbox cgroup (a leaf named by id, below a parent peapod made or its
//! default one), a sandbox dir without a record, a hostPort map element (no record lists it
//! among its attachment's rules). Containers' leftovers are found by
//! `container::gc` and collected first.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use super::cgroup::CgroupRecord;
use super::cgroup::Cgroups;
use super::error::SandboxError;
use super::model::{SandboxRecord, SandboxState};
use super::ops::{NETNS_DIR, Ops, PAUSE_GRACE};
use super::process::{self, ProcRef};
use super::{is_sandbox_id, pins};
use crate::config::Config;
use crate::container::gc as ctr_gc;
use crate::network::NodeNetwork;
use crate::store;

/// One thing to collect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Garbage {
    Pause { sandbox: String, pause: ProcRef },
    Pin(PathBuf),
    NsDir(PathBuf),
    Cgroup(CgroupRecord),
    Link(String),
    Leases { owner: String, ips: Vec<IpAddr> },
    Rule(String),
    SandboxDir(String),
}

impl fmt::Display for Garbage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Garbage::Pause { sandbox, pause } => {
                write!(f, "pause process {} of sandbox {sandbox}", pause.pid)
            }
            Garbage::Pin(p) => write!(f, "namespace pin {}", p.display()),
            Garbage::NsDir(p) => write!(f, "namespace pin dir {}", p.display()),
            Garbage::Cgroup(c) => write!(f, "cgroup {}", c.rel.display()),
            Garbage::Link(l) => write!(f, "host link {l}"),
            Garbage::Leases { owner, ips } => write!(f, "IP leases {ips:?} of {owner:?}"),
            Garbage::Rule(id) => write!(f, "firewall rule {id:?}"), // a hostPort map element
            Garbage::SandboxDir(id) => write!(f, "sandbox dir {id} (no record)"),
        }
    }
}

/// Sandbox id → its host link, for the records that exist.
pub fn owners<'a>(
    records: impl Iterator<Item = &'a SandboxRecord>,
) -> BTreeMap<String, Option<String>> {
    records
        .map(|r| {
            let link = r.network.as_ref().map(|a| a.host_ifname.clone());
            (r.id.clone(), link)
        })
        .collect()
}

/// `peapod gc`: with the daemon stopped (the caller holds the state-dir lock), rolls back
/// interrupted pods and collects garbage; with `dry_run`, only says what it would do. Returns
/// one line per thing, and whether everything went.
pub fn offline(cfg: Config, dry_run: bool) -> Result<(Vec<String>, bool), SandboxError> {
    let net = std::sync::Arc::new(NodeNetwork::new(&cfg)?);
    let cgroups = Cgroups::for_node(&cfg)?;
    let ops = Ops { cfg, net, cgroups };
    let (mut lines, mut ok) = (Vec::new(), true);
    let mut kept = Vec::new();
    for mut rec in ops.load_records()? {
        if rec.state != SandboxState::Creating {
            kept.push(rec);
            continue;
        }
        let what = format!("interrupted RunPodSandbox {}: roll back", rec.id);
        if dry_run {
            lines.push(format!("would {what}"));
        } else {
            ok &= ops.roll_back(&mut rec);
            lines.push(what);
        }
    }
    // Containers first: a stray container keeps its pod's cgroup busy.
    let pods: HashSet<String> = kept.iter().map(|r| r.id.clone()).collect();
    let pod_cgroups: Vec<CgroupRecord> = kept.iter().filter_map(|r| r.cgroup.clone()).collect();
    let stray = ops.cgroups.orphans(&|id| pods.contains(id));
    let containers = ctr_gc::recorded(&ops.cfg, &pods);
    let known = ctr_gc::Known {
        containers: &containers,
        pods: &pods,
        pod_cgroups: &pod_cgroups,
        stray_pod_cgroups: &stray,
    };
    for g in ctr_gc::find(&ops.cfg, &ops.cgroups, &known) {
        let done = (!dry_run).then(|| ctr_gc::collect(&ops.cgroups, &g).map_err(|e| e.chain()));
        ok &= report(&mut lines, &g, done);
    }
    for g in ops.find_garbage(&kept) {
        let done = (!dry_run).then(|| ops.collect(&g).map_err(|e| e.chain()));
        ok &= report(&mut lines, &g, done);
    }
    ops.net.net.settle();
    Ok((lines, ok))
}

/// One line for `peapod gc`: what would go (`done` is None on a dry run), went, or could not.
fn report(lines: &mut Vec<String>, g: &dyn fmt::Display, done: Option<Result<(), String>>) -> bool {
    match done {
        None => lines.push(format!("would remove {g}")),
        Some(Ok(())) => lines.push(format!("removed {g}")),
        Some(Err(e)) => {
            lines.push(format!("cannot remove {g}: {e}"));
            return false;
        }
    }
    true
}

impl Ops {
    /// Every record on disk; a sandbox dir without one is left for [`Ops::find_garbage`].
    pub fn load_records(&self) -> Result<Vec<SandboxRecord>, SandboxError> {
        let dir = self.cfg.state_dir.join("sandboxes");
        store::create_dir_all(&dir)?;
        let mut records = Vec::new();
        for id in crate::store::dir_names(&dir) {
            match store::read_json_opt::<SandboxRecord>(&self.sandbox_dir(&id).join("sandbox.json"))
            {
                Ok(Some(rec)) => records.push(rec),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable sandbox record"),
            }
        }
        Ok(records)
    }

    /// Rolls back an interrupted RunPodSandbox, completing the record first with what a
    /// crash may have kept from it. False if something could not be undone.
    pub fn roll_back(&self, rec: &mut SandboxRecord) -> bool {
        tracing::info!(sandbox = %rec.id, "rolling back an interrupted RunPodSandbox");
        self.complete_interrupted(rec);
        match self.remove(rec) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "rollback incomplete");
                false
            }
        }
    }

    /// Everything of peapod's that none of `records` owns. Pauses come first: they hold
    /// namespaces and cgroups.
    pub fn find_garbage(&self, records: &[SandboxRecord]) -> Vec<Garbage> {
        let known = &owners(records.iter());
        let is_known = |id: &str| known.contains_key(id);
        let mut found = Vec::new();
        for (sandbox, pause) in process::sandbox_processes() {
            if !is_known(&sandbox) {
                found.push(Garbage::Pause { sandbox, pause });
            }
        }
        for name in crate::store::dir_names(std::path::Path::new(NETNS_DIR)) {
            if let Some(id) = name.strip_prefix("peapod-")
                && !is_known(id)
            {
                found.push(Garbage::Pin(Ops::netns_pin(id)));
            }
        }
        for id in crate::store::dir_names(&self.cfg.run_dir.join("ns")) {
            if !is_known(&id) {
                found.push(Garbage::NsDir(self.ns_dir(&id)));
            }
        }
        for rec in self.cgroups.orphans(&is_known) {
            found.push(Garbage::Cgroup(rec));
        }
        let links: HashSet<&str> = known.values().flatten().map(String::as_str).collect();
        for link in self.net.net.host_links().unwrap_or_default() {
            if !links.contains(link.as_str()) {
                found.push(Garbage::Link(link));
            }
        }
        let mut leases: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for l in self.net.net.leases().unwrap_or_default() {
            if !is_known(&l.owner) {
                leases.entry(l.owner).or_default().push(l.ip);
            }
        }
        found.extend(
            leases
                .into_iter()
                .map(|(owner, ips)| Garbage::Leases { owner, ips }),
        );
        let rules: HashSet<&str> = records
            .iter()
            .filter_map(|r| r.network.as_ref())
            .flat_map(|a| a.rules.iter().map(String::as_str))
            .collect();
        match self.net.net.pod_rules() {
            Ok(found_rules) => found.extend(
                found_rules
                    .into_iter()
                    .filter(|id| !rules.contains(id.as_str()))
                    .map(Garbage::Rule),
            ),
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "cannot list firewall rules")
            }
        }
        for id in crate::store::dir_names(&self.cfg.state_dir.join("sandboxes")) {
            if is_sandbox_id(&id) && !is_known(&id) {
                found.push(Garbage::SandboxDir(id));
            }
        }
        found
    }

    /// Removes one piece of garbage; already gone is success.
    pub fn collect(&self, g: &Garbage) -> Result<(), SandboxError> {
        match g {
            Garbage::Pause { pause, .. } => process::terminate_blocking(pause, PAUSE_GRACE)
                .map_err(|source| SandboxError::Kill {
                    pid: pause.pid,
                    source,
                }),
            Garbage::Pin(p) => pins::unpin(p).map_err(|source| SandboxError::Unpin {
                path: p.clone(),
                source,
            }),
            Garbage::NsDir(dir) => {
                for kind in ["ipc", "uts", "pid"] {
                    let p = dir.join(kind);
                    pins::unpin(&p).map_err(|source| SandboxError::Unpin { path: p, source })?;
                }
                match std::fs::remove_dir(dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(SandboxError::Unpin {
                            path: dir.clone(),
                            source: e,
                        })
                    }
                    _ => Ok(()),
                }
            }
            Garbage::Cgroup(rec) => self.cgroups.remove_tree(rec),
            Garbage::Link(name) => self
                .net
                .net
                .collect_links(&|l| l != name)
                .map(|_| ())
                .map_err(SandboxError::Network),
            Garbage::Leases { owner, .. } => self
                .net
                .net
                .cleanup_partial(owner, &netsetup::host_ifname(owner))
                .map_err(SandboxError::Detach),
            Garbage::Rule(id) => self
                .net
                .net
                .remove_rules(std::slice::from_ref(id))
                .map_err(SandboxError::Network),
            Garbage::SandboxDir(id) => self.remove_sandbox_dir(id),
        }
    }
}
