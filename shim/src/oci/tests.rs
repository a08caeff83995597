use serde_json::{Value, json};

use super::*;

/// A bundle's config.json as `ctr run` writes it (trimmed), with a pod's namespaces.
fn config() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": { "uid": 1000, "gid": 1000, "additionalGids": [10] },
            "args": ["/bin/sh", "-c", "echo hi"],
            "env": ["PATH=/bin", "A=1"],
            "cwd": "/work",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN"],
                "effective": ["CAP_KILL", "CAP_CHOWN"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"]
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 500
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "box",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts" },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm" },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue" },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs" },
            { "destination": "/run", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/etc/hosts/deeper", "type": "bind", "source": "/tmp/b",
              "options": ["rbind", "rprivate", "ro"] },
            { "destination": "/etc/hosts", "type": "bind", "source": "/tmp/a",
              "options": ["rbind", "rslave"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" },
                { "type": "ipc", "path": "/proc/42/ns/ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "network", "path": "/var/run/netns/pod" }
            ],
            "cgroupsPath": "/kubepods/pod1/c1",
            "sysctl": { "net.ipv4.ping_group_range": "0 0", "kernel.shmmni": "100" },
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "resources": {
                "memory": { "limit": 67108864 },
                "cpu": { "shares": 512, "quota": 50000, "period": 100000 },
                "pids": { "limit": 64 }
            }
        }
    })
}

fn spec(v: &Value) -> Spec {
    serde_json::from_value(v.clone()).expect("a valid spec")
}

fn task(rootfs: &[RootMount]) -> Task<'_> {
    Task {
        id: "c1",
        bundle: Path::new("/run/bundle"),
        dir: Path::new("/run/task"),
        rootfs,
        fifos: Fifos {
            stdin: None,
            stdout: Some("/run/fifo/out".into()),
            stderr: Some("/run/fifo/err".into()),
        },
        control_socket: "/run/task/control.sock".into(),
        cgroups: Vec::new(),
        terminal: false,
    }
}

fn overlay() -> Vec<RootMount> {
    vec![RootMount {
        typ: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            "index=off".into(),
            "workdir=/snap/9/work".into(),
            "upperdir=/snap/9/fs".into(),
            "lowerdir=/snap/2/fs:/snap/1/fs".into(),
        ],
    }]
}

#[test]
fn a_bundle_becomes_a_launch_spec() {
    let mounts = overlay();
    let l = launch_spec(&spec(&config()), &task(&mounts)).unwrap();
    assert_eq!(l.argv, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(l.env, ["PATH=/bin", "A=1"]);
    assert_eq!(l.cwd, "/work");
    assert_eq!(
        (l.user.uid, l.user.gid, l.user.groups.clone()),
        (1000, 1000, vec![10])
    );
    assert_eq!(l.caps, ["CAP_CHOWN", "CAP_KILL"]);
    assert!(l.no_new_privs);
    assert_eq!(l.oom_score_adj, Some(500));
    assert_eq!(l.masked_paths, ["/proc/kcore"]);
    assert_eq!(l.readonly_paths, ["/proc/sys"]);
    assert_eq!(l.hostname.as_deref(), Some("box"));
    assert_eq!(
        l.sysctls,
        [
            ("kernel.shmmni".to_owned(), "100".to_owned()),
            ("net.ipv4.ping_group_range".to_owned(), "0 0".to_owned())
        ]
    );
    assert_eq!(
        l.fifos.as_ref().unwrap().stdout,
        Some("/run/fifo/out".into())
    );
    assert!(l.log_path.is_none() && l.seccomp.is_none());
    assert!(!l.stdio.tty);

    let ns = &l.namespaces;
    assert_eq!(ns.net, Some("/var/run/netns/pod".into()));
    assert_eq!(ns.ipc, Some("/proc/42/ns/ipc".into()));
    assert_eq!(ns.uts, None);
    assert_eq!(ns.pid, PidNs::Own);
    assert_eq!(
        ns.new,
        NewNamespaces {
            uts: true,
            ..Default::default()
        }
    );

    let r = &l.rootfs;
    assert_eq!(r.layers, [PathBuf::from("/snap/1/fs"), "/snap/2/fs".into()]);
    assert_eq!(r.upper, PathBuf::from("/snap/9/fs"));
    assert_eq!(r.work, PathBuf::from("/snap/9/work"));
    assert_eq!(r.target, PathBuf::from("/run/bundle/rootfs"));
    assert!(r.readonly);

    // The standard filesystems are the init's; /run stays a tmpfs; binds parents first.
    assert_eq!(l.tmpfs.len(), 1);
    let run = &l.tmpfs[0];
    assert_eq!(run.destination, "/run");
    assert!(run.nosuid && !run.noexec && !run.readonly);
    assert_eq!(run.data, "mode=755,size=65536k");
    let binds: Vec<(&str, bool, Propagation)> = l
        .mounts
        .iter()
        .map(|b| (b.destination.as_str(), b.readonly, b.propagation))
        .collect();
    assert_eq!(
        binds,
        [
            ("/etc/hosts", false, Propagation::HostToContainer),
            ("/etc/hosts/deeper", true, Propagation::Private),
        ]
    );
    assert!(l.mounts.iter().all(|b| !b.recursive_readonly));
}

#[test]
fn an_rro_bind_is_read_only_with_the_mounts_below() {
    let mut v = config();
    v["mounts"] = json!([
        { "destination": "/data", "type": "bind", "source": "/tmp/d",
          "options": ["rbind", "rprivate", "rro"] }
    ]);
    let (binds, _) = mounts(&spec(&v)).unwrap();
    assert!(binds[0].readonly && binds[0].recursive_readonly);
}

#[test]
fn rootfs_without_a_writable_layer_writes_into_the_task_dir() {
    let view = vec![RootMount {
        typ: "overlay".into(),
        source: "overlay".into(),
        options: vec!["lowerdir=/snap/2/fs:/snap/1/fs".into()],
    }];
    let l = launch_spec(&spec(&config()), &task(&view)).unwrap();
    assert_eq!(l.rootfs.upper, PathBuf::from("/run/task/upper"));
    assert_eq!(l.rootfs.layers.len(), 2);

    let bind = vec![RootMount {
        typ: "bind".into(),
        source: "/snap/1/fs".into(),
        options: vec!["rbind".into(), "rw".into()],
    }];
    let l = launch_spec(&spec(&config()), &task(&bind)).unwrap();
    assert_eq!(l.rootfs.layers, [PathBuf::from("/snap/1/fs")]);

    let l = launch_spec(&spec(&config()), &task(&[])).unwrap();
    assert_eq!(l.rootfs.layers, [PathBuf::from("/run/bundle/rootfs")]);
}

#[test]
fn what_the_launch_path_cannot_do_is_refused() {
    let refused = |edit: &dyn Fn(&mut Value), rootfs: &[RootMount]| {
        let mut v = config();
        edit(&mut v);
        launch_spec(&spec(&v), &task(rootfs)).unwrap_err()
    };
    let mounts = overlay();
    let unsupported = |e: OciError| matches!(e, OciError::Unsupported { .. });
    // A terminal the request did not ask for.
    assert!(matches!(
        refused(&|v| v["process"]["terminal"] = json!(true), &mounts),
        OciError::Invalid { .. }
    ));
    assert!(unsupported(refused(
        &|v| v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "type": "user" })),
        &mounts
    )));
    assert!(unsupported(refused(
        &|v| v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "type": "mount", "path": "/proc/1/ns/mnt" })),
        &mounts
    )));
    assert!(unsupported(refused(
        &|v| v["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "destination": "/mnt", "type": "nfs", "source": "srv:/x" })),
        &mounts
    )));
    assert!(matches!(
        refused(
            &|v| v["linux"]["sysctl"] = json!({ "../../etc/x": "1" }),
            &mounts
        ),
        OciError::Invalid { .. }
    ));
    let two = [mounts[0].clone(), mounts[0].clone()];
    assert!(unsupported(refused(&|_| {}, &two)));
    let squash = [RootMount {
        typ: "squashfs".into(),
        ..Default::default()
    }];
    assert!(unsupported(refused(&|_| {}, &squash)));
    let no_lower = [RootMount {
        typ: "overlay".into(),
        options: vec!["upperdir=/u".into(), "workdir=/w".into()],
        ..Default::default()
    }];
    assert!(matches!(
        refused(&|_| {}, &no_lower),
        OciError::Invalid { .. }
    ));
    assert!(matches!(
        refused(&|v| v["process"]["args"] = json!([]), &mounts),
        OciError::Invalid { .. }
    ));
}

#[test]
fn cgroup_paths_and_resources() {
    let s = spec(&config());
    assert_eq!(
        cgroup_path(&s).unwrap(),
        Some(PathBuf::from("kubepods/pod1/c1"))
    );
    let r = resources(&s);
    assert_eq!(r.memory_limit, 64 << 20);
    assert_eq!(
        (r.cpu_shares, r.cpu_quota, r.cpu_period),
        (512, 50000, 100000)
    );
    assert_eq!(r.unified.get("pids.max").map(String::as_str), Some("64"));

    // cpusets, huge pages and the CRI's `unified` map (which wins over the fields).
    let mut v = config();
    let res = &mut v["linux"]["resources"];
    res["cpu"]["cpus"] = json!("0-1");
    res["cpu"]["mems"] = json!("0");
    res["hugepageLimits"] = json!([{ "pageSize": "2MB", "limit": 4194304 }]);
    res["unified"] = json!({ "pids.max": "32", "memory.high": "1000000" });
    let r = resources(&spec(&v));
    let unified: Vec<(&str, &str)> = r
        .unified
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        unified,
        [
            ("cpuset.cpus", "0-1"),
            ("cpuset.mems", "0"),
            ("memory.high", "1000000"),
            ("pids.max", "32")
        ]
    );
    assert_eq!(r.hugepage_limits.get("2MB"), Some(&(4 << 20)));

    let mut v = config();
    // containerd 1.6's form for a pod under a .slice parent: a plain path all the same.
    v["linux"]["cgroupsPath"] = json!("kubepods-besteffort-pod1.slice:cri-containerd:c1");
    assert_eq!(
        cgroup_path(&spec(&v)).unwrap(),
        Some(PathBuf::from(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/\
             cri-containerd-c1.scope"
        ))
    );
    v["linux"]["cgroupsPath"] = json!("kubepods.slice:cri-containerd:../x");
    assert!(matches!(
        cgroup_path(&spec(&v)),
        Err(OciError::Invalid { .. })
    ));
    v["linux"]["cgroupsPath"] = json!("/a/../../etc");
    assert!(matches!(
        cgroup_path(&spec(&v)),
        Err(OciError::Invalid { .. })
    ));
    v["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    v["linux"].as_object_mut().unwrap().remove("resources");
    assert_eq!(cgroup_path(&spec(&v)).unwrap(), None);
    assert_eq!(resources(&spec(&v)), Resources::default());
}

#[test]
fn a_terminal_task_gets_a_tty() {
    let mut v = config();
    v["process"]["terminal"] = json!(true);
    let mounts = overlay();
    let mut t = task(&mounts);
    t.terminal = true;
    let l = launch_spec(&spec(&v), &t).unwrap();
    assert!(l.stdio.tty);
}

#[test]
fn mounts_under_proc_are_refused_but_lxcfs_files() {
    let mounts = overlay();
    let with = |m: Value| {
        let mut v = config();
        v["mounts"].as_array_mut().unwrap().push(m);
        launch_spec(&spec(&v), &task(&mounts))
    };
    let bind = |src: &str, dest: &str| json!({ "destination": dest, "type": "bind", "source": src, "options": ["rbind"] });
    for m in [
        bind("/proc/sys", "/proc/sys"),
        bind("/proc", "/proc"),
        bind("/proc/sys", "/proc/../proc/sys"),
        bind("/proc/sys", "//proc/sys/"),
        json!({ "destination": "/proc", "type": "proc", "source": "/proc", "options": ["rbind"] }),
        json!({ "destination": "/proc/sys", "type": "tmpfs", "source": "tmpfs" }),
    ] {
        assert!(
            matches!(with(m.clone()), Err(OciError::Invalid { .. })),
            "{m}"
        );
    }
    let l = with(bind("/var/lib/lxcfs/proc/cpuinfo", "/proc/cpuinfo")).unwrap();
    assert!(l.mounts.iter().any(|b| b.destination == "/proc/cpuinfo"));
}
