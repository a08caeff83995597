//! The one change `nft` is too slow for: a Service's backends, replaced in its chain.
//!
//! `nft -f` reads every chain of the ruleset into its cache before it does anything (at
//! 10,000 Services, ~16 ms of CPU), and a change of endpoints needs none of that: the chain
//! is there, its name is known, and only its rules change. So that change goes to the kernel
//! as our own nfnetlink batch (one transaction, as `nft -f` sends it): the chain flushed,
//! then one rule per backend, each with the expressions `nft` makes of
//! `[numgen random mod K 0] meta l4proto P dnat ip|ip6 to ADDR:PORT` (see
//! [`crate::service`]), so that `nft list` and `peapod net explain` read them as they read
//! the rules `nft` made. Everything else (new chains, affinity, map elements) stays with
//! `nft`. Like `nft`, it works in the network namespace of the calling thread.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLMSG_ERROR};
use nix::errno::Errno;

use crate::conntrack::{attr, nested, nfnetlink_socket, nfnl_message};

// From linux/netfilter/nfnetlink.h and nf_tables.h.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

const NLMSG_HDR_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NftnlError {
    #[error("cannot talk nfnetlink")]
    Socket(#[source] io::Error),
    #[error("the kernel refused the change of chain {chain}: {errno}")]
    Kernel { chain: String, errno: Errno },
    #[error("the kernel answered {got} of the {want} messages of the change")]
    Incomplete { got: usize, want: usize },
}

/// One rule of a Service chain: take the backend `target` (with probability 1/`modulus` when
/// there is one, else always) for protocol `protocol` (an IP protocol number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnatRule {
    pub modulus: Option<u32>,
    pub protocol: u8,
    pub target: SocketAddr,
}

/// A chain of `table` (family inet) whose rules become `rules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRules {
    pub chain: String,
    pub rules: Vec<DnatRule>,
}

/// Replaces the rules of every chain in `chains` (which must exist) in one transaction.
pub fn replace_rules(table: &str, chains: &[ChainRules]) -> Result<(), NftnlError> {
    let (batch, want) = batch(table, chains);
    let socket = nfnetlink_socket().map_err(NftnlError::Socket)?;
    socket.send(&batch, 0).map_err(NftnlError::Socket)?;
    // The kernel handles the whole batch inside send: every answer is queued already.
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
            Ok(len) => answers.extend(acks(&buf[..len.min(buf.len())])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(NftnlError::Socket(e)),
        }
    }
    if let Some((seq, code)) = answers.iter().find(|(_, code)| *code != 0) {
        let chain = want
            .iter()
            .find(|(s, _)| s == seq)
            .map_or_else(|| "?".to_owned(), |(_, c)| c.clone());
        return Err(NftnlError::Kernel {
            chain,
            errno: Errno::from_raw(-code),
        });
    }
    if answers.len() != want.len() {
        return Err(NftnlError::Incomplete {
            got: answers.len(),
            want: want.len(),
        });
    }
    Ok(())
}

/// The batch, and the sequence number of each message that asks for an ack, with its chain.
fn batch(table: &str, chains: &[ChainRules]) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut out = Vec::new();
    let mut want = Vec::new();
    let mut seq = 0u32;
    let mut next = || {
        seq += 1;
        seq
    };
    out.extend(nfnl_message(
        NFNL_MSG_BATCH_BEGIN,
        0,
        next(),
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    let names = |chain: &str| {
        [
            attr(NFTA_RULE_TABLE, &cstr(table)),
            attr(NFTA_RULE_CHAIN, &cstr(chain)),
        ]
        .concat()
    };
    for c in chains {
        let s = next();
        let kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELRULE;
        out.extend(nfnl_message(
            kind,
            NLM_F_ACK,
            s,
            NFPROTO_INET,
            0,
            &names(&c.chain),
        ));
        want.push((s, c.chain.clone()));
        for r in &c.rules {
            let s = next();
            let kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE;
            let attrs = [names(&c.chain), rule(r)].concat();
            let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
            out.extend(nfnl_message(kind, flags, s, NFPROTO_INET, 0, &attrs));
            want.push((s, c.chain.clone()));
        }
    }
    out.extend(nfnl_message(
        NFNL_MSG_BATCH_END,
        0,
        next(),
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    (out, want)
}

/// The expressions of one rule, as `nft` linearizes them.
fn rule(r: &DnatRule) -> Vec<u8> {
    let mut exprs = Vec::new();
    if let Some(modulus) = r.modulus {
        exprs.push(expr(
            "numgen",
            &[
                attr(NFTA_NG_DREG, &NFT_REG_1.to_be_bytes()),
                attr(NFTA_NG_MODULUS, &modulus.to_be_bytes()),
                attr(NFTA_NG_TYPE, &NFT_NG_RANDOM.to_be_bytes()),
                attr(NFTA_NG_OFFSET, &0u32.to_be_bytes()),
            ]
            .concat(),
        ));
        exprs.push(cmp_eq(&0u32.to_ne_bytes()));
    }
    exprs.push(expr(
        "meta",
        &[
            attr(NFTA_META_DREG, &NFT_REG_1.to_be_bytes()),
            attr(NFTA_META_KEY, &NFT_META_L4PROTO.to_be_bytes()),
        ]
        .concat(),
    ));
    exprs.push(cmp_eq(&[r.protocol]));
    let (family, addr) = match r.target.ip() {
        IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
    };
    exprs.push(immediate(NFT_REG_1, &addr));
    exprs.push(immediate(NFT_REG_2, &r.target.port().to_be_bytes()));
    exprs.push(expr(
        "nat",
        &[
            attr(NFTA_NAT_TYPE, &NFT_NAT_DNAT.to_be_bytes()),
            attr(NFTA_NAT_FAMILY, &family.to_be_bytes()),
            attr(NFTA_NAT_REG_ADDR_MIN, &NFT_REG_1.to_be_bytes()),
            attr(NFTA_NAT_REG_PROTO_MIN, &NFT_REG_2.to_be_bytes()),
            attr(NFTA_NAT_FLAGS, &NF_NAT_RANGE_PROTO_SPECIFIED.to_be_bytes()),
        ]
        .concat(),
    ));
    nested(NFTA_RULE_EXPRESSIONS, &exprs.concat())
}

fn expr(name: &str, data: &[u8]) -> Vec<u8> {
    let body = [
        attr(NFTA_EXPR_NAME, &cstr(name)),
        nested(NFTA_EXPR_DATA, data),
    ]
    .concat();
    nested(NFTA_LIST_ELEM, &body)
}

/// `cmp eq reg 1 <value>`.
fn cmp_eq(value: &[u8]) -> Vec<u8> {
    expr(
        "cmp",
        &[
            attr(NFTA_CMP_SREG, &NFT_REG_1.to_be_bytes()),
            attr(NFTA_CMP_OP, &NFT_CMP_EQ.to_be_bytes()),
            nested(NFTA_CMP_DATA, &attr(NFTA_DATA_VALUE, value)),
        ]
        .concat(),
    )
}

fn immediate(reg: u32, value: &[u8]) -> Vec<u8> {
    expr(
        "immediate",
        &[
            attr(NFTA_IMMEDIATE_DREG, &reg.to_be_bytes()),
            nested(NFTA_IMMEDIATE_DATA, &attr(NFTA_DATA_VALUE, value)),
        ]
        .concat(),
    )
}

fn cstr(s: &str) -> Vec<u8> {
    [s.as_bytes(), &[0]].concat()
}

/// The (sequence number, code) of each ack (0) or error (-errno) in a datagram.
fn acks(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDR_LEN || len > buf.len() {
            break;
        }
        let payload = &buf[NLMSG_HDR_LEN..len];
        if kind == NLMSG_ERROR
            && let [a, b, c, d, ..] = *payload
        {
            let code = i32::from_ne_bytes([a, b, c, d]);
            // The error message quotes the header of the message it answers.
            let seq = payload
                .get(12..16)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
            out.push((seq, code));
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests;
