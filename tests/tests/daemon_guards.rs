//! The daemon in hostile or unusual surroundings (issue 10): no cgroup
//! visible, a second daemon on the same bpffs, pins from another version,
//! a host process already listening on a port to publish; and `berth
//! status`, which shows what is attached where.
use std::{
    fs,
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use berth::datapath::{
    pins::{self, migrate},
    sys::{self, MapShape},
};
use berth_integration::{
    berth_bin, cmd::output_with_timeout, http_get, names::TempDir, Bpffs, Daemon, DaemonOptions,
    HttpPeerServer, NetNs, Topology,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

/// A wrapper that starts berth as `ip netns exec` does and then hides every
/// cgroup v2 mount from it (ip netns exec already hides /sys/fs/cgroup;
/// this also hides the harness's own mounts), naming the test's cgroup by
/// its path inside the hierarchy. `cgroup` overrides that path.
fn no_cgroup_wrapper(dir: &Path, cgroup: Option<&str>) -> PathBuf {
    let script = dir.join("berth-no-cgroup");
    let name = match cgroup {
        Some(c) => format!("export BERTH_CGROUP={c}"),
        None => "export BERTH_CGROUP=\"/${BERTH_CGROUP##*/}\"".to_owned(),
    };
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # ip netns exec made this mount namespace a slave: unmounting here\n\
             # does not reach the test's namespace.\n\
             grep ' - cgroup2 ' /proc/self/mountinfo | awk '{{print $5}}' | sort -r |\n\
               while read -r m; do umount -l \"$m\"; done\n\
             if grep -q ' - cgroup2 ' /proc/self/mountinfo; then echo 'cgroup2 still visible' >&2; exit 97; fi\n\
             {name}\n\
             exec {} \"$@\"\n",
            berth_bin().unwrap().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn status(d: &Daemon) -> Value {
    serde_json::from_str(&d.cli_ok(["status", "--json"]).expect("status")).unwrap()
}

fn cgroup_name(d: &Daemon) -> String {
    format!(
        "/{}",
        d.cgroup().path().file_name().unwrap().to_string_lossy()
    )
}

/// `cg-probe bind` (next to the berth binary) run in `ns` inside `procs`.
fn probe_bind(ns: &NetNs, procs: &Path, addr: &str) -> String {
    let bin = berth_bin().unwrap().with_file_name("cg-probe");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(bin)
        .arg(procs)
        .args(["bind", "tcp", addr])
        .output()
        .expect("run cg-probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A daemon run to completion: one that is refused exits by itself.
fn run_daemon(ns: &NetNs, bin: &Path, dir: &Path, bpffs: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()])
        .arg(bin)
        .args(["daemon", "--uplink", "up0", "--bridge", "docker0"]);
    c.arg("--socket")
        .arg(dir.join("berth.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--bpffs")
        .arg(bpffs);
    for (k, v) in env {
        c.env(k, v);
    }
    output_with_timeout(&mut c, Duration::from_secs(30)).unwrap()
}

/// The one line a refused daemon printed last.
fn last_line(out: &Output) -> String {
    assert!(!out.status.success(), "the daemon was not refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

fn pinned_names(bpffs: &Bpffs) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(bpffs.path().join("berth"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_daemon_that_sees_no_cgroup_mounts_the_hierarchy_and_attaches_the_socket_hooks() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let dir = TempDir::new("wrap").unwrap();
    let d = Daemon::start_with(
        &topo.host.ns,
        &bpffs,
        DaemonOptions {
            bin: Some(no_cgroup_wrapper(dir.path(), None)),
            ..Default::default()
        },
    )
    .unwrap();
    let s = status(&d);
    let hooks = &s["datapath"]["socketHooks"];
    assert_eq!(hooks["enabled"], true, "{s:#}");
    assert_eq!(hooks["cgroup"]["cgroup"], cgroup_name(&d).as_str());
    assert_eq!(hooks["cgroup"]["privateMount"], true);
    let cgroup_links: Vec<&Value> = s["datapath"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["role"] == "cgroup")
        .collect();
    assert_eq!(
        cgroup_links.len(),
        6,
        "bind4/6, connect4, sendmsg4, recvmsg4, getpeername4: {s:#}"
    );
    assert!(cgroup_links.iter().all(|a| a["attached"] == true));
    // The hooks work: the bind guard refuses a host process the port.
    d.cli_ok([
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "-p",
        "8080:80",
    ])
    .unwrap();
    let procs = d.cgroup().procs_file();
    assert_eq!(
        probe_bind(&topo.host.ns, &procs, "0.0.0.0:8080"),
        "EADDRINUSE"
    );
    assert_eq!(probe_bind(&topo.host.ns, &procs, "0.0.0.0:8081"), "ok");
}

#[test]
fn socket_hooks_that_cannot_attach_refuse_the_start_unless_no_socket_hooks() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let dir = TempDir::new("wrap").unwrap();
    let wrapper = no_cgroup_wrapper(dir.path(), Some("/berth-no-such-cgroup"));
    let out = run_daemon(&topo.host.ns, &wrapper, dir.path(), bpffs.path(), &[]);
    let line = last_line(&out);
    assert!(
        line.starts_with(
            "berth: cannot attach the socket hooks (bind guard, localhost and hairpin access): \
             cgroup /berth-no-such-cgroup in the cgroup v2 hierarchy (mounted at "
        ) && line.ends_with(
            "No such file or directory (os error 2); start with --no-socket-hooks to run without them"
        ),
        "{line}"
    );
    assert!(
        !pinned_names(&bpffs)
            .iter()
            .any(|n| n.starts_with("BERTH_") || n == "links"),
        "nothing loaded or attached: {:?}",
        pinned_names(&bpffs)
    );

    let d = Daemon::start_with(
        &topo.host.ns,
        &bpffs,
        DaemonOptions {
            bin: Some(wrapper),
            extra_args: vec!["--no-socket-hooks".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let s = status(&d);
    let hooks = &s["datapath"]["socketHooks"];
    assert_eq!(hooks["enabled"], false);
    assert_eq!(hooks["disabledBy"], "--no-socket-hooks");
    assert!(
        !s["datapath"]["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["role"] == "cgroup"),
        "{s:#}"
    );
    assert!(d
        .stderr()
        .contains("--no-socket-hooks: host processes can bind published ports"));
    let text = d.cli_ok(["status"]).unwrap();
    assert!(
        text.contains("socket hooks off (--no-socket-hooks)"),
        "{text}"
    );
}

#[test]
fn status_lists_every_attachment_map_and_the_daemon() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    d.cli_ok([
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "-p",
        "8080:80",
        "-p",
        "9000-9002:9000-9002",
    ])
    .unwrap();
    let s = status(&d);
    assert_eq!(s["pid"], d.pid().unwrap());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["socket"], d.socket().display().to_string());
    assert_eq!(
        s["store"],
        d.state_dir().join("berth.redb").display().to_string()
    );
    let dp = &s["datapath"];
    assert_eq!(dp["attach"], "tc");
    assert_eq!(dp["layoutVersion"], pins::LAYOUT_VERSION);
    let atts = dp["attachments"].as_array().unwrap();
    let find = |role: &str, program: &str| {
        atts.iter()
            .find(|a| a["role"] == role && a["program"] == program)
            .unwrap_or_else(|| panic!("no {role} {program} in {s:#}"))
    };
    let up = find("uplink", "berth_ingress");
    assert_eq!(
        (up["target"].as_str(), up["hook"].as_str()),
        (Some("up0"), Some("tc ingress (tcx)"))
    );
    assert_eq!(up["attached"], true);
    assert!(up["linkId"].as_u64().unwrap() > 0 && up["programId"].as_u64().unwrap() > 0);
    assert_eq!(find("bridge", "berth_reply")["target"], "docker0");
    // The container's host-side veth carries the security-group programs.
    assert_eq!(
        find("bridge port", "berth_to_ctr")["hook"],
        "tc egress (tcx)"
    );
    assert_eq!(find("bridge port", "berth_from_ctr")["attached"], true);
    assert_eq!(
        find("cgroup", "berth_bind4")["target"],
        d.cgroup().path().display().to_string()
    );
    assert_eq!(find("cgroup", "berth_connect4")["hook"], "cgroup connect4");
    let maps = dp["maps"].as_array().unwrap();
    let map = |name: &str| {
        maps.iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no map {name}"))
    };
    let services = map("BERTH_SERVICES");
    assert_eq!(services["capacity"], berth_maps::SERVICES_CAPACITY);
    assert_eq!(services["entries"], 4);
    assert_eq!(services["type"], "hash");
    assert_eq!(map("BERTH_PORTS")["entries"], 4);
    assert_eq!(map("BERTH_NAT")["capacity"], berth_maps::NAT_CAPACITY);
    assert_eq!(map("BERTH_COUNTERS")["entries"], Value::Null);
    let text = d.cli_ok(["status"]).unwrap();
    assert!(
        text.contains(&format!("(pid {})", d.pid().unwrap())),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("uplink") && l.contains("up0") && l.contains("berth_ingress")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("BERTH_SERVICES")
            && l.contains("131072")
            && l.trim_end().ends_with('4')),
        "{text}"
    );
}

#[test]
fn a_second_daemon_on_the_same_bpffs_is_refused_and_the_first_keeps_its_mappings() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    let _web = HttpPeerServer::start_in(&topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    d.cli_ok([
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "-p",
        "8080:80",
    ])
    .unwrap();
    let pid = d.pid().unwrap();
    let other = TempDir::new("second").unwrap();
    let out = run_daemon(
        &topo.host.ns,
        &berth_bin().unwrap(),
        other.path(),
        bpffs.path(),
        &[],
    );
    assert_eq!(
        last_line(&out),
        format!(
            "berth: another berth daemon (PID {pid}) holds the pin directory {}; stop it, or give this one its own --bpffs and --state-dir",
            bpffs.path().join("berth").display()
        )
    );
    assert!(
        !other.path().join("state/berth.redb").exists(),
        "no store opened"
    );
    let s = status(&d);
    assert_eq!(
        s["datapath"]["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "BERTH_SERVICES")
            .unwrap()["entries"],
        1
    );
    let addr = topo.host.addr(8080);
    let body = topo.client.ns.run(move || http_get(addr, "/", T)).unwrap();
    assert!(body.starts_with("192.0.2.2:"), "{body}");

    // `berth reset` aimed at the same pins but another socket is refused too.
    let reset = Command::new("ip")
        .args(["netns", "exec", topo.host.ns.name()])
        .arg(d.bin())
        .arg("--socket")
        .arg(other.path().join("none.sock"))
        .arg("reset")
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--bpffs")
        .arg(bpffs.path())
        .output()
        .unwrap();
    assert!(!reset.status.success());
    let err = String::from_utf8_lossy(&reset.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "berth: another berth daemon (PID {pid}) holds the state directory {}; stop it before resetting",
            d.state_dir().display()
        )
    );
    assert!(bpffs.path().join("berth/BERTH_SERVICES").exists());
    assert!(d.state_dir().join("berth.redb").exists());
    let body = topo.client.ns.run(move || http_get(addr, "/", T)).unwrap();
    assert!(body.starts_with("192.0.2.2:"), "{body}");
}

fn shape(map_type: u32, key: u32, value: u32, max: u32) -> MapShape {
    MapShape {
        map_type,
        key_size: key,
        value_size: value,
        max_entries: max,
        flags: 0,
    }
}

/// Creates and pins a map as another berth would have, with entries.
fn pin_map(bpffs: &Bpffs, name: &str, shape: &MapShape, entries: &[(Vec<u8>, Vec<u8>)]) -> u32 {
    let dir = bpffs.path().join("berth");
    fs::create_dir_all(&dir).unwrap();
    let fd = sys::map_create(name, shape).unwrap();
    for (k, v) in entries {
        sys::map_update(&fd, k, v).unwrap();
    }
    sys::obj_pin(&fd, &dir.join(name)).unwrap();
    map_id(&dir.join(name))
}

fn map_id(pin: &Path) -> u32 {
    // Through aya, independent of berth's own reader.
    aya::maps::MapInfo::from_pin(pin).unwrap().id()
}

#[test]
fn a_wrongly_shaped_pinned_map_is_refused_in_one_line_and_left_alone() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    // BERTH_SERVICES with 12-byte values: no berth ever had that.
    let wrong = shape(sys::BPF_MAP_TYPE_HASH, 8, 12, 1024);
    let id = pin_map(
        &bpffs,
        "BERTH_SERVICES",
        &wrong,
        &[(vec![1; 8], vec![2; 12])],
    );
    let dir = TempDir::new("wrong").unwrap();
    let out = run_daemon(
        &topo.host.ns,
        &berth_bin().unwrap(),
        dir.path(),
        bpffs.path(),
        &[],
    );
    let pin = bpffs.path().join("berth/BERTH_SERVICES");
    assert_eq!(
        last_line(&out),
        format!(
            "berth: pinned map BERTH_SERVICES ({}) is hash, key 8 B, value 12 B, 1024 entries, flags 0x0, \
             but this berth needs hash, key 8 B, value 8 B, {} entries, flags 0x0 and cannot convert it; \
             run `berth reset` to remove the old pins (published ports come back from the store, tracked \
             flows are lost), or run the berth that created them",
            pin.display(),
            berth_maps::SERVICES_CAPACITY
        )
    );
    assert_eq!(map_id(&pin), id, "the pin still holds the same map");
    let names = pinned_names(&bpffs);
    assert!(
        !names
            .iter()
            .any(|n| n == "links" || n == pins::LAYOUT_LINK || n == "BERTH_NAT"),
        "nothing else was created: {names:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

fn flow_key(client_port: u16) -> Vec<u8> {
    // Reply direction: container 172.17.0.2:80 -> client 192.0.2.2:port.
    let mut k = vec![172, 17, 0, 2, 192, 0, 2, 2];
    k.extend(80u16.to_be_bytes());
    k.extend(client_port.to_be_bytes());
    k.extend([6, 0, 0, 0]);
    k
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns: flows seen just now,
/// so the daemon's expiry leaves them be.
fn now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn nat_v1(port: u16, flags: u8, last_seen_ns: u64) -> Vec<u8> {
    migrate::v1_bytes(&migrate::NatEntryV1 {
        host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
        host_port_be: port.to_be(),
        flags,
        _pad: 0,
        last_seen_ns,
    })
}

/// The previous release (layout 1, no version record) pinned 16-byte NAT
/// entries. After the upgrade every tracked flow is still there, in this
/// build's layout (converted as agreed when that is the 40-byte one).
#[test]
fn an_upgrade_from_the_previous_layout_keeps_the_tracked_flows() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    // The store holds the bindings the flows belong to, as it did under the
    // previous release (a start forgets flows no stored binding owns).
    let mut d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    d.cli_ok([
        "map",
        "add",
        "--task",
        "web",
        "--ip",
        "172.17.0.2",
        "-p",
        "8080:80",
        "-p",
        "8081:80",
    ])
    .unwrap();
    d.stop().unwrap();
    fs::remove_dir_all(bpffs.path().join("berth")).unwrap();
    let old = shape(sys::BPF_MAP_TYPE_HASH, 16, 16, berth_maps::NAT_CAPACITY);
    let entries = vec![
        (flow_key(40000), nat_v1(8080, 2, now_ns())),
        (flow_key(40001), nat_v1(8081, 0, now_ns())),
    ];
    pin_map(&bpffs, berth_maps::NAT_MAP, &old, &entries);
    assert!(!bpffs.path().join("berth").join(pins::LAYOUT_LINK).exists());
    d.start_again().unwrap();
    let pin = bpffs.path().join("berth").join(berth_maps::NAT_MAP);
    let fd = sys::obj_get(&pin).unwrap();
    let now = sys::map_shape(&fd).unwrap();
    let want = std::mem::size_of::<berth_maps::NatEntry>();
    assert_eq!(now.value_size as usize, want, "this build's NatEntry");
    for (key, v1) in &entries {
        let mut value = vec![0u8; want];
        assert!(sys::map_lookup(&fd, key, &mut value).unwrap(), "flow kept");
        if want == 16 {
            assert_eq!(&value, v1);
        } else {
            assert_eq!(value, migrate::nat_entry_v1_to_v2(key, v1));
            assert_eq!(&value[0..6], &v1[0..6], "host address and port");
            assert_eq!(value[6], v1[6] | migrate::NAT_F_ESTABLISHED_V2);
            assert_eq!(&value[8..16], &v1[8..16], "last seen");
            assert_eq!(&value[16..18], &key[10..12], "client port from the key");
            assert_eq!(&value[18..20], &[0xff, 0xff], "window scale unknown");
        }
    }
    assert_eq!(
        fs::read_link(bpffs.path().join("berth").join(pins::LAYOUT_LINK)).unwrap(),
        PathBuf::from(pins::LAYOUT_VERSION.to_string())
    );
    let s = status(&d);
    if want != 16 {
        assert!(
            s["datapath"]["migrated"][0]
                .as_str()
                .unwrap()
                .starts_with("BERTH_NAT: 16-byte values converted to 40 bytes (2 entries kept)"),
            "{s:#}"
        );
    }
    // Every map this berth pinned has its shape: a restart migrates nothing.
    d.restart().unwrap();
    assert_eq!(status(&d)["datapath"]["migrated"], serde_json::json!([]));
    let fd = sys::obj_get(&pin).unwrap();
    for (key, _) in &entries {
        let mut value = vec![0u8; want];
        assert!(sys::map_lookup(&fd, key, &mut value).unwrap(), "flow kept");
    }
}

/// The migration itself, on real maps: a converter carries 16-byte NAT
/// entries into a 40-byte map pinned in place (whatever NatEntry this
/// build has), and a capacity change copies entries as they are.
#[test]
fn pinned_maps_are_migrated_in_place_through_converters_and_resizes() {
    let bpffs = Bpffs::new().unwrap();
    let dir = bpffs.path().join("berth");
    let old = shape(sys::BPF_MAP_TYPE_HASH, 16, 16, 1024);
    let nat = vec![
        (flow_key(40000), nat_v1(8080, 2, 1_000)),
        (flow_key(40001), nat_v1(8081, 0, 2_000)),
    ];
    pin_map(&bpffs, berth_maps::NAT_MAP, &old, &nat);
    let ct = vec![(flow_key(50000), vec![9u8; 16])];
    pin_map(&bpffs, berth_maps::CT_MAP, &old, &ct);
    let mut expected = std::collections::BTreeMap::new();
    expected.insert(
        berth_maps::NAT_MAP.to_owned(),
        shape(sys::BPF_MAP_TYPE_HASH, 16, 40, 2048),
    );
    expected.insert(
        berth_maps::CT_MAP.to_owned(),
        shape(sys::BPF_MAP_TYPE_HASH, 16, 16, 4096),
    );
    let report = pins::check_and_migrate(&dir, &expected).unwrap();
    assert_eq!(report.found_layout, Some(1));
    assert_eq!(
        report.migrated,
        [
            "BERTH_CT: capacity 1024 -> 4096 (1 entries kept)",
            "BERTH_NAT: 16-byte values converted to 40 bytes (2 entries kept)"
        ]
    );
    let fd = sys::obj_get(&dir.join(berth_maps::NAT_MAP)).unwrap();
    assert_eq!(sys::map_shape(&fd).unwrap(), expected[berth_maps::NAT_MAP]);
    for (key, v1) in &nat {
        let mut value = vec![0u8; 40];
        assert!(sys::map_lookup(&fd, key, &mut value).unwrap());
        assert_eq!(value, migrate::nat_entry_v1_to_v2(key, v1));
    }
    let fd = sys::obj_get(&dir.join(berth_maps::CT_MAP)).unwrap();
    assert_eq!(sys::map_shape(&fd).unwrap().max_entries, 4096);
    let mut value = vec![0u8; 16];
    assert!(sys::map_lookup(&fd, &ct[0].0, &mut value).unwrap());
    assert_eq!(value, ct[0].1);
    // Done once: a second check finds nothing to do.
    let again = pins::check_and_migrate(&dir, &expected).unwrap();
    assert_eq!(again.found_layout, Some(pins::LAYOUT_VERSION));
    assert!(again.migrated.is_empty());
}

#[test]
fn a_static_publish_over_a_host_listener_is_refused_in_dockers_words() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    let tcp = topo
        .host
        .ns
        .run(|| TcpListener::bind("0.0.0.0:2222"))
        .unwrap();
    let _udp = topo
        .host
        .ns
        .run(|| UdpSocket::bind("192.0.2.1:5353"))
        .unwrap();
    let _lo = topo
        .host
        .ns
        .run(|| TcpListener::bind("127.0.0.1:2223"))
        .unwrap();
    let refused = [
        ("2222:80", "listen tcp4 0.0.0.0:2222"),
        ("192.0.2.1:2220-2225:80-85", "listen tcp4 192.0.2.1:2222"),
        ("5353:53/udp", "listen udp4 0.0.0.0:5353"),
        ("127.0.0.1:2223:80", "listen tcp4 127.0.0.1:2223"),
    ];
    for (spec, what) in refused {
        let out = d
            .cli([
                "map",
                "add",
                "--task",
                "w",
                "--ip",
                "172.17.0.2",
                "-p",
                "8080:80",
                "-p",
                spec,
            ])
            .unwrap();
        assert!(!out.status.success(), "{spec} was published");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!("berth: Error starting userland proxy: {what}: bind: address already in use")
        );
    }
    assert_eq!(d.cli_ok(["map", "ls", "--json"]).unwrap().trim(), "[]");
    // The host process keeps its port: a client still reaches it.
    let addr = topo.host.addr(2222);
    topo.client
        .ns
        .run(move || TcpStream::connect_timeout(&addr, T))
        .expect("the host listener still answers");
    tcp.accept().unwrap();
    // Other addresses and protocols of those ports are free.
    d.cli_ok([
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "-p",
        "192.0.2.1:2223:80",
        "-p",
        "2222:80/udp",
    ])
    .unwrap();
}
