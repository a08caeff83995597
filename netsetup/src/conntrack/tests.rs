//! Encoding and parsing against hand-built bytes, then the real thing in a throwaway netns
//! (needs root; PEAPOD_SKIP_PRIVILEGED=1 skips those tests when not root).

use std::net::UdpSocket;
use std::thread;

use nix::sched::{CloneFlags, unshare};

use super::*;
use crate::netlink::Netlink;
use crate::testing::nft;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn udp(src: &str, dst: &str) -> Tuple {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    Tuple {
        src: src.ip(),
        dst: dst.ip(),
        protocol: Protocol::UDP,
        src_port: src.port(),
        dst_port: dst.port(),
    }
}

#[test]
#[cfg(target_endian = "little")]
fn delete_request_has_the_kernel_layout() {
    let bytes = delete_request(&udp("10.0.0.1:1234", "10.0.0.2:53"), 7);
    #[rustfmt::skip]
    let expected: &[u8] = &[
        72, 0, 0, 0, 0x02, 0x01, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr: ctnetlink delete, REQUEST|ACK
        2, 0, 0, 0,                                            // nfgenmsg: AF_INET, v0, res_id 0
        52, 0, 0x01, 0x80,                                     // CTA_TUPLE_ORIG, nested
        20, 0, 0x01, 0x80,                                     //   CTA_TUPLE_IP, nested
        8, 0, 1, 0, 10, 0, 0, 1,                               //     CTA_IP_V4_SRC
        8, 0, 2, 0, 10, 0, 0, 2,                               //     CTA_IP_V4_DST
        28, 0, 0x02, 0x80,                                     //   CTA_TUPLE_PROTO, nested
        5, 0, 1, 0, 17, 0, 0, 0,                               //     CTA_PROTO_NUM, padded
        6, 0, 2, 0, 0x04, 0xd2, 0, 0,                          //     CTA_PROTO_SRC_PORT be16
        6, 0, 3, 0, 0, 53, 0, 0,                               //     CTA_PROTO_DST_PORT be16
    ];
    assert_eq!(bytes, expected);
}

/// One attribute, written independently of the code under test.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut out = [
        &((4 + value.len()) as u16).to_ne_bytes()[..],
        &kind.to_ne_bytes(),
        value,
    ]
    .concat();
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

fn msg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = (16 + payload.len()) as u32;
    let flags = 2u16; // NLM_F_MULTI
    [
        &len.to_ne_bytes()[..],
        &kind.to_ne_bytes(),
        &flags.to_ne_bytes(),
        &seq.to_ne_bytes(),
        &[0; 4],
        payload,
    ]
    .concat()
}

fn tuple_attr(kind: u16, src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let (s, d) = if src.is_ipv4() { (1, 2) } else { (3, 4) };
    let ip = [nla(s, &ip_octets(src)), nla(d, &ip_octets(dst))].concat();
    let l4 = [
        nla(1, &[proto]),
        nla(2, &sport.to_be_bytes()),
        nla(3, &dport.to_be_bytes()),
        nla(9, &[0; 3]),
    ]
    .concat();
    let zone = nla(3, &0u16.to_be_bytes()); // CTA_TUPLE_ZONE: skipped
    nla(
        kind | 0x8000,
        &[nla(1 | 0x8000, &ip), nla(2 | 0x8000, &l4), zone].concat(),
    )
}

/// A ctnetlink flow message as a dump carries it, with attributes we do not read.
fn flow_msg(seq: u32, family: u8, orig: Vec<u8>, reply: Vec<u8>) -> Vec<u8> {
    let status = nla(3, &0x18eu32.to_be_bytes());
    let protoinfo = nla(4 | 0x8000, &nla(1 | 0x8000, &nla(1, &[3])));
    let id = nla(12, &77u32.to_be_bytes());
    msg(
        0x0100,
        seq,
        &[vec![family, 0, 0, 0], orig, status, reply, protoinfo, id].concat(),
    )
}

fn sample_datagram() -> Vec<u8> {
    let (client, service, backend) = (
        "10.0.0.5".parse().unwrap(),
        "10.96.0.10".parse().unwrap(),
        "10.88.0.7".parse().unwrap(),
    );
    let v6: [IpAddr; 2] = ["fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()];
    [
        flow_msg(
            9,
            2,
            tuple_attr(1, client, service, 17, 40000, 53),
            tuple_attr(2, backend, client, 17, 5353, 40000),
        ),
        flow_msg(8, 2, vec![], vec![]), // another request's: skipped unparsed
        flow_msg(
            9,
            10,
            tuple_attr(1, v6[0], v6[1], 6, 1, 2),
            tuple_attr(2, v6[1], v6[0], 6, 2, 1),
        ),
        msg(NLMSG_DONE, 9, &0i32.to_ne_bytes()),
    ]
    .concat()
}

#[test]
fn dump_messages_parse_into_flows() {
    let replies = parse_datagram(&sample_datagram(), 9).unwrap();
    let dnat = Flow {
        original: udp("10.0.0.5:40000", "10.96.0.10:53"),
        reply: udp("10.88.0.7:5353", "10.0.0.5:40000"),
    };
    let tcp6 = Tuple {
        protocol: Protocol::TCP,
        ..udp("[fd00::1]:1", "[fd00::2]:2")
    };
    let tcp6_reply = Tuple {
        protocol: Protocol::TCP,
        ..udp("[fd00::2]:2", "[fd00::1]:1")
    };
    assert_eq!(
        replies,
        [
            Reply::Flow(dnat),
            Reply::Flow(Flow {
                original: tcp6,
                reply: tcp6_reply
            }),
            Reply::Done
        ]
    );
    assert!(replies_from(&dnat, "10.88.0.7:5353".parse().unwrap()));
    assert!(!replies_from(&dnat, "10.88.0.7:53".parse().unwrap()));
}

#[test]
fn acks_and_errors_parse_into_replies() {
    let error = |code: i32| {
        msg(
            NLMSG_ERROR,
            3,
            &[&code.to_ne_bytes()[..], &[0; 16]].concat(),
        )
    };
    assert_eq!(parse_datagram(&error(0), 3).unwrap(), [Reply::Done]);
    assert_eq!(
        parse_datagram(&error(-libc::ENOENT), 3).unwrap(),
        [Reply::Error(Errno::ENOENT)]
    );
    assert!(parse_datagram(&error(5), 3).is_err());
    assert!(parse_datagram(&msg(NLMSG_ERROR, 3, &[0; 2]), 3).is_err());
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let good = sample_datagram();
    let mut boundaries = vec![0];
    let mut offset = 0;
    while offset < good.len() {
        offset += u32::from_ne_bytes(good[offset..offset + 4].try_into().unwrap()) as usize;
        boundaries.push(offset);
    }
    for cut in 0..good.len() {
        let parsed = parse_datagram(&good[..cut], 9);
        assert_eq!(parsed.is_ok(), boundaries.contains(&cut), "cut at {cut}");
    }
    for at in 0..good.len() {
        for byte in [0x00, 0x03, 0xff] {
            let mut bad = good.clone();
            bad[at] = byte;
            let _ = parse_datagram(&bad, 9);
        }
    }
    let bare = |attrs: Vec<u8>| msg(0x0100, 1, &[vec![2, 0, 0, 0], attrs].concat());
    let orig = tuple_attr(1, LOCALHOST, LOCALHOST, 17, 1, 2);
    let no_reply = bare(orig.clone());
    let short_ip = bare(
        [
            nla(1 | 0x8000, &nla(1 | 0x8000, &nla(1, &[127, 0, 0]))),
            orig.clone(),
        ]
        .concat(),
    );
    let long_port = bare(
        [
            orig.clone(),
            nla(2 | 0x8000, &nla(2 | 0x8000, &nla(2, &[0; 4]))),
        ]
        .concat(),
    );
    let mut overlong = bare(orig.clone());
    overlong[20] = 0xff; // CTA_TUPLE_ORIG longer than the message
    for bad in [
        no_reply,
        short_ip,
        long_port,
        overlong,
        bare(vec![2, 0]),
        msg(0x0100, 1, &[2, 0]),
    ] {
        assert!(
            matches!(
                parse_datagram(&bad, 1),
                Err(ConntrackError::Malformed { .. })
            ),
            "{bad:?}"
        );
    }
}

/// True when the privileged tests can run; fails them loudly when not root, unless
/// PEAPOD_SKIP_PRIVILEGED=1.
fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("PEAPOD_SKIP_PRIVILEGED").as_deref() == Ok("1"),
        "the conntrack tests need root: they unshare a network namespace \
         (set PEAPOD_SKIP_PRIVILEGED=1 to skip them)"
    );
    eprintln!("not root and PEAPOD_SKIP_PRIVILEGED=1: skipping");
    false
}

/// Runs `test` on a fresh thread in a new network namespace with `lo` up; the namespace goes
/// with the thread.
fn in_fresh_netns(test: impl FnOnce() + Send) {
    if !privileged() {
        return;
    }
    thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
            let mut nl = Netlink::open().expect("open rtnetlink");
            let lo = nl.existing_link("lo").expect("find lo");
            nl.set_up(&lo).expect("bring lo up");
            test();
        });
    });
}

/// Sends one datagram from a fresh socket on 127.0.0.1; returns the socket's address.
fn send_from_localhost(to: SocketAddr) -> SocketAddr {
    let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    socket.send_to(b"ping", to).unwrap();
    socket.local_addr().unwrap()
}

fn tuple(src: SocketAddr, dst: SocketAddr) -> Tuple {
    udp(&src.to_string(), &dst.to_string())
}

#[test]
fn loopback_udp_flow_is_listed_flushed_and_gone() {
    in_fresh_netns(|| {
        nft(
            "table inet t { chain o { type filter hook output priority 0; ct state new counter; }; }",
        );
        let listener = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let server = listener.local_addr().unwrap();
        let client = send_from_localhost(server);
        let flow = Flow {
            original: tuple(client, server),
            reply: tuple(server, client),
        };

        assert!(
            list(Family::V4).unwrap().contains(&flow),
            "{flow:?} not listed"
        );
        assert!(
            list(Family::V6)
                .unwrap()
                .iter()
                .all(|f| f.original.src.is_ipv6())
        );
        assert_eq!(flush_udp_to_destination(server).unwrap(), 1);
        assert!(!list(Family::V4).unwrap().contains(&flow));
        assert!(!delete(&flow).unwrap(), "a second delete finds nothing");
    });
}

#[test]
fn flush_udp_to_backend_deletes_only_the_flow_dnated_to_it() {
    in_fresh_netns(|| {
        let listener = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let backend = listener.local_addr().unwrap();
        nft(&format!(
            "table ip n {{ chain o {{ type nat hook output priority -100; \
                 ip daddr 127.0.0.2 udp dport 99 dnat to {backend}; }}; }}"
        ));
        let service: SocketAddr = "127.0.0.2:99".parse().unwrap();
        let via_service = send_from_localhost(service);
        let direct = send_from_localhost(backend);
        let dnat = Flow {
            original: tuple(via_service, service),
            reply: tuple(backend, via_service),
        };
        let plain = Flow {
            original: tuple(direct, backend),
            reply: tuple(backend, direct),
        };

        let flows = list(Family::V4).unwrap();
        assert!(flows.contains(&dnat) && flows.contains(&plain), "{flows:?}");
        let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            flush_udp_to_backend(service.ip(), 99, elsewhere).unwrap(),
            0
        );
        assert_eq!(flush_udp_to_backend(service.ip(), 99, backend).unwrap(), 1);
        let flows = list(Family::V4).unwrap();
        assert!(
            !flows.contains(&dnat) && flows.contains(&plain),
            "{flows:?}"
        );
    });
}
