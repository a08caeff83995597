//! `peapod-monitor`: the per-container processes the daemon and the containerd shim run,
//! `peapod-monitor monitor <container dir>` (lives as long as its container) and
//! `peapod-monitor enter …` (ExecSync, exec). A binary of its own so that it links only the
//! monitor's code, not the daemon's gRPC, Kubernetes and image stacks: fewer pages to map
//! and touch per container. `peapod` answers the same subcommands.

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    peapod::monitor::internal(&args).unwrap_or_else(|| {
        eprintln!(
            "usage: peapod-monitor monitor DIR | peapod-monitor enter [--tty] DIR PID START_TIME COMMAND..."
        );
        std::process::ExitCode::from(2)
    })
}
