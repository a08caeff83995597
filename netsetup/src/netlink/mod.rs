//! A small typed wrapper over synchronous rtnetlink (`netlink-packet-route` + `netlink-sys`).
//!
//! A [`Netlink`] handle is a socket in the network namespace of the thread that opened it, and
//! stays bound to that namespace wherever it is used afterwards: open one per namespace, on a
//! thread that is in that namespace (see [`crate::netns::run_in`]). A handle is not shared
//! between threads; open one per operation, it costs a few microseconds.

mod addr;
mod link;
mod overlay;

use std::fmt;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use link::{Link, VethPair, format_mac};
pub use overlay::{Route, VxlanInfo, VxlanSpec, vtep_mac};

/// What went wrong talking to the kernel; each variant names the object it was about.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("cannot {op} link {ifname}")]
    Link {
        op: LinkOp,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("link {ifname} not found")]
    NoSuchLink { ifname: String },
    #[error("cannot add address {addr} to link {ifname}")]
    AddAddress {
        ifname: String,
        addr: IpNet,
        #[source]
        source: io::Error,
    },
    #[error("cannot add the default route via {gateway} on link {ifname}")]
    AddRoute {
        ifname: String,
        gateway: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} the route to {dst}")]
    Route {
        op: EntryOp,
        dst: IpNet,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} neighbour {ip} on link index {ifindex}")]
    Neighbour {
        op: EntryOp,
        ifindex: u32,
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} the fdb entry {mac} to {dst} on link index {ifindex}")]
    Fdb {
        op: EntryOp,
        ifindex: u32,
        /// `aa:bb:cc:dd:ee:ff`
        mac: String,
        dst: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot list {what}")]
    Dump {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Socket(source)
            | NetlinkError::Link { source, .. }
            | NetlinkError::AddAddress { source, .. }
            | NetlinkError::AddRoute { source, .. }
            | NetlinkError::Route { source, .. }
            | NetlinkError::Neighbour { source, .. }
            | NetlinkError::Fdb { source, .. }
            | NetlinkError::Dump { source, .. } => source.raw_os_error(),
            NetlinkError::NoSuchLink { .. } => Some(libc::ENODEV),
        }
    }
}

/// The operation a [`NetlinkError::Link`] failed at, worded to fit "cannot {op} link {name}".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOp {
    Create,
    Delete,
    LookUp,
    BringUp,
    SetMtu,
    SetHairpin,
    Move,
    Rename,
    Isolate,
}

impl fmt::Display for LinkOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkOp::Create => "create",
            LinkOp::Delete => "delete",
            LinkOp::LookUp => "look up",
            LinkOp::BringUp => "bring up",
            LinkOp::SetMtu => "set the mtu of",
            LinkOp::SetHairpin => "set hairpin mode on",
            LinkOp::Move => "move",
            LinkOp::Rename => "rename",
            LinkOp::Isolate => "take down and unbridge",
        })
    }
}

/// The operation a route, neighbour or fdb error failed at, worded to fit "cannot {op} …".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryOp {
    Replace,
    Delete,
}

impl fmt::Display for EntryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryOp::Replace => "replace",
            EntryOp::Delete => "delete",
        })
    }
}

/// Big enough for any single datagram the kernel sends us (dumps come in ≤ 32 KiB parts).
const RECV_BUF: usize = 64 * 1024;

/// One rtnetlink socket, in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Sends a request and waits for the kernel's acknowledgement.
    fn execute(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::Error(_) => Ok(true),
            _ => Ok(false),
        })
    }

    /// Sends a request without a dump flag and returns its single answer.
    fn get(&mut self, msg: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        let seq = self.send(msg, 0)?;
        let mut answer = None;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::InnerMessage(m) => {
                answer = Some(m);
                Ok(true)
            }
            _ => Ok(false),
        })?;
        answer.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty netlink answer"))
    }

    /// Sends a dump request and collects every message of the answer.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |payload| match payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                Ok(false)
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => Ok(true),
            _ => Ok(false),
        })?;
        Ok(out)
    }

    /// Reads datagrams and hands every message answering `seq` to `handle` until it says done.
    fn receive(
        &mut self,
        seq: u32,
        mut handle: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let len = self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC)?;
            if len > self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("netlink datagram of {len} bytes truncated"),
                ));
            }
            let mut offset = 0;
            while offset < len {
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..len])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let msg_len = msg.header.length as usize;
                if msg_len == 0 {
                    break;
                }
                offset += msg_len.next_multiple_of(4);
                if msg.header.sequence_number == seq && handle(msg.payload)? {
                    return Ok(());
                }
            }
        }
    }
}
