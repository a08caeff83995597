//! peapod: a Kubernetes CRI runtime whose pods come with their networking built in.

use peapod::{
    client, config, ctr_client, daemon, explain, image_cmd, monitor, nodes, sandbox, services,
};

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use config::{CgroupDriver, DEFAULT_CONFIG, FileConfig, LogFormat};

#[derive(Parser)]
#[command(
    name = "peapod",
    version,
    about = "A Kubernetes CRI runtime with built-in pod networking"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: serve the CRI (RuntimeService, ImageService) on a unix socket.
    Serve(ServeArgs),
    /// Roll back interrupted pods and remove what carries peapod's names but belongs to no
    /// pod: pause processes, namespace pins, host links, IP leases, cgroups, sandbox dirs.
    /// The daemon does the same at start-up; this needs it stopped (it takes its lock).
    Gc {
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Talk to a running daemon about pod sandboxes.
    Pod {
        #[command(flatten)]
        socket: SocketArg,
        #[command(subcommand)]
        cmd: client::PodCmd,
    },
    /// Run and inspect containers of a running daemon's pods.
    Ctr {
        #[command(flatten)]
        socket: SocketArg,
        #[command(subcommand)]
        cmd: ctr_client::CtrCmd,
    },
    /// The peer nodes of a running daemon (routes to their pod CIDRs).
    Node {
        #[command(flatten)]
        socket: SocketArg,
        #[command(subcommand)]
        cmd: nodes::cmd::NodeCmd,
    },
    /// A running daemon's network explained from the live kernel: `explain` a pod's path
    /// to an address, `graph` the node's topology.
    Net {
        #[command(flatten)]
        socket: SocketArg,
        #[command(subcommand)]
        cmd: explain::cmd::NetCmd,
    },
    /// Services (virtual IPs) of a running daemon.
    Service {
        #[command(flatten)]
        socket: SocketArg,
        #[command(subcommand)]
        cmd: services::cmd::ServiceCmd,
    },
    /// Import and list images in the image store.
    Image {
        /// Persistent state dir holding the image store.
        #[arg(
            long,
            global = true,
            default_value = "/var/lib/peapod",
            env = "PEAPOD_STATE_DIR"
        )]
        state_dir: PathBuf,
        /// CRI socket of the daemon (pull, rm).
        #[arg(
            long,
            global = true,
            default_value = "/run/peapod/peapod.sock",
            env = "PEAPOD_SOCKET"
        )]
        socket: PathBuf,
        #[command(subcommand)]
        cmd: image_cmd::ImageCmd,
    },
}

/// The daemon's socket, for the client commands.
#[derive(clap::Args)]
struct SocketArg {
    /// CRI socket of the daemon.
    #[arg(
        long,
        global = true,
        default_value = "/run/peapod/peapod.sock",
        env = "PEAPOD_SOCKET"
    )]
    socket: PathBuf,
}

/// Every flag overrides the same key of the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; every key optional, unknown keys are an error.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// CRI unix socket [default: /run/peapod/peapod.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Group owning the socket (mode 0660) [default: root]
    #[arg(long)]
    socket_group: Option<String>,
    /// Persistent state (records, IP leases) [default: /var/lib/peapod]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Runtime state (namespace pins) [default: /run/peapod]
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Pod CIDR until the kubelet sends the node's own [default: 10.88.0.0/16]
    #[arg(long)]
    pod_cidr: Option<ipnet::IpNet>,
    /// Node bridge [default: peapod0]
    #[arg(long)]
    bridge: Option<String>,
    /// MTU of the bridge and pod links [default: the default-route link's, else 1500]
    #[arg(long)]
    mtu: Option<u32>,
    /// The peapod-pause binary [default: next to this binary]
    #[arg(long)]
    pause_path: Option<PathBuf>,
    /// cgroup parent of pods whose request names none: a cgroupfs path, or a slice with the
    /// systemd driver [default: peapod, peapod.slice]
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// Who makes pods' cgroups [default: systemd where systemd is PID 1 and answers on the
    /// system bus, else cgroupfs]
    #[arg(long, value_enum)]
    cgroup_driver: Option<CgroupDriver>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info]
    #[arg(long)]
    log_level: Option<String>,
    /// Log format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Address of the streaming server (exec, attach, port-forward) [default: 127.0.0.1]
    #[arg(long)]
    stream_address: Option<std::net::IpAddr>,
    /// Port of the streaming server [default: 0, a free port]
    #[arg(long)]
    stream_port: Option<u16>,
    /// Take Services, EndpointSlices and Nodes from this kubeconfig's API server (in the
    /// place of kube-proxy); it then owns every Service and every peer not in the config file
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name in the cluster [default: the hostname, lowercased]
    #[arg(long)]
    node_name: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> FileConfig {
        FileConfig {
            socket: self.socket.clone(),
            socket_group: self.socket_group.clone(),
            state_dir: self.state_dir.clone(),
            run_dir: self.run_dir.clone(),
            pod_cidr: self.pod_cidr,
            bridge: self.bridge.clone(),
            mtu: self.mtu,
            pause_path: self.pause_path.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            cgroup_driver: self.cgroup_driver,
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            registries: None,
            stream_address: self.stream_address,
            stream_port: self.stream_port,
            kubeconfig: self.kubeconfig.clone(),
            node_name: self.node_name.clone(),
            ..FileConfig::default()
        }
    }
}

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    // The Kubernetes client logs the errors it returns, and the watch logs them once more
    // with what it does about them: the client's own lines only when asked for by name.
    let directives = if level.contains("kube") {
        level.to_owned()
    } else {
        format!("{level},kube_client=off,kube_runtime=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("invalid log_level {level:?}"))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
    Ok(())
}

fn config(args: &ServeArgs) -> anyhow::Result<config::Config> {
    let explicit = args.config.as_os_str() != DEFAULT_CONFIG;
    let file = FileConfig::load(&args.config, explicit)?;
    let exe = std::env::current_exe().context("cannot find the peapod binary")?;
    let exe_dir = exe.parent().unwrap_or(std::path::Path::new("/"));
    Ok(file.resolve(args.overrides(), exe_dir)?)
}

fn gc(args: ServeArgs, dry_run: bool) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    init_logging("warn", cfg.log_format)?;
    let _lock = daemon::lock_state_dir(&cfg.state_dir)
        .context("peapod serve is running (it collects at start-up); stop it to run peapod gc")?;
    let (lines, ok) = sandbox::gc::offline(cfg, dry_run)?;
    for l in &lines {
        println!("{l}");
    }
    if lines.is_empty() {
        println!("nothing to collect");
    }
    anyhow::ensure!(ok, "some garbage could not be removed");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // What a launcher leaked to us would reach every monitor and container we start.
    monitor::close_inherited_fds();
    let cfg = config(&args)?;
    init_logging(&cfg.log_level, cfg.log_format)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::serve(cfg))
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = monitor::internal(&args) {
        return code;
    }
    let cli = Cli::parse();
    let client_rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    let mut exit = 0;
    let r = match cli.cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::Gc { dry_run, serve } => gc(serve, dry_run),
        Cmd::Pod { socket, cmd } => {
            client_rt().and_then(|rt| rt.block_on(client::run(&socket.socket, cmd)))
        }
        Cmd::Ctr { socket, cmd } => client_rt()
            .and_then(|rt| rt.block_on(ctr_client::run(&socket.socket, cmd)))
            .map(|code| exit = code),
        Cmd::Node { socket, cmd } => {
            client_rt().and_then(|rt| rt.block_on(nodes::cmd::run(&socket.socket, cmd)))
        }
        Cmd::Net { socket, cmd } => {
            client_rt().and_then(|rt| rt.block_on(explain::cmd::run(&socket.socket, cmd)))
        }
        Cmd::Service { socket, cmd } => {
            client_rt().and_then(|rt| rt.block_on(services::cmd::run(&socket.socket, cmd)))
        }
        Cmd::Image {
            state_dir,
            socket,
            cmd,
        } => image_cmd::run(&state_dir, &socket, cmd),
    };
    match r {
        Ok(()) => std::process::ExitCode::from(exit),
        // `peapod pod ls | head`: a reader that went away is no failure of ours.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peapod: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
