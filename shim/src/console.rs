//! A terminal for a task or an exec (`ctr run -t`, `crictl exec -it`): a pty whose slave is
//! the process's stdin, stdout and stderr (and controlling terminal), whose master the shim
//! keeps; two threads copy between it and the FIFOs containerd hands over (stdin to the
//! terminal, the terminal to stdout), and `ResizePty` sets its window size.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use peapod::monitor::fifo::{self, Dir};
use peapod::streaming::pty;

pub struct Console {
    master: File,
}

impl Console {
    /// A pair from the devpts of the tree at `root` (a running container's
    /// `/proc/<pid>/root`), resolved inside that tree.
    pub fn open(root: &Path) -> io::Result<(Console, OwnedFd)> {
        Ok(Self::from_pair(pty::open_pair(root)?))
    }

    /// A pair from the node's devpts, for a task not yet started.
    pub fn open_node() -> io::Result<(Console, OwnedFd)> {
        Ok(Self::from_pair(pty::open_node_pair()?))
    }

    fn from_pair((master, slave): (OwnedFd, OwnedFd)) -> (Console, OwnedFd) {
        (
            Console {
                master: File::from(master),
            },
            slave,
        )
    }

    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        pty::set_winsize(self.master.as_fd(), cols, rows)
    }

    /// Starts copying stdin's FIFO into the terminal and the terminal into stdout's; the
    /// output copy ends when every slave is closed (the processes are gone), and closes the
    /// stdout FIFO then, which is the client's end of the output.
    pub fn pump(&self, stdin: &str, stdout: &str) -> io::Result<()> {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        let mut out = File::from(fifo::open(path(stdout).as_deref(), Dir::Write)?);
        let mut master_out = self.master.try_clone()?;
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                // EIO: no slave is open any more.
                while let Ok(n @ 1..) = master_out.read(&mut buf) {
                    if out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })?;
        if let Some(stdin) = path(stdin) {
            let mut input = File::from(fifo::open(Some(&stdin), Dir::Read)?);
            let mut master_in = self.master.try_clone()?;
            std::thread::Builder::new()
                .name("console-in".into())
                .spawn(move || {
                    let _ = io::copy(&mut input, &mut master_in);
                })?;
        }
        Ok(())
    }

    /// `/proc/<shim>/fd/<n>`: a path the monitor can open the slave by.
    pub fn slave_path(slave: &OwnedFd) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            slave.as_raw_fd()
        ))
    }
}
