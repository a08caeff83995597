//! A VM test node: a Debian VM with systemd and the full cgroup v2 hierarchy, booted under
//! qemu's software emulation (TCG), for what this machine's kind of node cannot show (cgroup
//! v1 hybrid, no systemd). `hack/vm/build-image.sh` builds the image from `hack/vm/recipe`
//! (cached by a hash of the recipe); each [`Vm::run`] boots a copy-on-write overlay of it,
//! runs the steps one after the other in the booted node and powers it off.
//!
//! Files go in on a second, read-only virtio disk made with `mkfs.ext4 -d` (no loop mount, no
//! 9p, which the cloud kernel lacks, and nothing in the guest can change the host's files):
//! each file appears in the guest at its host path, so the paths compiled into a test
//! executable hold there too. Results come out over virtio-serial ports that qemu writes to
//! files as the guest writes them (stdout, stderr, a status line per step): unlike a results
//! disk, what a step printed before a hang or a crash is still there after the timeout.
//!
//! There is no network device (`-nic none`): nothing leaves the machine. The qemu process dies
//! with the test (PR_SET_PDEATHSIG) and is killed on every error path; the run's temp dir goes
//! on drop, and a run killed before that leaves a dir that the next run removes.

mod disk;
mod output;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;

pub use output::{Step, VmRun};

/// The binaries of `bin_dir()` that a VM gets when it runs peapod.
const PEAPOD_BINARIES: &[&str] = &[
    "peapod",
    "peapod-monitor",
    "peapod-pause",
    "peapod-probe",
    "peapod-cni",
    "containerd-shim-peapod-v2",
];

/// How long booting may take on top of the steps' own timeout (TCG on a busy machine).
const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// The directory of `hack/vm`.
pub fn hack_vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/vm")
}

/// A VM run to be: files to copy in, environment, steps. Nothing happens until [`Vm::run`].
#[derive(Default)]
pub struct Vm {
    files: Vec<PathBuf>,
    /// The test images, built on the host for the guest's tests to copy.
    images: Option<crate::TestImages>,
    env: Vec<(String, String)>,
    steps: Vec<Vec<String>>,
    timeout: Option<Duration>,
}

impl Vm {
    pub fn new() -> Vm {
        Vm::default()
    }

    /// A host file, at the same path in the guest.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Vm {
        self.files.push(path.into());
        self
    }

    /// An environment variable for every step.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Vm {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// A command to run in the booted node, as root, in `/root`, with a clean environment
    /// (PATH, HOME and what [`Vm::env`] adds). Steps run in order; each is reported apart.
    pub fn step(mut self, argv: &[&str]) -> Vm {
        self.steps
            .push(argv.iter().map(|a| a.to_string()).collect());
        self
    }

    /// How long all steps together may take once the node is up (default 10 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Vm {
        self.timeout = Some(timeout);
        self
    }

    /// peapod's binaries from `bin_dir()`, with `PEAPOD_BIN_DIR` pointing at them in the
    /// guest, and `hack/make-test-images.sh`, which the tests run to build their images.
    pub fn with_peapod(mut self) -> Result<Vm> {
        let bins = crate::bin_dir();
        for name in PEAPOD_BINARIES {
            let path = bins.join(name);
            ensure!(
                path.is_file(),
                "{} not found: build the workspace binaries first (`cargo build --workspace \
                 --bins`) or point PEAPOD_BIN_DIR at them",
                path.display()
            );
            self.files.push(path);
        }
        // The tests name the script as `<this crate>/../hack/…`: that path resolves in the
        // guest only if the crate's directory exists there too.
        self.files.push(crate::make_test_images_script());
        self.files
            .push(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        // Built here in a second; the same script under emulation takes half a minute, for
        // every test that runs a container.
        let images = crate::TestImages::build()?;
        files_under(images.dir(), &mut self.files)?;
        let images_dir = images.dir().to_string_lossy().into_owned();
        self.images = Some(images);
        Ok(self
            .env("PEAPOD_BIN_DIR", bins.to_string_lossy())
            .env(crate::images::PREBUILT, images_dir))
    }

    /// The integration test executable `name` (a file of `tests/tests/`, e.g. `cgroup_v2`) as
    /// Cargo built it next to the running one, and a step running it with `args` (libtest's:
    /// filters, `--test-threads`, …).
    pub fn integration_test(self, name: &str, args: &[&str]) -> Result<Vm> {
        let exe = test_executable(name)?;
        let exe_str = exe.to_string_lossy().into_owned();
        let mut argv = vec![exe_str.as_str()];
        argv.extend_from_slice(args);
        Ok(self.file(&exe).step(&argv))
    }

    /// Builds (or finds) the image, boots it, runs the steps, powers off and returns what each
    /// step printed and its exit code. Fails if the node does not boot, a step cannot be run
    /// or the timeout passes; a step's own failure is its exit code, for the caller to judge.
    pub fn run(self) -> Result<VmRun> {
        crate::require_root();
        ensure!(!self.steps.is_empty(), "a VM run needs at least one step");
        let started = Instant::now();
        let image = build_image()?;
        let image_secs = started.elapsed().as_secs_f64();
        disk::sweep_stale_dirs();
        let dir = disk::run_dir()?;
        let nonce = crate::random_hex(8);
        let input = disk::input_disk(dir.path(), &self.files, &self.env, &self.steps, &nonce)?;
        let overlay = dir.path().join("root.qcow2");
        run_tool(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(image.join("rootfs.img"))
                .arg(&overlay),
            "qemu-img create (the node's copy-on-write root)",
        )?;
        let timeout = self.timeout.unwrap_or(Duration::from_secs(600)) + BOOT_ALLOWANCE;
        let boot = Instant::now();
        let mut qemu = Qemu::spawn(&image, &overlay, &input, dir.path())?;
        let status = qemu.wait(timeout)?;
        let wall = boot.elapsed();
        let mut run = output::collect(dir.path(), &nonce, &self.steps)?;
        run.image_secs = image_secs;
        run.wall = wall;
        match status {
            Some(status) if run.done => {
                ensure!(
                    status.success(),
                    "qemu exited with {status} after the steps:\n{}",
                    run.console_tail(40)
                );
                Ok(run)
            }
            Some(status) => bail!(
                "the VM stopped ({status}) before its steps were done{}; \
                 steps finished: {:?}\n{}",
                run.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                run.steps.iter().map(|s| s.code).collect::<Vec<_>>(),
                run.report()
            ),
            None => bail!(
                "the VM did not finish within {}s (boot included) and was killed; \
                 steps finished: {:?}\n{}",
                timeout.as_secs(),
                run.steps.iter().map(|s| s.code).collect::<Vec<_>>(),
                run.report()
            ),
        }
    }
}

/// Runs `hack/vm/build-image.sh` (which builds the image only when its recipe changed) and
/// returns the directory holding `rootfs.img`, `vmlinuz` and `initrd.img`.
pub fn build_image() -> Result<PathBuf> {
    let script = hack_vm_dir().join("build-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): the VM test node needs its packages (hack/setup.sh installs \
         debootstrap and qemu-system-x86) and the Debian mirror apt uses",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    for file in ["rootfs.img", "vmlinuz", "initrd.img"] {
        ensure!(
            dir.join(file).is_file(),
            "{} printed {}, which holds no {file}",
            script.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// The newest `target/<profile>/deps/<name>-<hash>` executable next to the running test.
pub fn test_executable(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running test executable")?;
    let deps = exe
        .parent()
        .context("the test executable has no parent dir")?;
    let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut candidates = 0;
    for entry in std::fs::read_dir(deps).with_context(|| format!("read {}", deps.display()))? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(hash) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('-'))
        else {
            continue;
        };
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        candidates += 1;
        let modified = entry.metadata()?.modified()?;
        if found.as_ref().is_none_or(|(newest, _)| modified > *newest) {
            found = Some((modified, entry.path()));
        }
    }
    match found {
        Some((_, path)) => {
            // Builds with other features (`-p peapod-tests` against `--workspace --features
            // …`) leave executables with other hashes side by side: say which one runs.
            if candidates > 1 {
                println!(
                    "vm node: {candidates} executables {name}-<hash>, running the newest, {}",
                    path.display()
                );
            }
            Ok(path)
        }
        None => bail!(
            "no test executable {name}-<hash> in {}: build it first with the same cargo \
             command as this test (`cargo test --workspace --features peapod/fault-injection \
             --no-run`, as hack/test.sh does)",
            deps.display()
        ),
    }
}

/// Every regular file below `dir`, appended to `files`.
fn files_under(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files_under(&entry.path(), files)?;
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

/// A running qemu, killed when dropped.
struct Qemu {
    child: Child,
}

impl Qemu {
    fn spawn(image: &Path, overlay: &Path, input: &Path, dir: &Path) -> Result<Qemu> {
        let drive = |file: &Path, extra: &str| format!("file={},if=virtio,{extra}", file.display());
        let port = |id: &str, file: &str| {
            [
                "-chardev".to_owned(),
                format!("file,id={id},path={}", dir.join(file).display()),
                "-device".to_owned(),
                format!("virtserialport,chardev={id},name=peapod.{id}"),
            ]
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        // panic=-1 with -no-reboot: a guest kernel panic ends qemu at once.
        .args([
            "-append",
            "console=ttyS0 root=/dev/vda rw panic=-1 quiet peapod.run",
        ])
        .arg("-drive")
        .arg(drive(overlay, "format=qcow2"))
        .arg("-drive")
        .arg(drive(input, "format=raw,readonly=on"))
        .args(["-device", "virtio-serial-pci"])
        .args(port("out", "stdout"))
        .args(port("err", "stderr"))
        .args(port("status", "status"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.err"))?);
        crate::spawn::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .context("spawn qemu-system-x86_64 (hack/setup.sh installs qemu-system-x86)")?;
        Ok(Qemu { child })
    }

    /// Waits for qemu to exit, at most `timeout`: `None` when it had to be killed.
    fn wait(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        crate::spawn::signal(self.child.id(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Runs a host tool to completion; fails with its stderr.
fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
