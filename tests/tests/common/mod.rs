//! Shared by the integration tests: a node with the probe Cargo built for this test crate.
#![allow(dead_code)]

use anyhow::Result;
use peapod_tests::{Node, NodeBuilder};

/// The probe binary, built by Cargo for these tests.
pub const PROBE: &str = env!("CARGO_BIN_EXE_peapod-probe");

/// A node builder that knows the probe.
pub fn builder() -> NodeBuilder {
    Node::builder().probe(PROBE)
}

/// The node gets the address 192.0.2.1 (on a veth) and a default route through it, as a
/// real node has: the node's own connections to a cluster IP need a route to leave by.
pub async fn node_with_uplink() -> Result<Node> {
    let commands: &[&[&str]] = &[
        &[
            "ip", "link", "add", "name", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ],
        &["ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0"],
        &["ip", "link", "set", "uplink1", "up"],
        &["ip", "link", "set", "uplink0", "up"],
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "192.0.2.254",
            "dev",
            "uplink0",
        ],
    ];
    let mut builder = builder();
    for command in commands {
        builder = builder.setup(command);
    }
    builder.start().await
}

/// A node with the daemon running on its defaults.
pub async fn node() -> Result<Node> {
    builder().start().await
}

/// Fails unless `result` is an error with status `code`.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    what: &str,
) -> Result<()> {
    match result {
        Ok(value) => anyhow::bail!("{what}: expected {code:?}, got a success: {value:?}"),
        Err(status) if status.code() == code => Ok(()),
        Err(status) => anyhow::bail!(
            "{what}: expected {code:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// A node whose state dir is a tmpfs of `size` (e.g. `512k`), with the daemon started on it;
/// and the state dir's path as the node sees it.
pub async fn node_on_small_state_dir(size: &str) -> Result<(Node, String)> {
    let mut node = builder().without_daemon().start().await?;
    let state = node.state_dir().display().to_string();
    node.exec(&["mkdir", "-p", &state]).await?;
    node.exec(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        &format!("size={size}"),
        "tmpfs",
        &state,
    ])
    .await?;
    node.start_daemon().await?;
    Ok((node, state))
}

/// Fills the state dir to the last byte (`full = true`), or frees it again.
pub async fn fill_state_dir(node: &Node, state: &str, full: bool) -> Result<()> {
    let script = if full {
        format!("dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null; true")
    } else {
        format!("rm -f {state}/filler")
    };
    node.exec(&["sh", "-c", &script]).await?;
    Ok(())
}

/// Makes the state dir read-only (a read-only bind mount over it: the daemon keeps its fds,
/// as on a remount), or writable again.
pub async fn state_dir_read_only(node: &Node, state: &str, read_only: bool) -> Result<()> {
    if read_only {
        node.exec(&["mount", "--bind", state, state]).await?;
        node.exec(&["mount", "-o", "remount,bind,ro", state])
            .await?;
    } else {
        node.exec(&["umount", state]).await?;
    }
    Ok(())
}
