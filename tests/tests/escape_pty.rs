//! Issue 21, item 5: `exec -t` must not open a node path the container chose. The container
//! replaces its /dev/ptmx with a symlink to a node FIFO (the canary); the daemon used to
//! open `/proc/<pid>/root/dev/ptmx` read-write, which followed the link onto the node. A
//! reader blocked on the FIFO wakes up when anything opens it for writing: it must not.

mod common;

use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::stream::{WsSession, exec_request};

#[tokio::test]
async fn exec_with_a_tty_does_not_open_a_node_file_the_container_links_as_ptmx() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let canary = node.dir().join("canary-fifo");
    nix::unistd::mkfifo(&canary, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let opened = Arc::new(AtomicBool::new(false));
    let reader = {
        let (canary, opened) = (canary.clone(), opened.clone());
        std::thread::spawn(move || {
            // Blocks until a writer opens the FIFO.
            let f = std::fs::File::open(&canary);
            opened.store(true, Ordering::SeqCst);
            drop(f);
        })
    };

    let cfg = node.pod_config("ptmx");
    let pod = node.run_pod(&cfg).await?;
    let ctr = node
        .run_container(
            &pod,
            &cfg,
            container_config("c", BUSYBOX, &["sleep", "3600"]),
        )
        .await?;
    let link = format!("rm -f /dev/ptmx && ln -s {} /dev/ptmx", canary.display());
    node.exec_ok(&ctr, &["sh", "-c", &link]).await?;

    let url = node
        .exec_url(exec_request(
            &ctr,
            &["sh", "-c", "tty; exit 3"],
            false,
            true,
        ))
        .await?;
    let out = match WsSession::open(&node, &url, &["v5.channel.k8s.io"]).await {
        Ok(s) => format!("{:?}", s.collect(Duration::from_secs(20)).await),
        Err(e) => format!("{e:#}"),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let was_opened = opened.load(Ordering::SeqCst);
    // Let the reader go in any case.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&canary);
    let _ = reader.join();
    ensure!(
        !was_opened,
        "the daemon opened the node's {} for the exec's terminal (exec: {out})",
        canary.display()
    );
    node.stop_and_remove(&pod).await?;
    Ok(())
}
