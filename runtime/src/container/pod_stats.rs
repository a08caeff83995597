//! Resource usage of pods (PodSandboxStats, ListPodSandboxStats): cpu, memory and process count
//! of the pod cgroup (which holds the pause and every container), the network counters of the
//! pod's interfaces as its pause sees them (`/proc/<pause pid>/net/dev`), and the stats of its
//! running containers.
//!
//! With the systemd driver the containers' scopes are beside the pod's, in the slice the
//! request named: the pod's cgroup is then that slice (the kubelet makes one per pod), as
//! containerd reads a pod's stats from its cgroup parent. A pod in peapod's default slice,
//! which all such pods share, gets the sum of its own scope and its running containers'.

use super::model::ContainerState;
use super::stats::{CgroupReader, ContainerStats, CpuUsage, IoUsage, MemoryUsage};
use super::{Containers, Filter, Result, now_nanos};
use crate::sandbox::cgroup::CgroupRecord;
use crate::sandbox::{self, SandboxRecord, SandboxState};

/// The interface the pod's default route goes through.
pub const DEFAULT_INTERFACE: &str = "eth0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkUsage {
    pub timestamp: i64,
    pub default_interface: Option<InterfaceUsage>,
    /// Every other interface but `lo`.
    pub interfaces: Vec<InterfaceUsage>,
}

#[derive(Clone, Debug)]
pub struct PodStats {
    pub rec: SandboxRecord,
    pub cpu: Option<CpuUsage>,
    pub memory: Option<MemoryUsage>,
    pub io: Option<IoUsage>,
    /// None for NODE-network pods and pods whose pause is gone.
    pub network: Option<NetworkUsage>,
    /// (timestamp, count)
    pub processes: Option<(i64, u64)>,
    pub containers: Vec<ContainerStats>,
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes packets errs drop … tx_bytes packets
/// errs drop …`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            (f.len() >= 12).then(|| InterfaceUsage {
                name: name.trim().to_owned(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_dropped: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_dropped: f[11],
            })
        })
        .collect()
}

fn network(rec: &SandboxRecord) -> Option<NetworkUsage> {
    if rec.spec.host_network() {
        return None;
    }
    let pause = rec.pause.filter(|p| p.is_alive())?;
    let text = std::fs::read_to_string(format!("/proc/{}/net/dev", pause.pid)).ok()?;
    // The pause may have died and its pid been reused while we read.
    if !pause.is_alive() {
        return None;
    }
    let timestamp = now_nanos();
    let (default, others): (Vec<_>, Vec<_>) = parse_net_dev(&text)
        .into_iter()
        .filter(|i| i.name != "lo")
        .partition(|i| i.name == DEFAULT_INTERFACE);
    Some(NetworkUsage {
        timestamp,
        default_interface: default.into_iter().next(),
        interfaces: others,
    })
}

impl Containers {
    /// PodSandboxStats: any pod; what cannot be read (no cgroup, pause gone) is left out.
    pub fn pod_stats(&self, id: &str) -> Result<PodStats> {
        let rec = self.sandboxes.status(id)?;
        Ok(self.pod_stats_of(rec))
    }

    /// ListPodSandboxStats: the ready pods that match `f` (its state is ignored).
    pub fn list_pod_stats(&self, mut f: sandbox::Filter) -> Vec<PodStats> {
        f.state = Some(SandboxState::Ready);
        self.sandboxes
            .list(&f)
            .into_iter()
            .map(|r| self.pod_stats_of(r))
            .collect()
    }

    fn pod_stats_of(&self, rec: SandboxRecord) -> PodStats {
        let cgroups = self.sandboxes.cgroups();
        let scope = rec
            .cgroup
            .as_ref()
            .filter(|c| cgroups.scope_unit(c).is_some());
        let (summed, cg) = match scope {
            Some(cg) if !rec.spec.cgroup_parent.is_empty() => (
                false,
                cg.rel.parent().map(|slice| CgroupRecord {
                    rel: slice.to_owned(),
                }),
            ),
            Some(cg) => (true, Some(cg.clone())),
            None => (false, rec.cgroup.clone()),
        };
        let (dirs, v2) = self.cgroup_dirs(cg.as_ref());
        let reader = CgroupReader { dirs: &dirs, v2 };
        let containers: Vec<ContainerStats> = self
            .list(&Filter {
                sandbox_id: Some(rec.id.clone()),
                state: Some(ContainerState::Running),
                ..Default::default()
            })
            .into_iter()
            .filter(|c| c.sandbox_id == rec.id)
            .map(|c| self.stats_of(c))
            .collect();
        let mut stats = PodStats {
            cpu: reader.cpu(),
            memory: reader.memory(),
            io: reader.io(),
            network: network(&rec),
            processes: reader.process_count().map(|n| (now_nanos(), n)),
            containers,
            rec,
        };
        if summed {
            self.add_containers(&mut stats);
        }
        stats
    }

    /// Adds the usage of the pod's running containers to the pod's own (the systemd driver,
    /// without a slice of the pod's own). Pressure and the memory left are the pod scope's
    /// alone: neither adds up.
    fn add_containers(&self, pod: &mut PodStats) {
        for c in &pod.containers {
            if let (Some(p), Some(c)) = (pod.cpu.as_mut(), &c.cpu) {
                p.usage_core_ns += c.usage_core_ns;
                p.usage_nano_cores = p
                    .usage_nano_cores
                    .zip(c.usage_nano_cores)
                    .map(|(a, b)| a + b);
            }
            if let (Some(p), Some(c)) = (pod.memory.as_mut(), &c.memory) {
                p.working_set += c.working_set;
                p.usage += c.usage;
                p.available = None;
                let add = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a + b);
                p.rss = add(p.rss, c.rss);
                p.page_faults = add(p.page_faults, c.page_faults);
                p.major_page_faults = add(p.major_page_faults, c.major_page_faults);
            }
            if let (Some((_, n)), Some(m)) = (pod.processes.as_mut(), c.processes) {
                *n += m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n\
  eth0:   12345      10    2    3    0     0          0         0     6789       9    4    5    0     0       0          0\n";
        let v = parse_net_dev(text);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[1],
            InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 12345,
                rx_packets: 10,
                rx_errors: 2,
                rx_dropped: 3,
                tx_bytes: 6789,
                tx_packets: 9,
                tx_errors: 4,
                tx_dropped: 5,
            }
        );
    }
}
