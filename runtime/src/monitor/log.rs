//! The CRI log format: one record per line, `<RFC3339Nano time> <stdout|stderr> <P|F> <text>`.
//! `F` ends a line of the container's output (its newline is not repeated in the text); `P` is
//! a piece of a line: one longer than [`MAX_LINE`], or output the stream ended without a
//! newline. The kubelet joins `P` pieces up to the next `F`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{Mode, fstat, mkdirat};

/// Longest text of one record; longer lines are split into `P` pieces.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits one stream's bytes into records; holds an unfinished line between reads.
#[derive(Debug)]
pub struct Framer {
    stream: Stream,
    pending: Vec<u8>,
}

impl Framer {
    pub fn new(stream: Stream) -> Framer {
        Framer {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds `data`; appends every complete record to `out`, each stamped with `time`.
    pub fn feed(&mut self, data: &[u8], time: &str, out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let window = &rest[..rest.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..i]);
                    self.emit(true, time, out);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(window);
                    rest = &rest[window.len()..];
                    if self.pending.len() == MAX_LINE {
                        self.emit(false, time, out);
                    }
                }
            }
        }
    }

    /// The stream ended: what is left of an unfinished line becomes a `P` record.
    pub fn finish(&mut self, time: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit(false, time, out);
        }
    }

    fn emit(&mut self, full: bool, time: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(time.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.stream.name().as_bytes());
        out.extend_from_slice(if full { b" F " } else { b" P " });
        out.extend_from_slice(&self.pending);
        out.push(b'\n');
        self.pending.clear();
    }
}

/// `nanos` since the epoch as RFC 3339 in UTC with nanoseconds, e.g.
/// `2024-05-01T12:00:00.000000001Z`.
pub fn rfc3339_nano(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The log file, appended to; reopened on request (after the kubelet rotated it).
pub struct LogFile {
    path: Option<(PathBuf, PathBuf)>,
    file: Option<File>,
}

/// The log's path must lie under its directory.
#[derive(Debug, thiserror::Error)]
#[error("the log {path} is not under {dir}")]
pub struct OutsideLogDir {
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Opens `rel` for appending under the directory `dir` (the kubelet's, trusted): the
/// directories on the way are made or opened one at a time under their parent's fd, and
/// neither they nor the file are ever followed if they are symlinks (a container that sees
/// its log directory could plant one: ELOOP or ENOTDIR). The file must be a regular file (not
/// a FIFO that would block us).
fn open_under(dir: &Path, rel: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let dflags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut cur = nix::fcntl::open(dir, dflags, Mode::empty())?;
    let comps: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => Ok(s),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                OutsideLogDir {
                    path: rel.to_owned(),
                    dir: dir.to_owned(),
                },
            )),
        })
        .collect::<io::Result<_>>()?;
    let Some((name, parents)) = comps.split_last() else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    for c in parents {
        match mkdirat(&cur, *c, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = openat(&cur, *c, dflags | OFlag::O_NOFOLLOW, Mode::empty())?;
    }
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    let fd = openat(&cur, *name, flags, Mode::from_bits_truncate(0o640))?;
    if fstat(&fd)?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let fl = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK))?;
    Ok(File::from(fd))
}

fn open(path: &Path, dir: &Path) -> io::Result<File> {
    let rel = path.strip_prefix(dir).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            OutsideLogDir {
                path: path.to_owned(),
                dir: dir.to_owned(),
            },
        )
    })?;
    open_under(dir, rel)
}

impl LogFile {
    /// No path: output is read and dropped. `dir`: the pod's log directory, which `path` is
    /// under (None: the log's own directory).
    pub fn open(path: Option<PathBuf>, dir: Option<PathBuf>) -> io::Result<LogFile> {
        let path = path.map(|p| {
            let d = dir
                .or_else(|| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("/"));
            (p, d)
        });
        let file = path.as_ref().map(|(p, d)| open(p, d)).transpose()?;
        Ok(LogFile { path, file })
    }

    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some((p, d)) = &self.path {
            self.file = Some(open(p, d)?);
        }
        Ok(())
    }

    /// Writes whole records; a failing disk loses lines but never stops the container.
    pub fn write(&mut self, records: &[u8]) {
        if let Some(f) = &mut self.file
            && !records.is_empty()
        {
            let _ = f.write_all(records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2024-01-01T00:00:00.000000000Z";

    fn run(stream: Stream, chunks: &[&[u8]], finish: bool) -> String {
        let mut f = Framer::new(stream);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, T, &mut out);
        }
        if finish {
            f.finish(T, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn full_lines_and_pieces_across_reads() {
        let out = run(Stream::Stdout, &[b"hel", b"lo\nwor", b"ld\n\n"], false);
        assert_eq!(
            out,
            format!("{T} stdout F hello\n{T} stdout F world\n{T} stdout F \n")
        );
        let out = run(Stream::Stderr, &[b"a\nno newline"], true);
        assert_eq!(out, format!("{T} stderr F a\n{T} stderr P no newline\n"));
        assert_eq!(run(Stream::Stdout, &[b"held"], false), "");
    }

    #[test]
    fn long_lines_are_split() {
        let line = vec![b'x'; MAX_LINE * 2 + 5];
        let mut data = line.clone();
        data.push(b'\n');
        let out = run(Stream::Stdout, &[&data[..1000], &data[1000..]], false);
        let recs: Vec<&str> = out.lines().collect();
        assert_eq!(recs.len(), 3);
        assert!(recs[0].starts_with(&format!("{T} stdout P xxx")));
        assert_eq!(recs[0].len(), T.len() + 10 + MAX_LINE);
        assert!(recs[1].contains(" P "));
        assert_eq!(recs[2], format!("{T} stdout F xxxxx"));
        // A line of exactly MAX_LINE bytes then its newline: a P piece, then an empty F.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let out = run(Stream::Stdout, &[&exact], false);
        assert_eq!(out.lines().count(), 2);
        assert!(out.ends_with(&format!("{T} stdout F \n")));
    }

    #[test]
    fn times_are_rfc3339_nano_utc() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(1_709_251_199_123_456_789),
            "2024-02-29T23:59:59.123456789Z"
        );
        assert_eq!(
            rfc3339_nano(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }

    #[test]
    fn the_log_is_never_opened_through_a_symlink() {
        let logs = tempfile::tempdir().unwrap();
        let node = tempfile::tempdir().unwrap();
        let canary = node.path().join("canary");
        std::fs::write(&canary, "node file\n").unwrap();
        let dir = logs.path();
        // The log itself a symlink to a node file.
        std::os::unix::fs::symlink(&canary, dir.join("c.log")).unwrap();
        assert!(LogFile::open(Some(dir.join("c.log")), Some(dir.into())).is_err());
        // A parent of the log a symlink to a node directory.
        std::os::unix::fs::symlink(node.path(), dir.join("sub")).unwrap();
        assert!(LogFile::open(Some(dir.join("sub/0.log")), Some(dir.into())).is_err());
        // A FIFO: refused, without blocking.
        nix::unistd::mkfifo(&dir.join("f.log"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(LogFile::open(Some(dir.join("f.log")), Some(dir.into())).is_err());
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "node file\n");
        assert_eq!(std::fs::read_dir(node.path()).unwrap().count(), 1);
        // A plain log, in a new directory, appended to across a reopen.
        let mut log = LogFile::open(Some(dir.join("web/0.log")), Some(dir.into())).unwrap();
        log.write(b"a\n");
        log.reopen().unwrap();
        log.write(b"b\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("web/0.log")).unwrap(),
            "a\nb\n"
        );
        // Outside its directory: refused.
        assert!(LogFile::open(Some("/elsewhere/x.log".into()), Some(dir.into())).is_err());
    }
}
