//! Issue 21, item 12: a slowloris against the streaming server, from the node's own network
//! namespace (where a hostNetwork pod is), does not stop exec. The canary is the service
//! itself: an exec through the streaming server succeeds within seconds while 600 idle
//! connections (half of them with half a request line) are held open, an exec session that
//! was running before them and outlasts the header timeout is not cut, and the server closes
//! every idle connection within its (short) header timeout.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use peapod_tests::Node;
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::stream::{WsSession, exec_request, ws_exec};

/// Idle connections of the attack.
const IDLE: usize = 600;
/// The daemon's header timeout is 5 s; a legitimate exec must not wait anywhere near that.
const EXEC_WITHIN: Duration = Duration::from_secs(4);
/// Every idle connection is closed by then, counted from the end of its wave (the header
/// timeout runs from the accept, which a loaded machine may make late; peapod used to keep
/// them 10 s).
const IDLE_CLOSED_WITHIN: Duration = Duration::from_secs(9);
/// A session longer than the header timeout.
const LONG_SESSION: &str = "sleep 7; echo survived";

/// `n` TCP connections to `addr` from inside the node's network namespace (one thread joins
/// it); every other one sends half a request line, the rest nothing.
async fn idle_connections(node: &Node, addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", node.pid1()))?;
    let thread = std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("idle connection {i}"))?;
            if i % 2 == 1 {
                s.write_all(b"GET /exec/")?;
            }
            out.push(s);
        }
        Ok(out)
    });
    tokio::task::spawn_blocking(move || thread.join().expect("the connecting thread")).await?
}

/// How many of `conns` the server has not closed by `deadline`.
async fn still_open(conns: Vec<TcpStream>, deadline: Instant) -> Result<usize> {
    tokio::task::spawn_blocking(move || -> Result<usize> {
        let mut open = 0;
        let mut buf = [0u8; 512];
        for mut c in conns {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                c.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue, // a 408 before the close
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        open += 1;
                        break;
                    }
                    Err(_) => break, // reset
                }
            }
        }
        Ok(open)
    })
    .await?
}

#[tokio::test]
async fn idle_connections_do_not_stop_exec() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("slowloris");
    let pod = node.run_pod(&cfg).await?;
    let ctr = node
        .run_container(
            &pod,
            &cfg,
            container_config("sleeper", BUSYBOX, &["sleep", "3600"]),
        )
        .await?;

    // A session that runs before the attack and outlasts the header timeout.
    let long_url = node
        .exec_url(exec_request(
            &ctr,
            &["sh", "-c", LONG_SESSION],
            false,
            false,
        ))
        .await?;
    let long = WsSession::open(&node, &long_url, &["v4.channel.k8s.io"]).await?;
    let long = tokio::spawn(long.collect(Duration::from_secs(30)));
    let long_started = Instant::now();

    let idle = idle_connections(&node, long_url.addr, IDLE).await?;
    let attacked = Instant::now();
    let out = tokio::time::timeout(
        EXEC_WITHIN,
        ws_exec(&node, &ctr, &["echo", "ok"], "v4.channel.k8s.io", None),
    )
    .await
    .with_context(|| format!("no exec within {EXEC_WITHIN:?} under {IDLE} idle connections"))?
    .with_context(|| format!("exec under {IDLE} idle connections"))?;
    ensure!(out.stdout() == "ok\n", "{out:?}");
    ensure!(out.exit_code()? == 0, "{out:?}");

    // A second wave while the first is held: still served.
    let more = idle_connections(&node, long_url.addr, IDLE).await?;
    let attacked_again = Instant::now();
    let out = tokio::time::timeout(
        EXEC_WITHIN,
        ws_exec(&node, &ctr, &["echo", "again"], "v5.channel.k8s.io", None),
    )
    .await
    .context("no exec within the second wave")??;
    ensure!(out.stdout() == "again\n", "{out:?}");

    let out = long.await?.context("the long session")?;
    ensure!(
        out.stdout() == "survived\n" && out.exit_code()? == 0,
        "the session running since before the attack was cut after {:?}: {out:?}",
        long_started.elapsed()
    );

    let open = still_open(idle, attacked + IDLE_CLOSED_WITHIN).await?
        + still_open(more, attacked_again + IDLE_CLOSED_WITHIN).await?;
    ensure!(
        open == 0,
        "{open} of {} idle connections still open after {IDLE_CLOSED_WITHIN:?}",
        2 * IDLE
    );

    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
