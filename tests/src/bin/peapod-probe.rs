//! peapod-probe: a tiny TCP tool for the tests and the demo, std only.
//!
//! ```text
//! peapod-probe listen ADDR:PORT [--count N]       bind, print "listening", then answer N
//!                                                  connections (default 1) with one line
//!                                                  "hello from <hostname>" each
//! peapod-probe whoami ADDR:PORT [--count N]       like listen, answering each connection with
//!                                                  the address it came from
//! peapod-probe connect ADDR:PORT [--timeout-ms N] connect (default 2000 ms), print what the
//!                                                  peer says; exit 1 on any failure
//! peapod-probe udp-listen ADDR:PORT [--count N]   the same over UDP: answer N datagrams
//! peapod-probe udp-ask ADDR:PORT [--timeout-ms N] send one datagram, print the answer (which
//!                                                  must come from ADDR:PORT)
//! peapod-probe udp-ask-from SPORT ADDR:PORT        the same from local port SPORT
//! peapod-probe tally ADDR:PORT [--count N]         N connections (default 100), one after the
//!                                                  other; print "<times> <answer>" per answer
//! peapod-probe udp-tally ADDR:PORT [--count N]     the same with N datagrams, each from a
//!                                                  socket (a source port) of its own
//! peapod-probe sink ADDR:PORT [--count N]          bind, print "listening", then for each of N
//!                                                  connections (default 1) read to the end
//!                                                  and answer with the number of bytes read
//! peapod-probe send ADDR:PORT [--mib N]            send N MiB (default 1024) over one TCP
//!                                                  connection to a sink; print "<rate> MiB/s",
//!                                                  timed from connected to the sink's answer
//! peapod-probe echo ADDR:PORT [--count N]          bind, print "listening", then echo back
//!                                                  what each of N connections sends
//! peapod-probe hold ADDR:PORT --until FILE         one connection to an echo server, a
//!                                                  round trip every 100 ms until FILE exists;
//!                                                  print "connected", at the end "<n> round
//!                                                  trips"; exit 1 if one fails
//! peapod-probe newns CALL [FLAGS]                 clone, clone3 or unshare with namespace
//!                                                  FLAGS (user,net,…), or a thread; print
//!                                                  "ok" or "errno <n>" (see peapod-probe/ns.rs)
//! ```
//! The hostname is read from `/proc/sys/kernel/hostname`, so it is the one of the UTS
//! namespace the probe runs in: a listener started in a pod's UTS namespace names the pod.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

#[path = "peapod-probe/ns.rs"]
mod ns;

const USAGE: &str = "usage: peapod-probe [udp-]listen|whoami|sink ADDR:PORT [--count N]\n       \
                     peapod-probe connect|udp-ask ADDR:PORT [--timeout-ms N]\n       \
                     peapod-probe send ADDR:PORT [--mib N]";

/// How long `send` waits for a write to make progress, and for the sink's answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

enum Cmd {
    Listen {
        addr: SocketAddr,
        count: u64,
    },
    Whoami {
        addr: SocketAddr,
        count: u64,
    },
    Connect {
        addr: SocketAddr,
        timeout: Duration,
    },
    UdpListen {
        addr: SocketAddr,
        count: u64,
    },
    UdpAsk {
        addr: SocketAddr,
        timeout: Duration,
        sport: u16,
    },
    Tally {
        addr: SocketAddr,
        count: u64,
        udp: bool,
    },
    Sink {
        addr: SocketAddr,
        count: u64,
    },
    Echo {
        addr: SocketAddr,
        count: u64,
    },
    Hold {
        addr: SocketAddr,
        until: std::path::PathBuf,
    },
    Send {
        addr: SocketAddr,
        mib: u64,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|v| v == "newns") {
        return match ns::run(&args[1..]) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("peapod-probe: {msg}");
                ExitCode::from(2)
            }
        };
    }
    let cmd = match parse(&args) {
        Ok(cmd) => cmd,
        Err(msg) => {
            eprintln!("peapod-probe: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        Cmd::Listen { addr, count } => listen(addr, count, false),
        Cmd::Whoami { addr, count } => listen(addr, count, true),
        Cmd::Connect { addr, timeout } => connect(addr, timeout),
        Cmd::UdpListen { addr, count } => udp_listen(addr, count),
        Cmd::UdpAsk {
            addr,
            timeout,
            sport,
        } => udp_ask(addr, timeout, sport).map(|answer| print!("{answer}")),
        Cmd::Tally { addr, count, udp } => tally(addr, count, udp),
        Cmd::Sink { addr, count } => sink(addr, count),
        Cmd::Echo { addr, count } => echo(addr, count),
        Cmd::Hold { addr, until } => hold(addr, &until),
        Cmd::Send { addr, mib } => send(addr, mib),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("peapod-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Cmd, String> {
    let (verb, rest) = args.split_first().ok_or("missing command")?;
    if verb == "udp-ask-from" {
        let [sport, addr] = rest else {
            return Err("want SPORT ADDR:PORT".into());
        };
        return Ok(Cmd::UdpAsk {
            addr: addr
                .parse()
                .map_err(|e| format!("bad address {addr:?}: {e}"))?,
            timeout: Duration::from_secs(2),
            sport: sport
                .parse()
                .map_err(|e| format!("bad port {sport:?}: {e}"))?,
        });
    }
    let (addr, opts) = rest.split_first().ok_or("missing ADDR:PORT")?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let option = |name: &str, default: u64| -> Result<u64, String> {
        match opts {
            [] => Ok(default),
            [flag, value] if flag == name => value
                .parse()
                .map_err(|e| format!("bad value for {name}: {value:?}: {e}")),
            _ => Err(format!("unexpected arguments {opts:?}")),
        }
    };
    match verb.as_str() {
        "listen" => Ok(Cmd::Listen {
            addr,
            count: option("--count", 1)?,
        }),
        "whoami" => Ok(Cmd::Whoami {
            addr,
            count: option("--count", 1)?,
        }),
        "connect" => Ok(Cmd::Connect {
            addr,
            timeout: Duration::from_millis(option("--timeout-ms", 2000)?),
        }),
        "udp-listen" => Ok(Cmd::UdpListen {
            addr,
            count: option("--count", 1)?,
        }),
        "udp-ask" => Ok(Cmd::UdpAsk {
            addr,
            timeout: Duration::from_millis(option("--timeout-ms", 2000)?),
            sport: 0,
        }),
        "tally" | "udp-tally" => Ok(Cmd::Tally {
            addr,
            count: option("--count", 100)?,
            udp: verb == "udp-tally",
        }),
        "echo" => Ok(Cmd::Echo {
            addr,
            count: option("--count", 1)?,
        }),
        "hold" => match opts {
            [flag, file] if flag == "--until" => Ok(Cmd::Hold {
                addr,
                until: file.into(),
            }),
            _ => Err("hold wants --until FILE".into()),
        },
        "sink" => Ok(Cmd::Sink {
            addr,
            count: option("--count", 1)?,
        }),
        "send" => Ok(Cmd::Send {
            addr,
            mib: option("--mib", 1024)?,
        }),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn listen(addr: SocketAddr, count: u64, whoami: bool) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening")?;
    stdout.flush()?;
    let greeting = format!("hello from {}\n", hostname());
    for _ in 0..count {
        let (mut conn, peer) = listener.accept()?;
        let answer = if whoami {
            format!("{}\n", peer.ip())
        } else {
            greeting.clone()
        };
        // A peer that hangs up early is its own problem; keep serving the others.
        let _ = conn.write_all(answer.as_bytes());
    }
    Ok(())
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("connect {addr}: {e}")))?;
    conn.set_read_timeout(Some(timeout))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| io::Error::new(e.kind(), format!("read from {addr}: {e}")))?;
    print!("{answer}");
    io::stdout().flush()
}

fn udp_listen(addr: SocketAddr, count: u64) -> io::Result<()> {
    let socket =
        UdpSocket::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening")?;
    stdout.flush()?;
    let greeting = format!("hello from {}\n", hostname());
    let mut buf = [0u8; 512];
    for _ in 0..count {
        let (_, peer) = socket.recv_from(&mut buf)?;
        socket.send_to(greeting.as_bytes(), peer)?;
    }
    Ok(())
}

/// One datagram to `addr` from local port `sport` (0: any); the answer. The socket is
/// connected, so that only an answer from `addr` is taken and an ICMP error (a refusal) is
/// reported rather than waited out.
fn udp_ask(addr: SocketAddr, timeout: Duration, sport: u16) -> io::Result<String> {
    let any: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, sport))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(addr)?;
    socket
        .send(b"hello\n")
        .map_err(|e| io::Error::new(e.kind(), format!("send to {addr}: {e}")))?;
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| io::Error::new(e.kind(), format!("answer from {addr}: {e}")))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `count` connections (or datagrams) to `addr`; prints how often each answer came.
fn tally(addr: SocketAddr, count: u64, udp: bool) -> io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut answers = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..count {
        let answer = if udp {
            udp_ask(addr, timeout, 0)?
        } else {
            let mut conn = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| io::Error::new(e.kind(), format!("connect {addr}: {e}")))?;
            conn.set_read_timeout(Some(timeout))?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer)?;
            answer
        };
        *answers.entry(answer.trim().to_owned()).or_default() += 1;
    }
    for (answer, times) in answers {
        println!("{times} {answer}");
    }
    io::stdout().flush()
}

/// Accepts `count` connections one after the other, reads each to its end and answers with
/// the number of bytes it read: the sender's clock stops only once every byte arrived.
fn sink(addr: SocketAddr, count: u64) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening")?;
    stdout.flush()?;
    let mut buf = vec![0u8; 256 << 10];
    for _ in 0..count {
        let (mut conn, peer) = listener.accept()?;
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("read from {peer}: {e}"))),
            }
        }
        conn.write_all(format!("{total}\n").as_bytes())?;
    }
    Ok(())
}

/// Echoes each of `count` connections, one after the other, until it ends.
fn echo(addr: SocketAddr, count: u64) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening")?;
    stdout.flush()?;
    let mut buf = [0u8; 4096];
    for _ in 0..count {
        let (mut conn, _) = listener.accept()?;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => conn.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// One connection kept busy with round trips until `until` exists: it must never break.
fn hold(addr: SocketAddr, until: &std::path::Path) -> io::Result<()> {
    let fail = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| fail("connect", e))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "connected")?;
    stdout.flush()?;
    let mut trips = 0u64;
    loop {
        let done = until.exists();
        let ping = format!("{trips:08}\n");
        conn.write_all(ping.as_bytes())
            .map_err(|e| fail("write to", e))?;
        let mut back = [0u8; 9];
        conn.read_exact(&mut back)
            .map_err(|e| fail(&format!("round trip {trips} with"), e))?;
        if back != ping.as_bytes() {
            return Err(io::Error::other(format!(
                "{addr} echoed {back:?} for {ping:?}"
            )));
        }
        trips += 1;
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    writeln!(stdout, "{trips} round trips")?;
    Ok(())
}

/// `mib` MiB to the sink at `addr` over one connection; prints the rate in MiB/s, from the
/// connection being up to the sink's count of what it received (which must be all of it).
fn send(addr: SocketAddr, mib: u64) -> io::Result<()> {
    let fail = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| fail("connect", e))?;
    conn.set_write_timeout(Some(SEND_TIMEOUT))?;
    conn.set_read_timeout(Some(SEND_TIMEOUT))?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = std::time::Instant::now();
    for _ in 0..mib {
        conn.write_all(&chunk).map_err(|e| fail("send to", e))?;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| fail("answer from", e))?;
    let secs = start.elapsed().as_secs_f64();
    let sent = mib << 20;
    if answer.trim().parse::<u64>().ok() != Some(sent) {
        return Err(io::Error::other(format!(
            "{addr} received {:?} bytes of {sent}",
            answer.trim()
        )));
    }
    println!("{:.1} MiB/s", mib as f64 / secs);
    io::stdout().flush()
}
