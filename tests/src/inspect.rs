//! Looking at a node from inside: what the daemon made, and what it left behind.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::cgroup;

/// How long removed pods may take to leave no trace (background link deletion).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
use crate::node::Node;
use crate::pods::PodInfo;

/// A process of the node, as `ps` inside it shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub stat: String,
    pub comm: String,
}

/// Parses `ps -o pid=,ppid=,<word>=,<rest>=` output: each line's pid, ppid, third field and
/// the rest (which may hold spaces), made into a `T`.
pub(crate) fn ps_rows<T>(
    out: &str,
    make: impl Fn(u32, u32, String, String) -> T,
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for line in out.lines() {
        let mut fields = line.split_whitespace();
        let (Some(pid), Some(ppid), Some(third)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("unexpected ps line {line:?}");
        };
        let rest = fields.collect::<Vec<_>>().join(" ");
        rows.push(make(pid.parse()?, ppid.parse()?, third.to_owned(), rest));
    }
    Ok(rows)
}

impl Proc {
    pub fn is_zombie(&self) -> bool {
        self.stat.starts_with('Z')
    }
}

/// The host veth name of a sandbox: `pp` + the first 8 hex chars of its id.
pub fn host_veth(id: &str) -> String {
    format!("pp{}", &id[..8.min(id.len())])
}

impl Node {
    /// IP leases on disk (files named by an IP): IP → owner (sandbox id).
    pub fn leases(&self) -> Result<BTreeMap<String, String>> {
        let dir = self.state_dir().join("ipam/peapod");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        let mut leases = BTreeMap::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_err() {
                continue; // IPAM bookkeeping or a temp file, not a lease
            }
            let owner = std::fs::read_to_string(entry.path())
                .with_context(|| format!("read lease {}", entry.path().display()))?;
            leases.insert(name, owner.trim().to_owned());
        }
        Ok(leases)
    }

    /// Sandbox ids that have a directory under `<state>/sandboxes`.
    pub fn sandbox_dirs(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.state_dir().join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Names of the node's network links.
    pub async fn links(&self) -> Result<Vec<String>> {
        let out = self.exec(&["ip", "-o", "link", "show"]).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect())
    }

    /// The node's links that look like pod host veths (`pp` + 8 hex).
    pub async fn host_veths(&self) -> Result<Vec<String>> {
        let links = self.links().await?;
        Ok(links
            .into_iter()
            .filter(|l| {
                l.len() == 10
                    && l.starts_with("pp")
                    && l[2..].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect())
    }

    /// Ports of the node bridge `peapod0`.
    pub async fn bridge_ports(&self) -> Result<Vec<String>> {
        let out = self
            .exec(&["ip", "-o", "link", "show", "master", "peapod0"])
            .await
            .unwrap_or_default();
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect())
    }

    /// Fails if the bridge has ports beyond `before` (waiting up to [`SETTLE`] for
    /// background deletions).
    pub async fn assert_empty_of_extra_ports(&self, before: &[String]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let extra: Vec<String> = self
                .host_veths()
                .await?
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            if extra.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("veths left behind: {extra:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits up to [`SETTLE`] for the host veth `name` to be deleted.
    pub async fn wait_veth_gone(&self, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while self.host_veths().await?.iter().any(|v| v == name) {
            if tokio::time::Instant::now() >= deadline {
                bail!("host veth {name} still exists {SETTLE:?} after its pod stopped");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Names under the node's `/run/netns`.
    pub async fn pins(&self) -> Result<Vec<String>> {
        let out = self
            .exec(&["sh", "-c", "ls -1 /run/netns 2>/dev/null || true"])
            .await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// The node's mount table (`/proc/self/mounts` inside it).
    pub async fn mounts(&self) -> Result<Vec<String>> {
        let out = self.exec(&["cat", "/proc/self/mounts"]).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// `nft list table inet peapod` inside the node, `None` if there is no such table.
    pub async fn nft(&self) -> Result<Option<String>> {
        let output = self
            .exec_output(&["nft", "list", "table", "inet", "peapod"])
            .await?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
    }

    /// The elements of the hostPort maps of `inet peapod` inside the node, as
    /// `<map>: <key> : <value>` (e.g. `hostports_any: tcp . 8080 : 10.88.0.2 . 80`).
    pub async fn hostport_elements(&self) -> Result<Vec<String>> {
        let out = self.exec(&["nft", "-j", "list", "maps", "inet"]).await?;
        let doc: serde_json::Value = serde_json::from_str(&out).context("nft -j list maps")?;
        let mut found = Vec::new();
        let items = doc["nftables"].as_array().cloned().unwrap_or_default();
        for map in items.iter().filter_map(|i| i.get("map")) {
            let name = map["name"].as_str().unwrap_or_default();
            if map["table"] != "peapod" || !name.starts_with("hostports") {
                continue;
            }
            for elem in map["elem"].as_array().into_iter().flatten() {
                let part = |i: usize| {
                    elem[i]["concat"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" . ")
                };
                found.push(format!("{name}: {} : {}", part(0), part(1)));
            }
        }
        Ok(found)
    }

    /// Which of `pids` (as seen inside the node) still run: alive and not zombies.
    pub async fn still_running(&self, pids: &[u64]) -> Result<Vec<Proc>> {
        Ok(self
            .processes()
            .await?
            .into_iter()
            .filter(|p| pids.contains(&u64::from(p.pid)) && !p.is_zombie())
            .collect())
    }

    /// A crash that lost pod `id`'s record: kills the daemon and deletes `sandbox.json`.
    pub async fn crash_losing_pod_record(&mut self, id: &str) -> Result<()> {
        self.kill_daemon().await?;
        let record = self
            .state_dir()
            .join("sandboxes")
            .join(id)
            .join("sandbox.json");
        std::fs::remove_file(&record).with_context(|| format!("cannot remove {record:?}"))
    }

    /// The node's processes (pids as seen inside the node).
    pub async fn processes(&self) -> Result<Vec<Proc>> {
        let out = self
            .exec(&["ps", "-e", "-o", "pid=,ppid=,stat=,comm="])
            .await?;
        ps_rows(&out, |pid, ppid, stat, comm| Proc {
            pid,
            ppid,
            stat,
            comm,
        })
    }

    /// Pause processes of pods (every `peapod-pause` but the node's own PID 1).
    pub async fn pauses(&self) -> Result<Vec<Proc>> {
        let procs = self.processes().await?;
        Ok(procs
            .into_iter()
            .filter(|p| p.comm == "peapod-pause" && p.pid != 1)
            .collect())
    }

    /// The IPv4 address (without prefix) of link `ifname` in the node.
    pub async fn ipv4_of(&self, ifname: &str) -> Result<String> {
        let out = self
            .exec(&["ip", "-4", "-o", "addr", "show", "dev", ifname])
            .await?;
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .with_context(|| format!("{ifname} has no IPv4 address: {out:?}"))?;
        Ok(addr.split('/').next().unwrap_or(addr).to_owned())
    }

    /// Fails, naming everything it found, unless the node holds no trace of these pods:
    /// no pin, host veth, lease, mount, sandbox dir, cgroup, pause process or nftables
    /// mention of their IP or veth.
    ///
    /// Host veths are cut off the bridge at once and deleted a few milliseconds later in the
    /// background (the kernel takes an RCU grace period per deleted link), so this waits up to
    /// [`SETTLE`] for the node to become clean before it fails.
    pub async fn assert_gone(&self, pods: &[PodInfo]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            match self.traces_of(pods).await? {
                None => return Ok(()),
                Some(msg) if tokio::time::Instant::now() >= deadline => bail!(msg),
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    async fn traces_of(&self, pods: &[PodInfo]) -> Result<Option<String>> {
        let pins = self.pins().await?;
        let veths = self.host_veths().await?;
        let leases = self.leases()?;
        let mounts = self.mounts().await?;
        let dirs = self.sandbox_dirs();
        let procs = self.processes().await?;
        let nft = self.nft().await?.unwrap_or_default();
        let nft_words: Vec<&str> = nft
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '{' | '}' | '/'))
            .collect();
        let mut found = Vec::new();
        for pod in pods {
            let id = &pod.id;
            let veth = host_veth(id);
            if pins.contains(&format!("peapod-{id}")) {
                found.push(format!("pin /run/netns/peapod-{id}"));
            }
            if veths.contains(&veth) {
                found.push(format!("host veth {veth}"));
            }
            for (ip, owner) in &leases {
                if owner == id {
                    found.push(format!("lease {ip} of {id}"));
                }
            }
            for mount in mounts.iter().filter(|m| m.contains(id.as_str())) {
                found.push(format!("mount {mount:?}"));
            }
            if dirs.contains(id) {
                found.push(format!("sandbox dir of {id}"));
            }
            let cgroup = format!("{}/{id}", self.cgroup_parent());
            for dir in cgroup::existing(&cgroup) {
                found.push(format!("cgroup {}", dir.display()));
            }
            if let Some(p) = procs
                .iter()
                .find(|p| Some(p.pid) == pod.pid && p.comm == "peapod-pause")
            {
                found.push(format!("pause process {p:?} of {id}"));
            }
            if !pod.ip.is_empty() && nft_words.contains(&pod.ip.as_str()) {
                found.push(format!("nftables mentions the IP {}", pod.ip));
            }
            if nft_words.contains(&veth.as_str()) {
                found.push(format!("nftables mentions the veth {veth}"));
            }
        }
        Ok((!found.is_empty()).then(|| {
            format!(
                "removed pods left traces in the node:\n  {}\nnftables:\n{nft}",
                found.join("\n  ")
            )
        }))
    }

    /// Fails unless the node holds no pod at all: ListPodSandbox empty, and no pin, host veth,
    /// lease, sandbox dir, pause process or cgroup under the node's cgroup parent.
    /// Waits up to [`SETTLE`], like [`Node::assert_gone`].
    pub async fn assert_empty(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            match self.traces().await? {
                None => return Ok(()),
                Some(msg) if tokio::time::Instant::now() >= deadline => bail!(msg),
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    async fn traces(&self) -> Result<Option<String>> {
        let mut found = Vec::new();
        let pods = self.list_pods().await?;
        if !pods.is_empty() {
            found.push(format!("ListPodSandbox has {} pods", pods.len()));
        }
        let pins = self.pins().await?;
        if pins.iter().any(|p| p.starts_with("peapod-")) {
            found.push(format!("pins {pins:?}"));
        }
        let veths = self.host_veths().await?;
        if !veths.is_empty() {
            found.push(format!("host veths {veths:?}"));
        }
        let leases = self.leases()?;
        if !leases.is_empty() {
            found.push(format!("leases {leases:?}"));
        }
        let dirs = self.sandbox_dirs();
        if !dirs.is_empty() {
            found.push(format!("sandbox dirs {dirs:?}"));
        }
        let elements = self.hostport_elements().await?;
        if !elements.is_empty() {
            found.push(format!("hostPort map elements {elements:?}"));
        }
        let pauses = self.pauses().await?;
        if !pauses.is_empty() {
            found.push(format!("pause processes {pauses:?}"));
        }
        let mounts = self.mounts().await?;
        let pin_mounts: Vec<&String> = mounts
            .iter()
            .filter(|m| m.contains("/run/netns/peapod-"))
            .collect();
        if !pin_mounts.is_empty() {
            found.push(format!("pin mounts {pin_mounts:?}"));
        }
        let cgroups: Vec<_> = cgroup::hierarchies()
            .iter()
            .map(|h| h.join(self.cgroup_parent().trim_start_matches('/')))
            .flat_map(|parent| std::fs::read_dir(parent).into_iter().flatten().flatten())
            .filter(|e| e.path().is_dir())
            .map(|e| e.path())
            .collect();
        if !cgroups.is_empty() {
            found.push(format!("cgroups {cgroups:?}"));
        }
        Ok(
            (!found.is_empty())
                .then(|| format!("the node is not empty:\n  {}", found.join("\n  "))),
        )
    }
}
