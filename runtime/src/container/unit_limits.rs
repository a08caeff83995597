//! A container's limits as the resource properties of its systemd scope, for the systemd
//! cgroup driver. systemd writes these into the scope's cgroup when it makes it and again at
//! each `daemon-reload`, so every limit that systemd manages must be named here or it would
//! be reset to systemd's default; the cgroup files are still written by peapod afterwards
//! (exact values, and what systemd has no property for: huge pages, other unified keys).
//!
//! The conversions are the ones runc's systemd driver makes: `CPUWeight` from shares,
//! `CPUQuotaPerSecUSec` rounded up to systemd's 10 ms granularity, `MemorySwapMax` from the
//! CRI's memory+swap total, `TasksMax`, `AllowedCPUs` and `AllowedMemoryNodes` from the
//! unified `pids.max`, `cpuset.cpus` and `cpuset.mems`.

use super::cgroup::shares_to_weight;
use super::model::Resources;
use crate::sandbox::cgroup::systemd::Property;

const INFINITY: u64 = u64::MAX;

/// The scope properties for `r` on cgroup v1 or v2 (`MemorySwapMax` and the cpusets are
/// v2 properties).
pub fn unit_limits(r: &Resources, v2: bool) -> Vec<Property> {
    let mut out = Vec::new();
    if r.memory_limit > 0 {
        out.push(Property::U64("MemoryMax", r.memory_limit as u64));
        if v2 && r.memory_swap_limit > 0 {
            let swap = (r.memory_swap_limit - r.memory_limit).max(0);
            out.push(Property::U64("MemorySwapMax", swap as u64));
        }
    }
    if r.cpu_shares > 0 {
        let name = if v2 { "CPUWeight" } else { "CPUShares" };
        let value = if v2 {
            shares_to_weight(r.cpu_shares)
        } else {
            r.cpu_shares
        };
        out.push(Property::U64(name, value as u64));
    }
    let period = if r.cpu_period > 0 {
        r.cpu_period as u64
    } else {
        100_000
    };
    if r.cpu_period > 0 {
        out.push(Property::U64("CPUQuotaPeriodUSec", period));
    }
    if r.cpu_quota > 0 {
        let per_sec = (r.cpu_quota as u64 * 1_000_000 / period).div_ceil(10_000) * 10_000;
        out.push(Property::U64("CPUQuotaPerSecUSec", per_sec));
    }
    if let Some(v) = r.unified.get("pids.max") {
        match v.trim() {
            "max" => out.push(Property::U64("TasksMax", INFINITY)),
            n => {
                if let Ok(n) = n.parse() {
                    out.push(Property::U64("TasksMax", n));
                }
            }
        }
    }
    if v2 {
        for (file, name) in [
            ("cpuset.cpus", "AllowedCPUs"),
            ("cpuset.mems", "AllowedMemoryNodes"),
        ] {
            if let Some(mask) = r.unified.get(file).and_then(|l| bit_mask(l)) {
                out.push(Property::Bits(name, mask));
            }
        }
    }
    out
}

/// A cpuset list (`0-2,5`) as systemd's bit mask: bit n%8 of byte n/8 for n. `None` for a
/// list that is not one (the cgroup file write reports it).
fn bit_mask(list: &str) -> Option<Vec<u8>> {
    let mut mask: Vec<u8> = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse::<usize>().ok()?, hi.trim().parse().ok()?),
            None => {
                let n = part.trim().parse().ok()?;
                (n, n)
            }
        };
        if lo > hi || hi >= 1 << 16 {
            return None;
        }
        for n in lo..=hi {
            if mask.len() <= n / 8 {
                mask.resize(n / 8 + 1, 0);
            }
            mask[n / 8] |= 1 << (n % 8);
        }
    }
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(props: &[Property], name: &str) -> Option<Property> {
        props.iter().find(|p| p.name() == name).cloned()
    }

    #[test]
    fn limits_become_the_properties_runc_would_set() {
        let r = Resources {
            memory_limit: 64 << 20,
            memory_swap_limit: 96 << 20,
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            unified: [
                ("pids.max".to_owned(), "20".to_owned()),
                ("cpuset.cpus".to_owned(), "0-2,9".to_owned()),
                ("cpuset.mems".to_owned(), "0".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let p = unit_limits(&r, true);
        let u = |name, v| Some(Property::U64(name, v));
        assert_eq!(find(&p, "MemoryMax"), u("MemoryMax", 64 << 20));
        assert_eq!(find(&p, "MemorySwapMax"), u("MemorySwapMax", 32 << 20));
        assert_eq!(find(&p, "CPUWeight"), u("CPUWeight", 39));
        assert_eq!(
            find(&p, "CPUQuotaPeriodUSec"),
            u("CPUQuotaPeriodUSec", 100_000)
        );
        assert_eq!(
            find(&p, "CPUQuotaPerSecUSec"),
            u("CPUQuotaPerSecUSec", 500_000)
        );
        assert_eq!(find(&p, "TasksMax"), u("TasksMax", 20));
        assert_eq!(
            find(&p, "AllowedCPUs"),
            Some(Property::Bits(
                "AllowedCPUs",
                vec![0b0000_0111, 0b0000_0010]
            ))
        );
        assert_eq!(
            find(&p, "AllowedMemoryNodes"),
            Some(Property::Bits("AllowedMemoryNodes", vec![1]))
        );
        // v1: shares as they are, no swap or cpuset properties.
        let p = unit_limits(&r, false);
        assert_eq!(find(&p, "CPUShares"), u("CPUShares", 1024));
        assert_eq!(find(&p, "MemorySwapMax"), None);
        assert_eq!(find(&p, "AllowedCPUs"), None);
    }

    #[test]
    fn quotas_round_up_to_ten_milliseconds_and_absent_limits_are_left_out() {
        let r = Resources {
            cpu_quota: 12_345,
            cpu_period: 50_000,
            ..Default::default()
        };
        let p = unit_limits(&r, true);
        // 12345/50000 of a second = 246.9 ms → 250 ms.
        assert_eq!(
            find(&p, "CPUQuotaPerSecUSec"),
            Some(Property::U64("CPUQuotaPerSecUSec", 250_000))
        );
        assert_eq!(find(&p, "MemoryMax"), None);
        assert_eq!(find(&p, "TasksMax"), None);
        assert!(unit_limits(&Resources::default(), true).is_empty());
        let max = Resources {
            unified: [("pids.max".to_owned(), "max".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(
            unit_limits(&max, true),
            vec![Property::U64("TasksMax", INFINITY)]
        );
    }

    #[test]
    fn cpu_lists_are_bit_masks() {
        assert_eq!(bit_mask("0"), Some(vec![1]));
        assert_eq!(bit_mask("8-9"), Some(vec![0, 3]));
        assert_eq!(bit_mask("1,3"), Some(vec![0b1010]));
        assert_eq!(bit_mask(""), Some(vec![]));
        assert_eq!(bit_mask("3-1"), None);
        assert_eq!(bit_mask("x"), None);
    }
}
