//! A small synchronous ctnetlink client: list conntrack flows and delete them.
//!
//! Every call opens its own `NETLINK_NETFILTER` socket in the network namespace of the calling
//! thread (see [`crate::netns::run_in`] to work in another one). Services with DNAT need this:
//! when a UDP backend goes away, flows already NATed to it must be deleted, or the client keeps
//! sending into the void until the flow times out.
//!
//! Flows are deleted by their original tuple in conntrack zone 0; tuples of protocols without
//! ports (ICMP) carry ports 0 here, and the kernel refuses to delete those by tuple.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::errno::Errno;

// From linux/netfilter/nfnetlink.h and nfnetlink_conntrack.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const NLMSG_HDR_LEN: usize = 16;
/// Big enough for any single datagram of a dump (the kernel sends ≤ 32 KiB parts).
const RECV_BUF: usize = 64 * 1024;

/// Address family of the flows to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    V4 = libc::AF_INET as u8,
    V6 = libc::AF_INET6 as u8,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// The IP protocol number of a flow, e.g. [`Protocol::UDP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const SCTP: Protocol = Protocol(132);
}

/// One direction of a flow, as conntrack sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    /// 0 for protocols without ports.
    pub src_port: u16,
    pub dst_port: u16,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = SocketAddr::new(self.src, self.src_port);
        let dst = SocketAddr::new(self.dst, self.dst_port);
        write!(f, "protocol {} {src} -> {dst}", self.protocol.0)
    }
}

/// A conntrack entry: the tuple of the first packet and the tuple replies are expected with.
/// After DNAT, `reply.src` is the backend the flow was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub original: Tuple,
    pub reply: Tuple,
}

/// The request a [`ConntrackError`] is about, worded to fit "cannot {op}".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    List(Family),
    Delete(Tuple),
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::List(Family::V4) => f.write_str("list the ipv4 conntrack flows"),
            Operation::List(Family::V6) => f.write_str("list the ipv6 conntrack flows"),
            Operation::Delete(tuple) => write!(f, "delete the conntrack flow {tuple}"),
        }
    }
}

/// What went wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot open a netfilter netlink socket")]
    Socket(#[source] io::Error),
    #[error("cannot send the request to {op}")]
    Send {
        op: Operation,
        #[source]
        source: io::Error,
    },
    #[error("cannot receive the answer to the request to {op}")]
    Recv {
        op: Operation,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to {op}")]
    Kernel {
        op: Operation,
        #[source]
        errno: Errno,
    },
    #[error("malformed ctnetlink message: {reason}")]
    Malformed { reason: &'static str },
}

fn malformed(reason: &'static str) -> ConntrackError {
    ConntrackError::Malformed { reason }
}

/// Lists the flows of `family` in the calling thread's network namespace.
pub fn list(family: Family) -> Result<Vec<Flow>, ConntrackError> {
    Conn::open()?.list(family)
}

/// Deletes `flow` (found by its original tuple); `Ok(false)` when it was already gone.
pub fn delete(flow: &Flow) -> Result<bool, ConntrackError> {
    Conn::open()?.delete(&flow.original)
}

/// Lists the flows of `family` and deletes those `pred` picks; returns how many went. A flow
/// that vanished in between does not count and is no error.
pub fn delete_where(
    family: Family,
    mut pred: impl FnMut(&Flow) -> bool,
) -> Result<usize, ConntrackError> {
    let mut conn = Conn::open()?;
    let mut deleted = 0;
    for flow in conn.list(family)?.iter().filter(|flow| pred(flow)) {
        if conn.delete(&flow.original)? {
            deleted += 1;
        }
    }
    tracing::debug!(?family, deleted, "deleted conntrack flows");
    Ok(deleted)
}

/// Deletes the UDP flows sent to `service_ip:service_port` and DNATed to `backend`.
pub fn flush_udp_to_backend(
    service_ip: IpAddr,
    service_port: u16,
    backend: SocketAddr,
) -> Result<usize, ConntrackError> {
    delete_where(Family::of(service_ip), |flow| {
        flow.original.dst == service_ip
            && flow.original.dst_port == service_port
            && replies_from(flow, backend)
    })
}

/// Deletes the UDP flows whose replies come from `backend`, whatever their original
/// destination: those sent to it directly and those DNATed to it.
pub fn flush_udp_to_destination(backend: SocketAddr) -> Result<usize, ConntrackError> {
    delete_where(Family::of(backend.ip()), |flow| replies_from(flow, backend))
}

fn replies_from(flow: &Flow, backend: SocketAddr) -> bool {
    flow.original.protocol == Protocol::UDP
        && flow.reply.src == backend.ip()
        && flow.reply.src_port == backend.port()
}

/// One ctnetlink socket, in the network namespace of the thread that opened it.
struct Conn {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conn {
    fn open() -> Result<Conn, ConntrackError> {
        Ok(Conn {
            socket: nfnetlink_socket().map_err(ConntrackError::Socket)?,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn list(&mut self, family: Family) -> Result<Vec<Flow>, ConntrackError> {
        let op = Operation::List(family);
        let replies = self.exchange(op, |seq| {
            request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family, &[])
        })?;
        replies
            .into_iter()
            .filter_map(|reply| match reply {
                // Older kernels ignore the family of a dump request.
                Reply::Flow(flow) => (Family::of(flow.original.src) == family).then_some(Ok(flow)),
                Reply::Done => None,
                Reply::Error(errno) => Some(Err(ConntrackError::Kernel { op, errno })),
            })
            .collect()
    }

    fn delete(&mut self, tuple: &Tuple) -> Result<bool, ConntrackError> {
        let op = Operation::Delete(*tuple);
        match self.exchange(op, |seq| delete_request(tuple, seq))?.pop() {
            Some(Reply::Error(Errno::ENOENT)) => Ok(false),
            Some(Reply::Error(errno)) => Err(ConntrackError::Kernel { op, errno }),
            _ => Ok(true),
        }
    }

    /// Sends the request `encode` builds for the next sequence number and collects the replies
    /// to it, up to the final [`Reply::Done`] or [`Reply::Error`].
    fn exchange(
        &mut self,
        op: Operation,
        encode: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Vec<Reply>, ConntrackError> {
        let recv_err = |source| ConntrackError::Recv { op, source };
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .send(&encode(self.seq), 0)
            .map_err(|source| ConntrackError::Send { op, source })?;
        let mut replies = Vec::new();
        loop {
            let len = self
                .socket
                .recv(&mut &mut self.buf[..], libc::MSG_TRUNC)
                .map_err(recv_err)?;
            if len > self.buf.len() {
                let error = io::Error::new(io::ErrorKind::InvalidData, "datagram truncated");
                return Err(recv_err(error));
            }
            for reply in parse_datagram(&self.buf[..len], self.seq)? {
                let last = !matches!(reply, Reply::Flow(_));
                replies.push(reply);
                if last {
                    return Ok(replies);
                }
            }
        }
    }
}

/// A message answering our request.
#[derive(Debug, PartialEq)]
enum Reply {
    Flow(Flow),
    /// The end of a dump, or a positive acknowledgement.
    Done,
    Error(Errno),
}

/// The messages in one datagram that answer request `seq`; others are skipped.
fn parse_datagram(mut buf: &[u8], seq: u32) -> Result<Vec<Reply>, ConntrackError> {
    let mut replies = Vec::new();
    while !buf.is_empty() {
        let header = buf
            .get(..NLMSG_HDR_LEN)
            .ok_or(malformed("truncated message header"))?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let msg_seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Err(malformed("message length out of bounds"));
        }
        let payload = &buf[NLMSG_HDR_LEN..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        if msg_seq != seq {
            continue;
        }
        match kind {
            // An ack (code 0) or error, or the end of a dump (with an optional code).
            NLMSG_ERROR | NLMSG_DONE => {
                let code = match *payload {
                    [a, b, c, d, ..] => i32::from_ne_bytes([a, b, c, d]),
                    _ if kind == NLMSG_DONE => 0,
                    _ => return Err(malformed("truncated error message")),
                };
                replies.push(match code {
                    0 => Reply::Done,
                    ..0 => Reply::Error(Errno::from_raw(-code)),
                    _ => return Err(malformed("positive error code")),
                });
            }
            _ if kind >> 8 == NFNL_SUBSYS_CTNETLINK => {
                let attrs = payload.get(4..).ok_or(malformed("truncated nfgenmsg"))?;
                replies.push(Reply::Flow(parse_flow(attrs)?));
            }
            _ => {}
        }
    }
    Ok(replies)
}

/// The attributes of one conntrack message, after its nfgenmsg header.
fn parse_flow(attrs: &[u8]) -> Result<Flow, ConntrackError> {
    let (mut original, mut reply) = (None, None);
    for attr in Attrs(attrs) {
        match attr? {
            (CTA_TUPLE_ORIG, value) => original = Some(parse_tuple(value)?),
            (CTA_TUPLE_REPLY, value) => reply = Some(parse_tuple(value)?),
            _ => {}
        }
    }
    Ok(Flow {
        original: original.ok_or(malformed("flow without an original tuple"))?,
        reply: reply.ok_or(malformed("flow without a reply tuple"))?,
    })
}

fn parse_tuple(attrs: &[u8]) -> Result<Tuple, ConntrackError> {
    let (mut src, mut dst, mut protocol) = (None, None, None);
    let (mut src_port, mut dst_port) = (0, 0);
    for attr in Attrs(attrs) {
        match attr? {
            (CTA_TUPLE_IP, ips) => {
                for ip in Attrs(ips) {
                    match ip? {
                        (CTA_IP_V4_SRC | CTA_IP_V6_SRC, value) => src = Some(parse_ip(value)?),
                        (CTA_IP_V4_DST | CTA_IP_V6_DST, value) => dst = Some(parse_ip(value)?),
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, fields) => {
                for field in Attrs(fields) {
                    match field? {
                        (CTA_PROTO_NUM, &[n]) => protocol = Some(Protocol(n)),
                        (CTA_PROTO_SRC_PORT, &[a, b]) => src_port = u16::from_be_bytes([a, b]),
                        (CTA_PROTO_DST_PORT, &[a, b]) => dst_port = u16::from_be_bytes([a, b]),
                        (CTA_PROTO_NUM..=CTA_PROTO_DST_PORT, _) => {
                            return Err(malformed("protocol field of the wrong size"));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Tuple {
        src: src.ok_or(malformed("tuple without a source address"))?,
        dst: dst.ok_or(malformed("tuple without a destination address"))?,
        protocol: protocol.ok_or(malformed("tuple without a protocol"))?,
        src_port,
        dst_port,
    })
}

fn parse_ip(value: &[u8]) -> Result<IpAddr, ConntrackError> {
    if let Ok(v4) = <[u8; 4]>::try_from(value) {
        Ok(Ipv4Addr::from(v4).into())
    } else if let Ok(v6) = <[u8; 16]>::try_from(value) {
        Ok(Ipv6Addr::from(v6).into())
    } else {
        Err(malformed("address of the wrong size"))
    }
}

/// The netlink attributes in a buffer, as (type without flags, value); stops at the first
/// malformed one.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), ConntrackError>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = std::mem::take(&mut self.0);
        if buf.is_empty() {
            return None;
        }
        let Some(header) = buf.get(..4) else {
            return Some(Err(malformed("truncated attribute header")));
        };
        let len = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Some(Err(malformed("attribute length out of bounds")));
        }
        self.0 = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(Ok((kind, &buf[4..len])))
    }
}

/// A `NETLINK_NETFILTER` socket in the network namespace of the calling thread, bound and
/// connected to the kernel.
pub(crate) fn nfnetlink_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// An nfnetlink message: nlmsghdr (`kind`, NLM_F_REQUEST | `flags`, `seq`; the kernel fills
/// in our port id), nfgenmsg (`family`, version 0, `res_id` big-endian), then `attrs`.
pub(crate) fn nfnl_message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    let len = (NLMSG_HDR_LEN + 4 + attrs.len()) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend(len.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend((NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend([family, NFNETLINK_V0]);
    out.extend(res_id.to_be_bytes());
    out.extend(attrs);
    out
}

/// A ctnetlink request: nlmsghdr, nfgenmsg, then `attrs`.
fn request(op: u16, flags: u16, seq: u32, family: Family, attrs: &[u8]) -> Vec<u8> {
    let kind = NFNL_SUBSYS_CTNETLINK << 8 | op;
    nfnl_message(kind, flags, seq, family as u8, 0, attrs)
}

fn delete_request(tuple: &Tuple, seq: u32) -> Vec<u8> {
    let family = Family::of(tuple.src);
    let (src, dst) = match family {
        Family::V4 => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        Family::V6 => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
    };
    let ips = [
        attr(src, &ip_octets(tuple.src)),
        attr(dst, &ip_octets(tuple.dst)),
    ];
    let l4 = [
        attr(CTA_PROTO_NUM, &[tuple.protocol.0]),
        attr(CTA_PROTO_SRC_PORT, &tuple.src_port.to_be_bytes()),
        attr(CTA_PROTO_DST_PORT, &tuple.dst_port.to_be_bytes()),
    ];
    let l3l4 = [
        nested(CTA_TUPLE_IP, &ips.concat()),
        nested(CTA_TUPLE_PROTO, &l4.concat()),
    ];
    let orig = nested(CTA_TUPLE_ORIG, &l3l4.concat());
    request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, family, &orig)
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// One attribute, padded to 4 bytes.
pub(crate) fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = (4 + value.len()) as u16;
    let mut out = [&len.to_ne_bytes()[..], &kind.to_ne_bytes(), value].concat();
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

/// A nested attribute around `attrs`.
pub(crate) fn nested(kind: u16, attrs: &[u8]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, attrs)
}

#[cfg(test)]
mod tests;
