//! peapod: a Kubernetes CRI runtime whose pods come with their networking built in.

mod client;
mod config;
mod cri;
mod daemon;
mod image;
mod image_cmd;
mod network;
mod sandbox;
mod store;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use config::{DEFAULT_CONFIG, FileConfig, LogFormat};

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
    /// Talk to a running daemon about pod sandboxes.
    Pod {
        /// CRI socket of the daemon.
        #[arg(
            long,
            global = true,
            default_value = "/run/peapod/peapod.sock",
            env = "PEAPOD_SOCKET"
        )]
        socket: PathBuf,
        #[command(subcommand)]
        cmd: client::PodCmd,
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
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info]
    #[arg(long)]
    log_level: Option<String>,
    /// Log format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
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
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            registries: None,
        }
    }
}

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let explicit = args.config.as_os_str() != DEFAULT_CONFIG;
    let file = FileConfig::load(&args.config, explicit)?;
    let exe = std::env::current_exe().context("cannot find the peapod binary")?;
    let exe_dir = exe.parent().unwrap_or(std::path::Path::new("/"));
    let cfg = file.resolve(args.overrides(), exe_dir)?;
    init_logging(&cfg.log_level, cfg.log_format)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::serve(cfg))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::Pod { socket, cmd } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(client::run(&socket, cmd))),
        Cmd::Image {
            state_dir,
            socket,
            cmd,
        } => image_cmd::run(&state_dir, &socket, cmd),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peapod: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
