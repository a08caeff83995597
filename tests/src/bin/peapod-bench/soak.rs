//! Soak: `--clients` clients churn pods (run, stop, remove) for `--soak-secs`; before and
//! after, the daemon's open fds, RSS and threads and the node's kernel objects (links, mounts,
//! netns pins) are counted. Afterwards fds, threads and kernel objects must be back at their
//! baseline. RSS is judged against a warm-up phase (a fifth of the time): the allocator keeps
//! per-thread arenas once the blocking pool has grown, which is a plateau, not a leak; RSS
//! that keeps growing after the warm-up is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::task::JoinSet;

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

fn figures(pid: u32) -> Figures {
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
    }
}

/// Waits for what settles by itself after load: background link deletion, and idle
/// blocking-pool threads (tokio lets them go after 10 s).
async fn settled(pid: u32, baseline: Figures) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = figures(pid);
        let back = now.fds <= baseline.fds
            && now.threads <= baseline.threads
            && now.links <= baseline.links
            && now.mounts <= baseline.mounts
            && now.pins <= baseline.pins;
        if back || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn soak(
    pods: &Arc<Pods>,
    client: &Client,
    clients: usize,
    secs: u64,
    daemon_pid: u32,
) -> Result<()> {
    // One cycle first, so that what is made once (the bridge, the nft table, the reaper
    // thread) is in the baseline.
    let mut c = client.clone();
    let (id, _) = pods.run(&mut c).await?;
    pods.stop(&mut c, &id).await?;
    pods.remove(&mut c, &id).await?;
    let baseline = settled(daemon_pid, figures(daemon_pid)).await;

    let warm_secs = (secs / 5).max(1);
    let (warm_cycles, _) = churn(pods, client, clients, warm_secs, baseline, daemon_pid).await?;
    let warm = settled(daemon_pid, baseline).await;
    let (n, peak) = churn(
        pods,
        client,
        clients,
        secs - warm_secs.min(secs),
        warm,
        daemon_pid,
    )
    .await?;
    let n = n + warm_cycles;
    let after = settled(daemon_pid, baseline).await;
    report(clients, secs, n, [baseline, warm, peak, after])?;
    // The allocator may still shuffle a little: allow 10% or 1 MiB over the warmed-up RSS.
    let rss_ok = after.rss_kib <= (warm.rss_kib * 11 / 10).max(warm.rss_kib + 1024);
    let kernel_ok = after.links <= baseline.links
        && after.mounts <= baseline.mounts
        && after.pins <= baseline.pins;
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
async fn churn(
    pods: &Arc<Pods>,
    client: &Client,
    clients: usize,
    secs: u64,
    start: Figures,
    daemon_pid: u32,
) -> Result<(usize, Figures)> {
    let cycles = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..clients.max(1) {
        let (pods, cycles, mut client) = (Arc::clone(pods), Arc::clone(&cycles), client.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let (id, _) = pods.run(&mut client).await?;
                pods.stop(&mut client, &id).await?;
                pods.remove(&mut client, &id).await?;
                cycles.fetch_add(1, Ordering::Relaxed);
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
                let now = figures(daemon_pid);
                peak.fds = peak.fds.max(now.fds);
                peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                peak.threads = peak.threads.max(now.threads);
            }
        }
    }
    Ok((cycles.load(Ordering::Relaxed), peak))
}

fn report(clients: usize, secs: u64, n: usize, f: [Figures; 4]) -> Result<()> {
    let [baseline, warm, peak, after] = f;
    println!(
        "soak: {clients} clients, {secs} s, {n} run+stop+remove cycles ({:.0}/s)",
        n as f64 / secs as f64
    );
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10}",
        "", "baseline", "warmed up", "peak", "after"
    );
    let rows: [(&str, [u64; 4]); 6] = [
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
