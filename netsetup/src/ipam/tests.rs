use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool() -> (tempfile::TempDir, HostLocal) {
    let dir = tempfile::tempdir().unwrap();
    let ipam = HostLocal::new(dir.path().join("ipam"));
    (dir, ipam)
}

#[test]
fn gateway_is_the_first_host_address() {
    assert_eq!(gateway(net("10.88.0.0/16")), ip("10.88.0.1"));
    assert_eq!(gateway(net("10.88.3.7/24")), ip("10.88.3.1"));
    assert_eq!(gateway(net("fd00::/64")), ip("fd00::1"));
}

#[test]
fn allocates_in_order_after_network_and_gateway() {
    let (_dir, ipam) = pool();
    let subnet = net("10.88.0.0/24");
    let got: Vec<IpAddr> = (0..3)
        .map(|_| ipam.allocate(subnet, "a").unwrap())
        .collect();
    assert_eq!(got, [ip("10.88.0.2"), ip("10.88.0.3"), ip("10.88.0.4")]);
}

#[test]
fn slash_29_gives_five_then_exhausted() {
    let (_dir, ipam) = pool();
    let subnet = net("192.168.7.0/29");
    let got: Vec<IpAddr> = (0..5)
        .map(|i| ipam.allocate(subnet, &format!("pod{i}")).unwrap())
        .collect();
    let want: Vec<IpAddr> = (2..=6).map(|i| ip(&format!("192.168.7.{i}"))).collect();
    assert_eq!(got, want);
    let err = ipam.allocate(subnet, "pod5").unwrap_err();
    assert!(matches!(err, IpamError::PoolExhausted { subnet: s } if s == subnet));
    assert_eq!(err.to_string(), "no free address left in 192.168.7.0/29");
}

#[test]
fn lease_file_names_its_owner() {
    let (_dir, ipam) = pool();
    let got = ipam.allocate(net("10.88.0.0/16"), "sandbox-1").unwrap();
    let text = std::fs::read_to_string(ipam.dir().join(got.to_string())).unwrap();
    assert_eq!(text, "sandbox-1\n");
    let leases = ipam.leases().unwrap();
    assert_eq!(
        leases,
        [Lease {
            ip: got,
            owner: "sandbox-1".into()
        }]
    );
}

#[test]
fn continues_after_the_last_reserved_and_wraps_around() {
    let (_dir, ipam) = pool();
    let subnet = net("10.0.0.0/29");
    let a = ipam.allocate(subnet, "a").unwrap();
    let b = ipam.allocate(subnet, "b").unwrap();
    assert_eq!((a, b), (ip("10.0.0.2"), ip("10.0.0.3")));
    // Released addresses are not reused at once: allocation goes on after .3.
    assert_eq!(ipam.release(a, "a").unwrap(), Release::Released);
    assert_eq!(ipam.allocate(subnet, "c").unwrap(), ip("10.0.0.4"));
    assert_eq!(ipam.allocate(subnet, "d").unwrap(), ip("10.0.0.5"));
    assert_eq!(ipam.allocate(subnet, "e").unwrap(), ip("10.0.0.6"));
    // Wrap-around: .2 was released, .3 is still held.
    assert_eq!(ipam.allocate(subnet, "f").unwrap(), ip("10.0.0.2"));
    assert!(
        ipam.allocate(subnet, "g")
            .unwrap_err()
            .to_string()
            .contains("no free")
    );
}

#[test]
fn last_reserved_survives_a_new_instance() {
    let (_dir, ipam) = pool();
    let subnet = net("10.0.0.0/24");
    ipam.allocate(subnet, "a").unwrap();
    let again = HostLocal::new(ipam.dir());
    assert_eq!(again.allocate(subnet, "b").unwrap(), ip("10.0.0.3"));
    let last = std::fs::read_to_string(ipam.dir().join("last_reserved_ip.10.0.0.0_24")).unwrap();
    assert_eq!(last.trim(), "10.0.0.3");
}

#[test]
fn release_then_reuse() {
    let (_dir, ipam) = pool();
    let subnet = net("10.0.0.0/30");
    let only = ipam.allocate(subnet, "a").unwrap();
    assert_eq!(only, ip("10.0.0.2"));
    assert!(ipam.allocate(subnet, "b").is_err());
    assert_eq!(ipam.release(only, "a").unwrap(), Release::Released);
    assert_eq!(ipam.allocate(subnet, "b").unwrap(), only);
}

#[test]
fn release_leaves_other_owners_alone() {
    let (_dir, ipam) = pool();
    let got = ipam.allocate(net("10.0.0.0/24"), "a").unwrap();
    assert_eq!(
        ipam.release(got, "b").unwrap(),
        Release::HeldByOther { owner: "a".into() }
    );
    assert!(ipam.dir().join(got.to_string()).exists());
    assert_eq!(ipam.release(got, "a").unwrap(), Release::Released);
    assert_eq!(ipam.release(got, "a").unwrap(), Release::NotLeased);
}

#[test]
fn release_owner_frees_all_of_its_leases() {
    let (_dir, ipam) = pool();
    let subnet = net("10.0.0.0/24");
    let a1 = ipam.allocate(subnet, "a").unwrap();
    let b = ipam.allocate(subnet, "b").unwrap();
    let a2 = ipam.allocate(net("10.1.0.0/24"), "a").unwrap();
    let mut freed = ipam.release_owner("a").unwrap();
    freed.sort();
    assert_eq!(freed, [a1, a2]);
    let left: Vec<IpAddr> = ipam.leases().unwrap().iter().map(|l| l.ip).collect();
    assert_eq!(left, [b]);
}

#[test]
fn subnets_keep_their_own_cursor() {
    let (_dir, ipam) = pool();
    assert_eq!(
        ipam.allocate(net("10.0.0.0/24"), "a").unwrap(),
        ip("10.0.0.2")
    );
    assert_eq!(
        ipam.allocate(net("10.1.0.0/24"), "b").unwrap(),
        ip("10.1.0.2")
    );
    assert_eq!(
        ipam.allocate(net("10.0.0.0/24"), "c").unwrap(),
        ip("10.0.0.3")
    );
}

#[test]
fn host_bits_of_the_subnet_are_ignored() {
    let (_dir, ipam) = pool();
    assert_eq!(
        ipam.allocate(net("10.0.0.77/24"), "a").unwrap(),
        ip("10.0.0.2")
    );
}

#[test]
fn tiny_subnets_have_no_room() {
    let (_dir, ipam) = pool();
    for s in ["10.0.0.0/31", "10.0.0.5/32"] {
        let err = ipam.allocate(net(s), "a").unwrap_err();
        assert!(matches!(err, IpamError::PoolExhausted { .. }), "{s}: {err}");
    }
}

#[test]
fn ipv6_is_refused_for_now() {
    let (_dir, ipam) = pool();
    let err = ipam.allocate(net("fd00::/64"), "a").unwrap_err();
    assert!(matches!(err, IpamError::Ipv6Unsupported { .. }));
}

#[test]
fn owners_must_fit_in_a_lease_file() {
    let (_dir, ipam) = pool();
    for bad in ["", "a\nb", " a", "a\0"] {
        let err = ipam.allocate(net("10.0.0.0/24"), bad).unwrap_err();
        assert!(matches!(err, IpamError::InvalidOwner { .. }), "{bad:?}");
    }
}

#[test]
fn leases_ignore_other_files() {
    let (_dir, ipam) = pool();
    ipam.allocate(net("10.0.0.0/24"), "a").unwrap();
    std::fs::write(ipam.dir().join("lock"), "").unwrap();
    assert_eq!(ipam.leases().unwrap().len(), 1);
}

#[test]
fn missing_directory_means_no_leases() {
    let (_dir, ipam) = pool();
    assert!(ipam.leases().unwrap().is_empty());
    assert!(ipam.release_owner("a").unwrap().is_empty());
}

#[test]
fn concurrent_allocations_get_distinct_addresses() {
    let (_dir, ipam) = pool();
    let ipam = Arc::new(ipam);
    let subnet = net("10.0.0.0/24");
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let ipam = Arc::clone(&ipam);
            std::thread::spawn(move || ipam.allocate(subnet, &format!("pod{i}")).unwrap())
        })
        .collect();
    let got: HashSet<IpAddr> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(got.len(), 64);
    assert_eq!(ipam.leases().unwrap().len(), 64);
}

#[test]
fn two_instances_on_one_directory_do_not_collide() {
    // Two allocators that do not share a mutex, like two processes: O_EXCL keeps them apart.
    let (_dir, first) = pool();
    let second = Arc::new(HostLocal::new(first.dir()));
    let first = Arc::new(first);
    let subnet = net("10.0.0.0/26");
    let threads: Vec<_> = (0..60)
        .map(|i| {
            let ipam = if i % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            std::thread::spawn(move || ipam.allocate(subnet, &format!("pod{i}")).unwrap())
        })
        .collect();
    let got: HashSet<IpAddr> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(got.len(), 60);
    // 61 usable in a /26 (64 less network, gateway, broadcast): one more, then none.
    second.allocate(subnet, "x").unwrap();
    assert!(first.allocate(subnet, "y").is_err());
}

#[test]
fn the_hint_is_rewritten_in_place_and_a_bad_one_means_the_start() {
    let (_dir, ipam) = pool();
    let subnet = net("10.0.0.0/24");
    let hint = ipam.dir().join("last_reserved_ip.10.0.0.0_24");
    ipam.allocate(subnet, "a").unwrap();
    // An older, longer hint is overwritten whole; the file stays the same one.
    std::fs::write(&hint, "10.0.0.200\n\n\n\n\n\n\n").unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&hint).unwrap());
    assert_eq!(ipam.allocate(subnet, "b").unwrap(), ip("10.0.0.201"));
    let text = std::fs::read_to_string(&hint).unwrap();
    assert_eq!(text.trim(), "10.0.0.201");
    assert_eq!(text.len(), 16);
    let now = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&hint).unwrap());
    assert_eq!(now, inode);
    // Garbage (a torn write): from the beginning of the range (10.0.0.2 is a's).
    std::fs::write(&hint, "10.0.").unwrap();
    assert_eq!(ipam.allocate(subnet, "c").unwrap(), ip("10.0.0.3"));
}
