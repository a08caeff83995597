//! A task's cgroup usage as containerd's `Stats` answer: cgroups v1 or v2 `Metrics` in an
//! `Any`, with what the CRI's ContainerStats reads from it (CPU time, memory usage and
//! inactive file pages for the working set, RSS, page faults, pids), read by the same
//! [`CgroupReader`] as `peapod serve`'s stats.

use std::path::PathBuf;

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use peapod::container::stats::CgroupReader;

/// The metrics of the cgroup in `dirs` (one per v1 hierarchy, or the v2 one).
pub fn metrics(dirs: &[PathBuf], is_v2: bool) -> Result<Any, String> {
    let reader = CgroupReader { dirs, v2: is_v2 };
    let cpu_ns = reader.cpu().map_or(0, |c| c.usage_core_ns);
    let memory = reader.memory();
    let pids = reader.process_count().unwrap_or(0);
    let usage = memory.as_ref().map_or(0, |m| m.usage);
    let inactive = memory
        .as_ref()
        .map_or(0, |m| m.usage.saturating_sub(m.working_set));
    let rss = memory.as_ref().and_then(|m| m.rss).unwrap_or(0);
    let faults = memory.as_ref().and_then(|m| m.page_faults).unwrap_or(0);
    let major = memory
        .as_ref()
        .and_then(|m| m.major_page_faults)
        .unwrap_or(0);
    let limit = memory
        .as_ref()
        .and_then(|m| m.available.map(|a| a + m.working_set))
        .unwrap_or(u64::MAX);
    let (type_url, bytes) = if is_v2 {
        let mut m = v2::Metrics::new();
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = cpu_ns / 1000;
        m.cpu = Some(cpu).into();
        let mut mem = v2::MemoryStat::new();
        mem.usage = usage;
        mem.usage_limit = limit;
        mem.inactive_file = inactive;
        mem.anon = rss;
        mem.pgfault = faults;
        mem.pgmajfault = major;
        m.memory = Some(mem).into();
        let mut p = v2::PidsStat::new();
        p.current = pids;
        m.pids = Some(p).into();
        ("io.containerd.cgroups.v2.Metrics", m.write_to_bytes())
    } else {
        let mut m = v1::Metrics::new();
        let mut total = v1::CPUUsage::new();
        total.total = cpu_ns;
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(total).into();
        m.cpu = Some(cpu).into();
        let mut entry = v1::MemoryEntry::new();
        entry.usage = usage;
        entry.limit = limit;
        let mut mem = v1::MemoryStat::new();
        mem.usage = Some(entry).into();
        mem.total_inactive_file = inactive;
        mem.total_rss = rss;
        mem.rss = rss;
        mem.total_pg_fault = faults;
        mem.total_pg_maj_fault = major;
        m.memory = Some(mem).into();
        let mut p = v1::PidsStat::new();
        p.current = pids;
        m.pids = Some(p).into();
        ("io.containerd.cgroups.v1.Metrics", m.write_to_bytes())
    };
    let mut any = Any::new();
    any.type_url = type_url.to_owned();
    any.value = bytes.map_err(|e| e.to_string())?;
    Ok(any)
}
