//! `containerd-shim-peapod-v2`: peapod as a containerd runtime v2 shim (`runtime_type =
//! "io.containerd.peapod.v2"`), its own binary; it runs tasks with peapod's own launch path
//! (`monitor`, `enter` of the `peapod-monitor` binary beside it, see [`peapod_binary`]),
//! see [`task`].
//!
//! containerd runs `<shim> -namespace N -address A -id ID start` in the bundle dir; `start`
//! finds or spawns the shim of the task's pod (grouped by the CRI's sandbox id annotation,
//! else one per task) and prints its ttrpc address. `delete` cleans up after a shim that
//! died. Everything else is the ttrpc task service.

mod console;
mod exec;
mod idle;
mod oci;
mod stats;
mod task;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, ExitSignal, Flags, StartOpts};

/// The binary name containerd looks for, for `runtime_type = "io.containerd.peapod.v2"`.
pub const BINARY: &str = "containerd-shim-peapod-v2";
const RUNTIME_ID: &str = "io.containerd.peapod.v2";
/// The CRI plugin's annotation naming the pod a container belongs to.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub fn main() -> ExitCode {
    // What containerd (or whoever runs us) left open must not reach the tasks.
    peapod::monitor::close_inherited_fds();
    one_malloc_arena();
    containerd_shim::run::<Shim>(RUNTIME_ID, None);
    ExitCode::SUCCESS
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core), each with
/// heap pages touched and kept; the shim's threads (ttrpc's, the reapers', the stdio
/// copiers) allocate little and seldom, so one arena serves them all.
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

struct Shim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = task::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        let grouping = grouping(&bundle).unwrap_or_else(|| opts.id.clone());
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        let path = address.trim_start_matches("unix://");
        if UnixStream::connect(path).is_ok() {
            // The pod's shim runs already: this task joins it.
            containerd_shim::util::write_address(&address)?;
            return Ok(address);
        }
        let exe = std::env::current_exe().map_err(|e| Error::Other(e.to_string()))?;
        let mut cmd = Command::new(exe);
        cmd.arg0(BINARY)
            .args(["-namespace", &opts.namespace, "-id", &opts.id])
            .args(["-address", &opts.address, "-socket", &address])
            .current_dir(&bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Not in containerd's process group: its signals are not the shim's.
            .process_group(0);
        if opts.debug {
            cmd.arg("-debug");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Other(format!("spawn the shim: {e}")))?;
        // The shim closes its stdout once it serves: EOF means ready.
        let mut ignored = Vec::new();
        let _ = child
            .stdout
            .take()
            .expect("piped")
            .read_to_end(&mut ignored);
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let cgroups = task::cgroups().map_err(|e| Error::Other(e.to_string()))?;
        let dir = task::task_dir(&self.namespace, &self.id);
        let (pid, code, at) = task::reap_leftovers(&cgroups, &dir);
        let mut resp = DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = code;
        resp.exited_at = Some(task::timestamp(at)).into();
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let cgroups = task::cgroups().unwrap_or_else(|e| {
            containerd_shim::error!("cannot set up cgroups: {e}");
            std::process::exit(1)
        });
        task::Service::new(
            self.namespace.clone(),
            publisher,
            self.exit.clone(),
            cgroups,
        )
    }
}

/// The binary whose `monitor` and `enter` run the tasks: `peapod-monitor` (the small one),
/// else `peapod` (which answers the same subcommands): beside this binary (its real path),
/// else in the first PATH dir that has either. Its own process, not the shim's: a monitor carries none of
/// the shim's code.
pub fn peapod_binary() -> std::path::PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| Some(exe.parent()?.to_owned()));
    let path: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dir.iter()
        .chain(&path)
        .find_map(|d| {
            [peapod::monitor::MONITOR_BINARY, "peapod"]
                .iter()
                .map(|name| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| "peapod".into())
}

/// The pod a bundle's container belongs to, from the CRI plugin's annotation.
fn grouping(bundle: &Path) -> Option<String> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let id = spec["annotations"][SANDBOX_ID].as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}
