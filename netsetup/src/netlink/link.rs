//! Links: look up, create (bridge, veth pair), change, delete.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};

use super::{LinkOp, Netlink, NetlinkError};

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Index of the bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    /// Link type (`bridge`, `veth`, …); `None` for plain devices such as `lo`.
    pub kind: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: None,
            mac: None,
            master: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Address(mac) => link.mac = Some(format_mac(mac)),
                LinkAttribute::Controller(index) => link.master = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// A veth pair to create: `host` stays in the handle's namespace (optionally as a port of
/// `master`), `peer` is created directly inside the namespace of `peer_netns`.
pub struct VethPair<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub mtu: u32,
    pub master: Option<u32>,
    pub peer_netns: BorrowedFd<'a>,
}

fn up_message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg
}

impl Netlink {
    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(RouteNetlinkMessage::NewLink(answer)) => Ok(Some(Link::from_message(&answer))),
            Ok(_) => Err(link_error(LinkOp::LookUp, name, unexpected())),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(link_error(LinkOp::LookUp, name, e)),
        }
    }

    /// The link named `name`; its absence is an error.
    pub fn existing_link(&mut self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)?.ok_or_else(|| NetlinkError::NoSuchLink {
            ifname: name.to_owned(),
        })
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|source| NetlinkError::Dump {
                what: "links",
                source,
            })?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge, up, with the given MTU. Fails with EEXIST if the name is taken.
    pub fn create_bridge(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = up_message(0);
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::Mtu(mtu),
            // A bridge without an address of its own takes its lowest port's MAC, which
            // changes as pods come and go and leaves stale entries in the pods' ARP caches.
            LinkAttribute::Address(random_local_mac().to_vec()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        self.execute(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| link_error(LinkOp::Create, name, e))
    }

    /// Creates a veth pair in one request: the host end up (and a port of `master` if given),
    /// the peer down inside `peer_netns`. Fails with EEXIST if either name is taken.
    pub fn create_veth_pair(&mut self, pair: &VethPair<'_>) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(pair.peer.to_owned()),
            LinkAttribute::Mtu(pair.mtu),
            LinkAttribute::NetNsFd(pair.peer_netns.as_raw_fd()),
        ];
        let mut msg = up_message(0);
        msg.attributes = vec![
            LinkAttribute::IfName(pair.host.to_owned()),
            LinkAttribute::Mtu(pair.mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        if let Some(master) = pair.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        self.execute(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| link_error(LinkOp::Create, pair.host, e))
    }

    /// Moves a link into the network namespace of `netns` (an open nsfs file).
    pub fn move_to_netns(
        &mut self,
        link: &Link,
        netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.set(link, LinkOp::Move, msg)
    }

    /// Renames a link; the link must be down.
    pub fn rename(&mut self, link: &Link, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.set(link, LinkOp::Rename, msg)
    }

    pub fn set_mtu(&mut self, link: &Link, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set(link, LinkOp::SetMtu, msg)
    }

    pub fn set_up(&mut self, link: &Link) -> Result<(), NetlinkError> {
        self.set(link, LinkOp::BringUp, up_message(link.index))
    }

    /// Turns hairpin mode on or off for a bridge port (`IFLA_BRPORT_MODE`), so that a pod can
    /// reach itself through a translated address.
    pub fn set_hairpin(&mut self, port: &Link, on: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = port.index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.execute(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(|e| link_error(LinkOp::SetHairpin, &port.name, e))
    }

    /// Deletes the link named `name`; returns false when there was no such link.
    /// Takes the link named `name` down and off its bridge, in one request, so that it carries
    /// no more traffic. `Ok(false)`: there is no such link.
    pub fn isolate(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::Controller(0));
        match self.execute(RouteNetlinkMessage::SetLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(link_error(LinkOp::Isolate, name, e)),
        }
    }

    pub fn delete_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.execute(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(link_error(LinkOp::Delete, name, e)),
        }
    }

    fn set(&mut self, link: &Link, op: LinkOp, msg: LinkMessage) -> Result<(), NetlinkError> {
        self.execute(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| link_error(op, &link.name, e))
    }
}

fn link_error(op: LinkOp, ifname: &str, source: io::Error) -> NetlinkError {
    NetlinkError::Link {
        op,
        ifname: ifname.to_owned(),
        source,
    }
}

fn unexpected() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink answer")
}

/// A random unicast, locally administered MAC address.
fn random_local_mac() -> [u8; 6] {
    use std::io::Read;
    let mut mac = [0u8; 6];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}
