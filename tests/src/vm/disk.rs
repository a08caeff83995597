//! The VM run's temp dir and its input disk (what `hack/vm/guest/peapod-vm-run` reads).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Temp dirs of VM runs: `/tmp/peapod-test-vm.<pid>.<random>` (the `peapod-test-` prefix is
/// what `hack/lib/host-check.sh` looks for).
const PREFIX: &str = "peapod-test-vm.";

/// A new temp dir for one run, removed when dropped.
pub fn run_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}.", std::process::id()))
        .tempdir()
        .context("create the VM run's temp dir")
}

/// Removes the temp dirs of runs whose process is gone (killed before it could clean up; its
/// qemu died with it).
pub fn sweep_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes the input disk `dir/in.img`: `files/<host path>` for each file, `env`, `steps/NNN`
/// (argv NUL-separated) and `nonce`, as an ext4 image made by `mkfs.ext4 -d` from a staging
/// dir (hard links where it can, so nothing big is copied twice). Returns its path.
pub fn input_disk(
    dir: &Path,
    files: &[PathBuf],
    env: &[(String, String)],
    steps: &[Vec<String>],
    nonce: &str,
) -> Result<PathBuf> {
    let stage = dir.join("in");
    std::fs::create_dir_all(&stage).context("create the input disk's staging dir")?;
    let mut bytes: u64 = 0;
    for file in files {
        ensure!(
            file.is_absolute(),
            "a VM file needs an absolute path: {}",
            file.display()
        );
        let meta = std::fs::metadata(file)
            .with_context(|| format!("a file for the VM: {}", file.display()))?;
        ensure!(meta.is_file(), "not a regular file: {}", file.display());
        bytes += meta.len();
        let target = stage.join("files").join(file.strip_prefix("/")?);
        std::fs::create_dir_all(target.parent().expect("a joined path has a parent"))?;
        if target.exists() {
            continue;
        }
        if std::fs::hard_link(file, &target).is_err() {
            std::fs::copy(file, &target)
                .with_context(|| format!("copy {} for the VM", file.display()))?;
        }
    }
    let mut env_file = String::new();
    for (key, value) in env {
        ensure!(
            !key.contains(['=', '\n']) && !value.contains('\n'),
            "VM environment entries are single KEY=VALUE lines: {key}"
        );
        env_file.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(stage.join("env"), env_file)?;
    std::fs::create_dir_all(stage.join("steps"))?;
    for (n, argv) in steps.iter().enumerate() {
        let mut step = Vec::new();
        for arg in argv {
            ensure!(!arg.contains('\0'), "a step's argument holds a NUL byte");
            step.extend_from_slice(std::ffi::OsStr::new(arg).as_bytes());
            step.push(0);
        }
        std::fs::write(stage.join("steps").join(format!("{n:03}")), step)?;
    }
    std::fs::write(stage.join("nonce"), nonce)?;

    let image = dir.join("in.img");
    // Room for the files, inodes and the journal; the image is sparse.
    let size_mb = bytes / (1 << 20) * 12 / 10 + 32;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "peapod-vm-in", "-d"])
        .arg(&stage)
        .arg(&image)
        .arg(format!("{size_mb}M"))
        .output()
        .context("run mkfs.ext4 for the VM's input disk")?;
    ensure!(
        out.status.success(),
        "mkfs.ext4 -d for the VM's input disk failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&stage)?;
    Ok(image)
}
