//! RuntimeDefault seccomp refuses new namespaces (issue 21, item 8): a container without
//! CAP_SYS_ADMIN can neither clone nor unshare into a user (or network, …) namespace, where
//! it would get the capabilities to configure links, nftables and more of the kernel's attack
//! surface. clone3 answers ENOSYS so that libc falls back to clone; forks and threads work.
//! With CAP_SYS_ADMIN a container may make namespaces, as under containerd.
//!
//! Canary: the node's network namespace and its links, which the attack's own namespace
//! would shadow; the probe (`peapod-probe newns`) runs inside the container.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{Capability, Int64Value, Mount, SecurityProfile};
use peapod_tests::Node;
use peapod_tests::containers::{BUSYBOX, container_config, security};

const EPERM: &str = "errno 1";
const ENOSYS: &str = "errno 38";

/// The probe and the shared libraries it needs (from `ldd`), each bound read-only at its own
/// path, so that the node's dynamically linked probe runs in the busybox image.
fn probe_mounts(node: &Node) -> Result<Vec<Mount>> {
    let probe = node.probe_path().display().to_string();
    let out = std::process::Command::new("ldd")
        .arg(&probe)
        .output()
        .context("ldd")?;
    let text = String::from_utf8(out.stdout)?;
    let mut files = vec![probe];
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux….so.2 (0x…)"
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_owned());
        }
    }
    ensure!(files.len() > 2, "ldd found no libraries: {text}");
    Ok(files
        .into_iter()
        .map(|f| Mount {
            container_path: f.clone(),
            host_path: f,
            readonly: true,
            ..Default::default()
        })
        .collect())
}

async fn newns(node: &Node, id: &str, call: &str, flags: &str) -> Result<String> {
    let probe = node.probe_path().display().to_string();
    let out = node.exec_ok(id, &[&probe, "newns", call, flags]).await?;
    Ok(out.trim().to_owned())
}

fn runtime_default() -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: 0, // RuntimeDefault
        localhost_ref: String::new(),
    })
}

#[tokio::test]
async fn runtime_default_refuses_new_namespaces_without_cap_sys_admin() -> Result<()> {
    // The probe of PEAPOD_BIN_DIR, which runs inside the container.
    let node = Node::builder().start().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("ns");
    let pod = node.run_pod(&cfg).await?;
    let node_links = node.exec(&["ip", "-o", "link"]).await?;

    let mut c = container_config("nocaps", BUSYBOX, &["sleep", "1000"]);
    c.mounts = probe_mounts(&node)?;
    let sc = security(&mut c);
    sc.run_as_user = Some(Int64Value { value: 1000 });
    sc.capabilities = Some(Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    sc.no_new_privs = true;
    sc.seccomp = runtime_default();
    let id = node.run_container(&pod, &cfg, c).await?;

    let mut wrong = Vec::new();
    for (call, flags, want) in [
        ("clone", "user,net", EPERM),
        ("clone", "user", EPERM),
        ("clone", "net", EPERM),
        ("clone", "mnt", EPERM),
        ("clone3", "user", ENOSYS),
        ("clone3", "user,net", ENOSYS),
        ("clone3", "", ENOSYS),
        ("unshare", "user,net", EPERM),
        ("unshare", "user", EPERM),
        ("clone", "", "ok"),
        ("thread", "", "ok"),
    ] {
        let got = newns(&node, &id, call, flags).await?;
        if got != want {
            wrong.push(format!("{call}({flags}): {got}, not {want}"));
        }
    }
    let status = node.exec_ok(&id, &["cat", "/proc/self/status"]).await?;
    ensure!(
        wrong.is_empty(),
        "as uid 1000 without caps under RuntimeDefault: {wrong:?}\n{status}"
    );
    // The attack as a shell would run it: a user namespace with a network namespace in which
    // to make links.
    let attack = node
        .exec_sync(
            &id,
            &[
                "unshare", "-U", "-r", "-n", "ip", "link", "add", "canary0", "type", "dummy",
            ],
            10,
        )
        .await?;
    ensure!(
        attack.exit_code != 0,
        "unshare -U -r -n succeeded: {}",
        String::from_utf8_lossy(&attack.stdout)
    );
    ensure!(
        node.exec(&["ip", "-o", "link"]).await? == node_links,
        "the node's links changed"
    );

    // With CAP_SYS_ADMIN (as root), namespaces are the container's to make, as in containerd.
    let mut c = container_config("admin", BUSYBOX, &["sleep", "1000"]);
    c.mounts = probe_mounts(&node)?;
    let sc = security(&mut c);
    sc.capabilities = Some(Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    sc.seccomp = runtime_default();
    let admin = node.run_container(&pod, &cfg, c).await?;
    for (call, flags) in [
        ("clone", "user,net"),
        ("clone3", "user,net"),
        ("unshare", "user,net"),
        ("thread", ""),
    ] {
        let got = newns(&node, &admin, call, flags).await?;
        ensure!(got == "ok", "{call}({flags}) with CAP_SYS_ADMIN: {got}");
    }
    Ok(())
}
