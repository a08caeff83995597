//! ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics: the usage that
//! ListPodSandboxStats reports, as metrics with cAdvisor's names, which the kubelet serves on
//! `/metrics/cadvisor` when it takes its stats from the runtime
//! (`PodAndContainerStatsFromCRI`). Every ready pod, every running container.
//!
//! Labels are those cAdvisor gives under the kubelet (`container`, `id`, `image`, `name`,
//! `namespace`, `pod`, and `interface` for network counters), so that the usual queries
//! (`sum by (pod) (rate(container_cpu_usage_seconds_total[5m]))`) read the same: `id` is the
//! cgroup, `name` the container id. A pod's own rows (its cgroup, its network) have an empty
//! `container` and `image`. Values are whole numbers (the CRI's `UInt64Value`): cpu time in
//! whole seconds, as in containerd and CRI-O. Every metric is gathered live (timestamp 0).

use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use crate::container::pod_stats::PodStats;
use crate::container::stats::{ContainerStats, CpuUsage, MemoryUsage};
use crate::sandbox::Filter;
use crate::sandbox::cgroup::CgroupRecord;

const COUNTER: cri::MetricType = cri::MetricType::Counter;
const GAUGE: cri::MetricType = cri::MetricType::Gauge;
const LABELS: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
const NET_LABELS: &[&str] = &[
    "container",
    "id",
    "image",
    "interface",
    "name",
    "namespace",
    "pod",
];

/// Name, help, type, and whether the metric is per network interface.
const DESCRIPTORS: &[(&str, &str, cri::MetricType, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        COUNTER,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        GAUGE,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        GAUGE,
        false,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        GAUGE,
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        GAUGE,
        false,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        GAUGE,
        false,
    ),
    (
        "container_spec_cpu_period",
        "CPU period of the container.",
        GAUGE,
        false,
    ),
    (
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        GAUGE,
        false,
    ),
    (
        "container_spec_cpu_shares",
        "CPU share of the container.",
        GAUGE,
        false,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        GAUGE,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        COUNTER,
        true,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        COUNTER,
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        COUNTER,
        true,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        COUNTER,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        COUNTER,
        true,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        COUNTER,
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        COUNTER,
        true,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        COUNTER,
        true,
    ),
];

pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|(name, help, _, net)| cri::MetricDescriptor {
            name: (*name).to_owned(),
            help: (*help).to_owned(),
            label_keys: labels(*net).iter().map(|k| (*k).to_owned()).collect(),
        })
        .collect()
}

fn labels(net: bool) -> &'static [&'static str] {
    if net { NET_LABELS } else { LABELS }
}

/// The label values of one row (a pod's cgroup, or a container's), in [`LABELS`] order.
struct Row {
    container: String,
    id: String,
    image: String,
    name: String,
    namespace: String,
    pod: String,
}

impl Row {
    fn values(&self, interface: Option<&str>) -> Vec<String> {
        let mut v = vec![self.container.clone(), self.id.clone(), self.image.clone()];
        v.extend(interface.map(str::to_owned));
        v.extend([self.name.clone(), self.namespace.clone(), self.pod.clone()]);
        v
    }

    fn metric(&self, name: &str, interface: Option<&str>, value: u64) -> cri::Metric {
        let kind = DESCRIPTORS
            .iter()
            .find(|d| d.0 == name)
            .map_or(GAUGE, |d| d.2);
        debug_assert!(
            DESCRIPTORS
                .iter()
                .any(|d| d.0 == name && d.3 == interface.is_some())
        );
        cri::Metric {
            name: name.to_owned(),
            timestamp: 0,
            metric_type: kind as i32,
            label_values: self.values(interface),
            value: Some(cri::UInt64Value { value }),
        }
    }
}

/// The cgroup as cAdvisor names it (`/kubepods/…`), or `fallback` without one.
fn cgroup_id(cg: Option<&CgroupRecord>, fallback: &str) -> String {
    cg.map_or_else(|| fallback.to_owned(), |c| format!("/{}", c.rel.display()))
}

fn usage(
    row: &Row,
    cpu: Option<&CpuUsage>,
    mem: Option<&MemoryUsage>,
    processes: Option<u64>,
    started_ns: i64,
    out: &mut Vec<cri::Metric>,
) {
    if let Some(c) = cpu {
        let secs = c.usage_core_ns / 1_000_000_000;
        out.push(row.metric("container_cpu_usage_seconds_total", None, secs));
    }
    if let Some(m) = mem {
        out.push(row.metric("container_memory_usage_bytes", None, m.usage));
        out.push(row.metric("container_memory_working_set_bytes", None, m.working_set));
        if let Some(rss) = m.rss {
            out.push(row.metric("container_memory_rss", None, rss));
        }
    }
    if let Some(n) = processes {
        out.push(row.metric("container_processes", None, n));
    }
    if started_ns > 0 {
        let secs = (started_ns / 1_000_000_000) as u64;
        out.push(row.metric("container_start_time_seconds", None, secs));
    }
}

fn container_metrics(pod: &PodStats, c: &ContainerStats) -> cri::ContainerMetrics {
    let rec = &c.rec;
    let meta = &pod.rec.spec.metadata;
    let row = Row {
        container: rec.spec.name.clone(),
        id: cgroup_id(rec.cgroup.as_ref(), &rec.id),
        image: rec.image_ref.clone(),
        name: rec.id.clone(),
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
    };
    let mut out = Vec::new();
    usage(
        &row,
        c.cpu.as_ref(),
        c.memory.as_ref(),
        c.processes,
        rec.started_at,
        &mut out,
    );
    let r = &rec.spec.resources;
    for (name, value) in [
        ("container_spec_cpu_period", r.cpu_period),
        ("container_spec_cpu_quota", r.cpu_quota),
        ("container_spec_cpu_shares", r.cpu_shares),
        ("container_spec_memory_limit_bytes", r.memory_limit),
    ] {
        if value > 0 {
            out.push(row.metric(name, None, value as u64));
        }
    }
    cri::ContainerMetrics {
        container_id: rec.id.clone(),
        metrics: out,
    }
}

/// One pod's metrics: its cgroup's usage and its network counters, and its containers'.
pub fn pod_metrics(s: &PodStats) -> cri::PodSandboxMetrics {
    let meta = &s.rec.spec.metadata;
    let row = Row {
        container: String::new(),
        id: cgroup_id(s.rec.cgroup.as_ref(), &s.rec.id),
        image: String::new(),
        name: s.rec.id.clone(),
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
    };
    let mut out = Vec::new();
    usage(
        &row,
        s.cpu.as_ref(),
        s.memory.as_ref(),
        s.processes.map(|(_, n)| n),
        s.rec.created_at,
        &mut out,
    );
    if let Some(net) = &s.network {
        for i in net.default_interface.iter().chain(&net.interfaces) {
            let name = Some(i.name.as_str());
            for (metric, value) in [
                ("container_network_receive_bytes_total", i.rx_bytes),
                ("container_network_receive_packets_total", i.rx_packets),
                ("container_network_receive_errors_total", i.rx_errors),
                (
                    "container_network_receive_packets_dropped_total",
                    i.rx_dropped,
                ),
                ("container_network_transmit_bytes_total", i.tx_bytes),
                ("container_network_transmit_packets_total", i.tx_packets),
                ("container_network_transmit_errors_total", i.tx_errors),
                (
                    "container_network_transmit_packets_dropped_total",
                    i.tx_dropped,
                ),
            ] {
                out.push(row.metric(metric, name, value));
            }
        }
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: s.rec.id.clone(),
        metrics: out,
        container_metrics: s
            .containers
            .iter()
            .map(|c| container_metrics(s, c))
            .collect(),
    }
}

#[tracing::instrument(name = "ListPodSandboxMetrics", skip_all)]
pub async fn handle(svc: &CriService) -> Result<Vec<cri::PodSandboxMetrics>, Status> {
    let c = svc.containers.clone();
    let stats = tokio::task::spawn_blocking(move || c.list_pod_stats(Filter::default()))
        .await
        .expect("no panic");
    Ok(stats.iter().map(pod_metrics).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_described_once_with_sorted_label_keys() {
        let d = descriptors();
        let mut names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), d.len());
        for keys in [LABELS, NET_LABELS] {
            let mut sorted = keys.to_vec();
            sorted.sort();
            assert_eq!(sorted, keys);
        }
        let row = Row {
            container: "c".into(),
            id: "/kubepods/pod1/abc".into(),
            image: "busybox".into(),
            name: "abc".into(),
            namespace: "ns".into(),
            pod: "p".into(),
        };
        let m = row.metric("container_network_receive_bytes_total", Some("eth0"), 7);
        assert_eq!(
            m.label_values,
            [
                "c",
                "/kubepods/pod1/abc",
                "busybox",
                "eth0",
                "abc",
                "ns",
                "p"
            ]
        );
        assert_eq!(m.metric_type, COUNTER as i32);
        let m = row.metric("container_memory_working_set_bytes", None, 5);
        assert_eq!(m.label_values.len(), LABELS.len());
        assert_eq!(m.metric_type, GAUGE as i32);
    }
}
