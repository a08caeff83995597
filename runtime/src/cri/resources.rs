//! Container resources between the CRI messages and the record: CreateContainer and
//! UpdateContainerResources read them, ContainerStatus reports them.

use cri_api::v1 as cri;

use crate::container::ContainerError;
use crate::container::model::Resources;

/// The cpuset files have the same names on v1 and v2: the CPU and memory-node sets travel in
/// the raw-file map, which `cgroup::apply` writes and the record keeps.
const CPUS: &str = "cpuset.cpus";
const MEMS: &str = "cpuset.mems";

/// A cpuset list: `0-3,8`.
fn cpu_list(field: &str, v: &str) -> Result<(), ContainerError> {
    let ok = v.split(',').all(|part| {
        let mut ends = part.splitn(2, '-');
        ends.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(())
    } else {
        Err(ContainerError::invalid(
            format!("linux.resources.{field}"),
            format!("{v:?} is not a list like 0-3,8"),
        ))
    }
}

/// The request's limits (CreateContainer, UpdateContainerResources); a malformed CPU or
/// memory-node list is InvalidArgument.
pub fn from_cri(l: cri::LinuxContainerResources) -> Result<Resources, ContainerError> {
    let mut unified: std::collections::BTreeMap<String, String> = l.unified.into_iter().collect();
    for (field, file, v) in [
        ("cpuset_cpus", CPUS, l.cpuset_cpus),
        ("cpuset_mems", MEMS, l.cpuset_mems),
    ] {
        if !v.is_empty() {
            cpu_list(field, &v)?;
            unified.insert(file.to_owned(), v);
        }
    }
    Ok(Resources {
        cpu_period: l.cpu_period,
        cpu_quota: l.cpu_quota,
        cpu_shares: l.cpu_shares,
        memory_limit: l.memory_limit_in_bytes,
        memory_swap_limit: l.memory_swap_limit_in_bytes,
        oom_score_adj: l.oom_score_adj,
        hugepage_limits: l
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        unified,
    })
}

/// The container's resources as ContainerStatus reports them.
pub fn to_cri(r: &Resources) -> cri::ContainerResources {
    let mut unified = r.unified.clone();
    let cpuset_cpus = unified.remove(CPUS).unwrap_or_default();
    let cpuset_mems = unified.remove(MEMS).unwrap_or_default();
    cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit,
            oom_score_adj: r.oom_score_adj,
            memory_swap_limit_in_bytes: r.memory_swap_limit,
            cpuset_cpus,
            cpuset_mems,
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|(size, limit)| cri::HugepageLimit {
                    page_size: size.clone(),
                    limit: *limit,
                })
                .collect(),
            unified: unified.into_iter().collect(),
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let l = cri::LinuxContainerResources {
            cpu_quota: 20_000,
            memory_limit_in_bytes: 1 << 26,
            unified: [("pids.max".to_owned(), "9".to_owned())].into(),
            ..Default::default()
        };
        let r = from_cri(l.clone()).unwrap();
        assert_eq!(to_cri(&r).linux.unwrap(), l);
        let cpuset = cri::LinuxContainerResources {
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            ..Default::default()
        };
        let r = from_cri(cpuset.clone()).unwrap();
        assert_eq!(r.unified[CPUS], "0-1,3");
        assert_eq!(to_cri(&r).linux.unwrap(), cpuset);
        for bad in ["0-", "a", "1,,2", "0-1-2", "1,", " 1"] {
            let l = cri::LinuxContainerResources {
                cpuset_cpus: bad.to_owned(),
                ..Default::default()
            };
            assert!(
                matches!(from_cri(l), Err(ContainerError::Invalid { .. })),
                "{bad:?}"
            );
        }
        let huge = cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        };
        let r = from_cri(huge.clone()).unwrap();
        assert_eq!(r.hugepage_limits["2MB"], 4 << 20);
        assert_eq!(to_cri(&r).linux.unwrap(), huge);
    }
}
