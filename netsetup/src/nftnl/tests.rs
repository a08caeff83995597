use std::process::Command;

use super::*;
use crate::testing::{in_netns, nft};

fn rule(modulus: Option<u32>, protocol: u8, target: &str) -> DnatRule {
    DnatRule {
        modulus,
        protocol,
        target: target.parse().unwrap(),
    }
}

#[test]
fn a_batch_is_framed_and_acked_per_message() {
    let chains = [
        ChainRules {
            chain: "svc_a".into(),
            rules: vec![
                rule(Some(2), 6, "10.88.0.5:8080"),
                rule(None, 6, "10.88.0.6:8080"),
            ],
        },
        ChainRules {
            chain: "svc_b".into(),
            rules: vec![],
        },
    ];
    let (bytes, want) = batch("t", &chains);
    // begin, flush a, 2 rules, flush b, end: every message but begin and end is acked.
    let seqs: Vec<u32> = want.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2, 3, 4, 5]);
    assert_eq!(want[3].1, "svc_b");
    let mut rest = &bytes[..];
    let mut kinds = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0, "messages stay aligned");
        kinds.push(u16::from_ne_bytes(rest[4..6].try_into().unwrap()));
        rest = &rest[len..];
    }
    let rule_msg = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE;
    let flush = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELRULE;
    assert_eq!(
        kinds,
        [
            NFNL_MSG_BATCH_BEGIN,
            flush,
            rule_msg,
            rule_msg,
            flush,
            NFNL_MSG_BATCH_END
        ]
    );
}

#[test]
fn acks_carry_the_sequence_number_they_answer() {
    // nlmsgerr: the code, then the header of the message it answers (seq 7).
    let mut msg = Vec::new();
    msg.extend(36u32.to_ne_bytes());
    msg.extend(NLMSG_ERROR.to_ne_bytes());
    msg.extend(0u16.to_ne_bytes());
    msg.extend(7u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    msg.extend((-2i32).to_ne_bytes());
    msg.extend(20u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    msg.extend(7u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    assert_eq!(acks(&msg), [(7, -2)]);
    assert_eq!(acks(&msg[..10]), []);
}

/// The expressions of each rule of `chain` in table `inet t`, as `nft -j` prints them.
fn exprs(chain: &str) -> Vec<serde_json::Value> {
    let out = Command::new("nft")
        .args(["-j", "list", "chain", "inet", "t", chain])
        .output()
        .expect("nft runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| r["expr"].clone())
        .collect()
}

const TABLE: &str = "add table inet t
add chain inet t pre { type nat hook prerouting priority dstnat; }
add chain inet t svc_nft
add chain inet t svc_ours
add rule inet t svc_ours meta l4proto udp dnat ip to 10.0.0.1:1
";

#[test]
fn its_rules_are_the_ones_nft_makes() {
    in_netns("the nftables netlink tests", || {
        nft(TABLE);
        nft("add rule inet t svc_nft numgen random mod 3 0 meta l4proto tcp dnat ip to 10.88.0.5:8080
add rule inet t svc_nft numgen random mod 2 0 meta l4proto sctp dnat ip to 10.88.0.6:80
add rule inet t svc_nft meta l4proto udp dnat ip6 to [fd00::7]:53
");
        let rules = vec![
            rule(Some(3), 6, "10.88.0.5:8080"),
            rule(Some(2), 132, "10.88.0.6:80"),
            rule(None, 17, "[fd00::7]:53"),
        ];
        let chains = [ChainRules {
            chain: "svc_ours".into(),
            rules,
        }];
        replace_rules("t", &chains).expect("replace the rules");
        let (theirs, ours) = (exprs("svc_nft"), exprs("svc_ours"));
        assert_eq!(ours.len(), 3, "the old rule went: {ours:?}");
        assert_eq!(ours, theirs);
        // Again: the chain is flushed first, so nothing doubles.
        replace_rules("t", &chains).expect("replace them again");
        assert_eq!(exprs("svc_ours"), theirs);
    });
}

#[test]
fn a_change_the_kernel_refuses_changes_nothing() {
    in_netns("the nftables netlink tests", || {
        nft(TABLE);
        let before = exprs("svc_ours");
        let chains = [
            ChainRules {
                chain: "svc_ours".into(),
                rules: vec![rule(None, 6, "10.88.0.9:80")],
            },
            ChainRules {
                chain: "svc_missing".into(),
                rules: vec![rule(None, 6, "10.88.0.9:80")],
            },
        ];
        match replace_rules("t", &chains) {
            Err(NftnlError::Kernel { chain, errno }) => {
                assert_eq!((chain.as_str(), errno), ("svc_missing", Errno::ENOENT));
            }
            other => panic!("want the kernel's ENOENT, got {other:?}"),
        }
        assert_eq!(exprs("svc_ours"), before, "one transaction: all or nothing");
    });
}
