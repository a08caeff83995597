//! Soak: `--clients` clients churn pods for `--soak-secs`, each with one container when the
//! runtime has the image (run, create, start, sometimes ExecSync, then stop and remove — the
//! container explicitly on every other cycle, else with its pod); before and after, the
//! daemon's open fds, RSS and threads and the node's kernel objects (links, mounts, netns
//! pins, processes, cgroups under the bench's cgroup parent) are counted. Afterwards fds, threads and kernel objects must be back at their
//! baseline. RSS is judged against a warm-up phase (a fifth of the time): the allocator keeps
//! per-thread arenas once the blocking pool has grown, which is a plateau, not a leak; RSS
//! that keeps growing after the warm-up is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::task::JoinSet;

use super::containers::Containers;
use super::{Client, Pods};

/// What is counted before and after.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Figures {
    fds: usize,
    rss_kib: u64,
    threads: u64,
    links: usize,
    mounts: usize,
    pins: usize,
    /// Processes in the node's pid namespace (the bench runs in it): pauses, monitors,
    /// containers.
    procs: usize,
    /// Cgroups under the bench's cgroup parent (memory hierarchy): pods' and containers'.
    cgroups: usize,
}

fn count_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| 1 + count_dirs(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn count_lines(path: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn figures(pid: u32, cgroups: &std::path::Path) -> Figures {
    Figures {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        rss_kib: status_field(pid, "VmRSS:"),
        threads: status_field(pid, "Threads:"),
        // Interfaces and mounts as the daemon sees them (the node's).
        links: count_lines(&format!("/proc/{pid}/net/dev")).saturating_sub(2),
        mounts: count_lines(&format!("/proc/{pid}/mountinfo")),
        pins: std::fs::read_dir("/run/netns")
            .map(|d| d.count())
            .unwrap_or(0),
        procs: std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .count()
            })
            .unwrap_or(0),
        cgroups: count_dirs(cgroups),
    }
}

/// Waits for what settles by itself after load: background link deletion, and idle
/// blocking-pool threads (tokio lets them go after 10 s).
async fn settled(s: &Soak<'_>, baseline: Figures) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = s.figures();
        let back = now.fds <= baseline.fds
            && now.threads <= baseline.threads
            && kernel_back(now, baseline);
        if back || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn kernel_back(now: Figures, baseline: Figures) -> bool {
    now.links <= baseline.links
        && now.mounts <= baseline.mounts
        && now.pins <= baseline.pins
        && now.procs <= baseline.procs
        && now.cgroups <= baseline.cgroups
}

/// What one soak churns with, and where it looks.
pub struct Soak<'a> {
    pub pods: &'a Arc<Pods>,
    /// Set when the runtime has the container image: every cycle gets a container.
    pub containers: Option<Arc<Containers>>,
    pub client: &'a Client,
    pub clients: usize,
    pub daemon_pid: u32,
    /// The bench's cgroup parent in the memory hierarchy.
    pub cgroup_dir: std::path::PathBuf,
}

impl Soak<'_> {
    fn figures(&self) -> Figures {
        figures(self.daemon_pid, &self.cgroup_dir)
    }

    async fn cycle(&self, client: &mut Client, n: usize) -> Result<()> {
        cycle(self.pods, self.containers.as_deref(), client, n).await
    }
}

async fn cycle(
    pods: &Pods,
    containers: Option<&Containers>,
    client: &mut Client,
    n: usize,
) -> Result<()> {
    match containers {
        Some(c) => c.soak_cycle(pods, client, n).await,
        None => {
            let (id, _) = pods.run(client).await?;
            pods.stop(client, &id).await?;
            pods.remove(client, &id).await?;
            Ok(())
        }
    }
}

pub async fn soak(s: &Soak<'_>, secs: u64) -> Result<()> {
    // A few cycles first (each kind of cycle), so that what is made once (the bridge, the
    // nft table, the reaper thread, the run dirs) is in the baseline.
    let mut c = s.client.clone();
    for n in 0..4 {
        s.cycle(&mut c, n).await?;
    }
    let first = s.figures();
    let baseline = settled(s, first).await;

    let warm_secs = (secs / 5).max(1);
    let (warm_cycles, _) = churn(s, warm_secs, baseline).await?;
    let warm = settled(s, baseline).await;
    let (n, peak) = churn(s, secs - warm_secs.min(secs), warm).await?;
    let n = n + warm_cycles;
    let after = settled(s, baseline).await;
    let what = if s.containers.is_some() {
        "pod+container cycles"
    } else {
        "run+stop+remove cycles"
    };
    report(s.clients, secs, n, what, [baseline, warm, peak, after])?;
    // The allocator may still shuffle a little: allow 10% or 1 MiB over the warmed-up RSS.
    let rss_ok = after.rss_kib <= (warm.rss_kib * 11 / 10).max(warm.rss_kib + 1024);
    let kernel_ok = kernel_back(after, baseline);
    if after.fds > baseline.fds || after.threads > baseline.threads || !kernel_ok || !rss_ok {
        bail!(
            "soak: the daemon or the node did not return to its baseline: after {after:?}, \
             baseline {baseline:?}, warmed up {warm:?}"
        );
    }
    println!("soak: back at the baseline");
    Ok(())
}

/// Churns for `secs`; returns the cycles done and the peak figures seen.
async fn churn(s: &Soak<'_>, secs: u64, start: Figures) -> Result<(usize, Figures)> {
    let cycles = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..s.clients.max(1) {
        let (pods, containers) = (Arc::clone(s.pods), s.containers.clone());
        let (cycles, mut client) = (Arc::clone(&cycles), s.client.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let n = cycles.fetch_add(1, Ordering::Relaxed);
                cycle(&pods, containers.as_deref(), &mut client, n).await?;
            }
            anyhow::Ok(())
        });
    }
    let mut peak = start;
    while !tasks.is_empty() {
        tokio::select! {
            done = tasks.join_next() => {
                if let Some(r) = done {
                    r??;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let now = s.figures();
                peak.fds = peak.fds.max(now.fds);
                peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                peak.threads = peak.threads.max(now.threads);
                peak.procs = peak.procs.max(now.procs);
                peak.cgroups = peak.cgroups.max(now.cgroups);
            }
        }
    }
    Ok((cycles.load(Ordering::Relaxed), peak))
}

fn report(clients: usize, secs: u64, n: usize, what: &str, f: [Figures; 4]) -> Result<()> {
    let [baseline, warm, peak, after] = f;
    println!(
        "soak: {clients} clients, {secs} s, {n} {what} ({:.0}/s)",
        n as f64 / secs as f64
    );
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10}",
        "", "baseline", "warmed up", "peak", "after"
    );
    let rows: [(&str, [u64; 4]); 8] = [
        (
            "daemon fds",
            [baseline.fds, warm.fds, peak.fds, after.fds].map(|v| v as u64),
        ),
        (
            "daemon RSS KiB",
            [baseline.rss_kib, warm.rss_kib, peak.rss_kib, after.rss_kib],
        ),
        (
            "daemon threads",
            [baseline.threads, warm.threads, peak.threads, after.threads],
        ),
        (
            "node links",
            [baseline.links, warm.links, 0, after.links].map(|v| v as u64),
        ),
        (
            "node mounts",
            [baseline.mounts, warm.mounts, 0, after.mounts].map(|v| v as u64),
        ),
        (
            "netns pins",
            [baseline.pins, warm.pins, 0, after.pins].map(|v| v as u64),
        ),
        (
            "node processes",
            [baseline.procs, warm.procs, peak.procs, after.procs].map(|v| v as u64),
        ),
        (
            "pod+ctr cgroups",
            [baseline.cgroups, warm.cgroups, peak.cgroups, after.cgroups].map(|v| v as u64),
        ),
    ];
    for (what, [b, w, p, a]) in rows {
        let p = if p == 0 {
            "-".to_owned()
        } else {
            p.to_string()
        };
        println!("{what:<18} {b:>10} {w:>10} {p:>10} {a:>10}");
    }
    Ok(())
}
