use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::convert;
use crate::container::psi::{Psi, PsiData};
use crate::container::stats::{ContainerStats, CpuUsage, FsUsage, IoUsage, MemoryUsage};

#[tracing::instrument(name = "ContainerStats", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    let c = svc.containers.clone();
    let stats = tokio::task::spawn_blocking(move || c.stats(&req.container_id))
        .await
        .expect("no panic")?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats(&stats)),
    })
}

fn value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

pub fn cpu(c: &CpuUsage) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: c.timestamp,
        usage_core_nano_seconds: value(c.usage_core_ns),
        usage_nano_cores: c.usage_nano_cores.and_then(value),
        psi: c.psi.map(psi),
    }
}

pub fn memory(m: &MemoryUsage) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: m.timestamp,
        working_set_bytes: value(m.working_set),
        available_bytes: m.available.and_then(value),
        usage_bytes: value(m.usage),
        rss_bytes: m.rss.and_then(value),
        page_faults: m.page_faults.and_then(value),
        major_page_faults: m.major_page_faults.and_then(value),
        psi: m.psi.map(psi),
    }
}

pub fn io(i: &IoUsage) -> cri::IoUsage {
    cri::IoUsage {
        timestamp: i.timestamp,
        psi: Some(psi(i.psi)),
    }
}

fn psi(p: Psi) -> cri::PsiStats {
    let data = |d: PsiData| cri::PsiData {
        total: d.total,
        avg10: f64::from(d.avg10) / 100.0,
        avg60: f64::from(d.avg60) / 100.0,
        avg300: f64::from(d.avg300) / 100.0,
    };
    cri::PsiStats {
        some: Some(data(p.some)),
        full: p.full.map(data),
    }
}

fn fs(f: &FsUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: f.timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: f.mountpoint.display().to_string(),
        }),
        used_bytes: value(f.used_bytes),
        inodes_used: value(f.inodes_used),
    }
}

pub fn container_stats(s: &ContainerStats) -> cri::ContainerStats {
    let r = &s.rec;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(convert::container_metadata(r)),
            labels: r.spec.labels.clone().into_iter().collect(),
            annotations: r.spec.annotations.clone().into_iter().collect(),
        }),
        cpu: s.cpu.as_ref().map(cpu),
        memory: s.memory.as_ref().map(memory),
        writable_layer: s.writable_layer.as_ref().map(fs),
        swap: None,
        io: s.io.as_ref().map(io),
    }
}
