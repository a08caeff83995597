//! What a VM run brought back: the files qemu wrote from the guest's virtio-serial ports and
//! serial console, split per step.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

/// One step's result.
#[derive(Clone, Debug)]
pub struct Step {
    pub argv: Vec<String>,
    /// The exit code (128 + signal for a step killed by one, as the guest's shell reports).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// How long the step ran in the guest.
    pub secs: f64,
}

impl Step {
    /// The step's output, for an assertion message.
    pub fn describe(&self) -> String {
        format!(
            "step {:?} exited with {} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.argv, self.code, self.secs, self.stdout, self.stderr
        )
    }
}

/// A finished VM run.
#[derive(Clone, Debug, Default)]
pub struct VmRun {
    /// The steps that finished, in order.
    pub steps: Vec<Step>,
    /// The guest's uptime when the run unit started: kernel and systemd up to multi-user.
    pub boot_secs: Option<f64>,
    /// Finding or building the image (seconds).
    pub image_secs: f64,
    /// From starting qemu to its exit.
    pub wall: Duration,
    /// Every step ran and the guest said so.
    pub done: bool,
    /// What the guest's run script could not do, if anything.
    pub error: Option<String>,
    /// Output of a step that started but did not finish (timeout, crash).
    pub unfinished: Option<(String, String)>,
    pub console: String,
    pub qemu_stderr: String,
}

impl VmRun {
    /// The last `lines` lines of the serial console (kernel and systemd messages).
    pub fn console_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.console.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- console (last {lines} lines)\n{}\n--- qemu stderr\n{}",
            all[from..].join("\n"),
            self.qemu_stderr
        )
    }

    /// Everything, for an error message.
    pub fn report(&self) -> String {
        let mut text = String::new();
        for step in &self.steps {
            text.push_str(&step.describe());
            text.push('\n');
        }
        if let Some((stdout, stderr)) = &self.unfinished {
            text.push_str(&format!(
                "unfinished step\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n"
            ));
        }
        text.push_str(&self.console_tail(60));
        text
    }

    /// The timings, one line (for the test's output).
    pub fn timings(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{:.1}s", s.secs))
            .collect();
        format!(
            "image {:.1}s, boot to multi-user {}, steps [{}], qemu wall time {:.1}s",
            self.image_secs,
            self.boot_secs
                .map(|b| format!("{b:.1}s"))
                .unwrap_or_else(|| "?".into()),
            steps.join(", "),
            self.wall.as_secs_f64()
        )
    }
}

/// Reads `stdout`, `stderr`, `status`, `console.log` and `qemu.err` of the run dir.
pub fn collect(dir: &Path, nonce: &str, argvs: &[Vec<String>]) -> Result<VmRun> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let marker = format!("\x1e{nonce}:");
    let stdout = split(&read("stdout"), &marker);
    let stderr = split(&read("stderr"), &marker);
    let mut run = VmRun {
        console: read("console.log"),
        qemu_stderr: read("qemu.err"),
        ..VmRun::default()
    };
    for line in read("status").lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["boot", uptime] => run.boot_secs = uptime.parse().ok(),
            ["step", n, code, secs] => {
                let (Ok(n), Ok(code)) = (n.parse::<usize>(), code.parse::<i32>()) else {
                    continue;
                };
                run.steps.push(Step {
                    argv: argvs.get(n).cloned().unwrap_or_default(),
                    code,
                    stdout: stdout.get(n).cloned().unwrap_or_default(),
                    stderr: stderr.get(n).cloned().unwrap_or_default(),
                    secs: secs.parse().unwrap_or(0.0),
                });
            }
            ["done"] => run.done = run.steps.len() == argvs.len(),
            ["error", ..] => run.error = Some(line["error ".len()..].to_owned()),
            _ => {}
        }
    }
    let next = run.steps.len();
    if !run.done && (next < stdout.len() || next < stderr.len()) {
        run.unfinished = Some((
            stdout.get(next).cloned().unwrap_or_default(),
            stderr.get(next).cloned().unwrap_or_default(),
        ));
    }
    Ok(run)
}

/// The parts of `text` after each `marker<n>\n` line, in order.
fn split(text: &str, marker: &str) -> Vec<String> {
    text.split(marker)
        .skip(1)
        .map(|part| part.split_once('\n').map(|(_, rest)| rest).unwrap_or(""))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_takes_each_step_after_its_marker_line() {
        let text = "boot noise\x1eab:0\nfirst\nline\n\x1eab:1\n\x1eab:2\nthird";
        assert_eq!(split(text, "\x1eab:"), ["first\nline\n", "", "third"]);
        assert!(split("no marker", "\x1eab:").is_empty());
    }
}
