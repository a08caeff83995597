//! `peapod serve`: one owner of the state dir, the CRI socket, recovery, then serving until
//! SIGTERM/SIGINT. Pods keep running when the daemon stops.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use cri_api::v1::image_service_server::ImageServiceServer;
use cri_api::v1::runtime_service_server::RuntimeServiceServer;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::config::Config;
use crate::container::Containers;
use crate::cri::CriService;
use crate::explain::NetworkApi;
use crate::image::ImageStore;
use crate::network::NodeNetwork;
use crate::nodes::NodeTable;
use crate::nodes::api::NodesApi;
use crate::sandbox::cgroup::Cgroups;
use crate::sandbox::{NETNS_DIR, Sandboxes, pins};
use crate::services::ServiceTable;
use crate::services::api::ServicesApi;
use peapod_proto::net::v1::network_server::NetworkServer;
use peapod_proto::net::v1::nodes_server::NodesServer;
use peapod_proto::net::v1::services_server::ServicesServer;

fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// How long a start waits for a lock that is held.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// An exclusive lock on `f`, waiting up to [`LOCK_PATIENCE`] while another holds it. A daemon
/// that was just killed may still hold its locks for a moment through a child it forked and
/// that has not exec'd yet (a spawn's pre-exec steps: joining a cgroup, namespaces): the lock
/// goes with the child's exec. A restart right after a crash must not fail on that.
fn lock_soon(mut f: fs::File) -> Result<Flock<fs::File>, nix::errno::Errno> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                f = back;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// Holds the state dir for this process's lifetime; a second daemon is refused.
pub fn lock_state_dir(state_dir: &Path) -> anyhow::Result<Flock<fs::File>> {
    let path = state_dir.join("peapod.lock");
    // Held read-only: a lock needs no write access, and a writer would keep the state dir's
    // filesystem from being remounted read-only.
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|_| fs::File::open(&path))
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock_soon(f).map_err(|e| {
        anyhow::anyhow!(
            "another peapod is running on state dir {} (lock {}): {e}",
            state_dir.display(),
            path.display()
        )
    })
}

/// Holds the CRI socket's path for this process's lifetime (a lock file beside it,
/// `<socket>.lock`): a daemon on another state dir but the same socket is refused rather than
/// taking the socket from under the one serving there.
pub fn lock_socket(sock: &Path) -> anyhow::Result<Flock<fs::File>> {
    if let Some(dir) = sock.parent() {
        make_dir(dir, 0o755)?;
    }
    let mut name = sock.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock_soon(f).map_err(|e| {
        anyhow::anyhow!(
            "another peapod is serving on socket {} (lock {}): {e}",
            sock.display(),
            path.display()
        )
    })
}

fn bind_socket(cfg: &Config) -> anyhow::Result<UnixListener> {
    let sock = &cfg.socket;
    // We hold the socket's lock, so a socket file left here is a dead daemon's.
    match fs::remove_file(sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove stale {}", sock.display()));
        }
        _ => {}
    }
    let l = UnixListener::bind(sock).with_context(|| format!("cannot bind {}", sock.display()))?;
    fs::set_permissions(sock, fs::Permissions::from_mode(0o660))?;
    if let Some(group) = &cfg.socket_group {
        let g = nix::unistd::Group::from_name(group)?
            .with_context(|| format!("socket_group {group:?} does not exist"))?;
        nix::unistd::chown(sock, None, Some(g.gid))?;
    }
    Ok(l)
}

/// After SIGTERM, how long calls in flight have to finish before the daemon stops anyway:
/// its clients keep their connections (the kubelet always does, with an event stream under
/// Evented PLEG), so waiting for them all to hang up would never end (systemd SIGKILLs after
/// 90 s). What a call leaves half done is what a crash leaves, which start-up rolls back.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping, pods keep running"),
        _ = int.recv() => info!("SIGINT: stopping, pods keep running"),
    }
}

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    make_dir(&cfg.state_dir, 0o700)?;
    fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o700))?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let _socket_lock = lock_socket(&cfg.socket)?;
    make_dir(&cfg.run_dir, 0o700)?;
    if !cfg.pause_path.is_file() {
        bail!(
            "pause binary {} not found (set pause_path or --pause-path)",
            cfg.pause_path.display()
        );
    }
    pins::ensure_shared_dir(Path::new(NETNS_DIR))
        .with_context(|| format!("cannot prepare {NETNS_DIR}"))?;
    let ns_dir = cfg.run_dir.join("ns");
    pins::ensure_shared_dir(&ns_dir)
        .with_context(|| format!("cannot prepare {}", ns_dir.display()))?;

    let net = Arc::new(NodeNetwork::new(&cfg)?);
    let cgroups = Cgroups::for_node(&cfg)?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        socket = %cfg.socket.display(),
        state_dir = %cfg.state_dir.display(),
        pod_cidr = %net.cidr(),
        bridge = %cfg.bridge,
        mtu = net.mtu(),
        cgroup = cgroups.version(),
        cgroup_driver = ?cgroups.driver(),
        "peapod starting"
    );
    let images = Arc::new(
        ImageStore::open(&cfg.state_dir, cfg.registries.clone())
            .context("cannot open the image store")?,
    );
    images
        .collect_garbage()
        .context("cannot clean the image store")?;
    let sandboxes = Sandboxes::new(cfg.clone(), net.clone(), cgroups);
    let exe = std::env::current_exe().context("cannot find the peapod binary")?;
    let exe = crate::monitor::binary_beside(&exe);
    let exe = crate::monitor::sealed::Binary::sealed(exe.clone()).unwrap_or_else(|e| {
        tracing::warn!(
            error = %crate::errors::chain(&e),
            "containers can reach the monitor binary through /proc/<pid>/exe"
        );
        crate::monitor::sealed::Binary::unsealed(exe)
    });
    info!(monitor = %exe.path().display(), sealed = exe.is_sealed(), "containers' monitors");
    let containers = Containers::new(cfg.clone(), sandboxes.clone(), images.clone(), exe);
    sandboxes.recover().await?;
    {
        let containers = containers.clone();
        tokio::task::spawn_blocking(move || containers.recover())
            .await
            .expect("no panic")?;
    }
    sandboxes.collect_garbage().await;
    {
        let net = net.clone();
        let _ = tokio::task::spawn_blocking(move || net.ensure()).await;
    }
    let nodes = Arc::new(NodeTable::open(&cfg, net.clone())?);
    match nodes.sync().await {
        Ok(n) => info!(peers = n, mode = ?cfg.mode, "routes to the peers in place"),
        Err(e) => tracing::error!(error = %crate::errors::chain(&e), "cannot route to the peers"),
    }
    let services = Arc::new(ServiceTable::open(&cfg.state_dir, net.clone())?);
    match services.sync().await {
        Ok(n) => info!(services = n, "services in place"),
        // Served anyway: pods need no Service, and each change syncs what it touches.
        Err(e) => tracing::error!(error = %crate::errors::chain(&e), "cannot program the services"),
    }
    if let Some(kubeconfig) = &cfg.kubeconfig {
        // Runs beside the CRI; it logs and retries whatever fails, the API server away too.
        crate::kube::Watch {
            kubeconfig: kubeconfig.clone(),
            node_name: cfg.node_name.clone(),
            services: services.clone(),
            nodes: nodes.clone(),
        }
        .spawn();
    }
    let managed = cfg.kubeconfig.is_some();

    let streaming =
        crate::streaming::StreamServer::start(&cfg, containers.clone(), sandboxes.clone()).await?;
    let listener = bind_socket(&cfg)?;
    info!(socket = %cfg.socket.display(), "serving CRI");
    let svc = CriService {
        sandboxes: sandboxes.clone(),
        containers,
        net,
        images,
        streaming,
    };
    let signalled = Arc::new(tokio::sync::Notify::new());
    let server = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(svc.clone()))
        .add_service(ImageServiceServer::new(svc))
        .add_service(NetworkServer::new(NetworkApi {
            sandboxes: sandboxes.clone(),
            services: services.clone(),
            nodes: nodes.clone(),
            bridge: cfg.bridge.clone(),
        }))
        .add_service(NodesServer::new(NodesApi {
            table: nodes,
            managed,
        }))
        .add_service(
            // A whole node's Services in one ApplyServices: 10,000 are ~2 MiB.
            ServicesServer::new(ServicesApi {
                table: services,
                managed,
            })
            .max_decoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            shutdown_signal().await;
            signalled.notify_one();
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r.context("CRI server failed")?,
        () = async {
            signalled.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => info!("clients still connected after {SHUTDOWN_GRACE:?}: stopping anyway"),
    }
    let _ = fs::remove_file(&cfg.socket);
    tokio::task::spawn_blocking(move || sandboxes.settle())
        .await
        .ok();
    info!("stopped");
    Ok(())
}
