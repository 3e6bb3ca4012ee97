//! The daemon in hostile or unusual surroundings (issue 10): no cgroup
//! visible, a second daemon on the same bpffs, pins from another version,
//! a host process already listening on a port to publish; and `berth
//! status`, which shows what is attached where.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
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
    NetNs, Rig, Topology,
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

/// `cg-probe bind tcp ADDR` in `ns`, inside the daemon's cgroup.
fn probe_bind(rig: &Rig, ns: &NetNs, addr: &str) -> String {
    rig.cg_probe(ns, &["bind", "tcp", addr])
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
    let dir = TempDir::new("wrap").unwrap();
    let rig = Rig::builder()
        .bin(no_cgroup_wrapper(dir.path(), None))
        .start();
    let d = &rig.daemon;
    let s = status(d);
    let hooks = &s["datapath"]["socketHooks"];
    assert_eq!(hooks["enabled"], true, "{s:#}");
    assert_eq!(hooks["cgroup"]["cgroup"], cgroup_name(d).as_str());
    assert_eq!(hooks["cgroup"]["privateMount"], true);
    let cgroup_links: Vec<&Value> = s["datapath"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["role"] == "cgroup")
        .collect();
    assert_eq!(
        cgroup_links.len(),
        10,
        "bind4/6, connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6: {s:#}"
    );
    assert!(cgroup_links.iter().all(|a| a["attached"] == true));
    // The hooks work: the bind guard refuses a host process the port.
    rig.map_add("w", "172.17.0.2", &["8080:80"]);
    let host = &rig.topo.host.ns;
    assert_eq!(probe_bind(&rig, host, "0.0.0.0:8080"), "EADDRINUSE");
    assert_eq!(probe_bind(&rig, host, "0.0.0.0:8081"), "ok");
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
    let rig = Rig::start();
    rig.map_add("w", "172.17.0.2", &["8080:80", "9000-9002:9000-9002"]);
    let s = status(&rig.daemon);
    assert_eq!(s["pid"], rig.daemon.pid().unwrap());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["socket"], rig.daemon.socket().display().to_string());
    assert_eq!(
        s["store"],
        rig.daemon
            .state_dir()
            .join("berth.redb")
            .display()
            .to_string()
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
        rig.daemon.cgroup().path().display().to_string()
    );
    assert_eq!(find("cgroup", "berth_connect4")["hook"], "cgroup connect4");
    assert_eq!(find("cgroup", "berth_connect6")["hook"], "cgroup connect6");
    assert_eq!(
        find("cgroup", "berth_peername6")["hook"],
        "cgroup getpeername6"
    );
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
    let text = rig.daemon.cli_ok(["status"]).unwrap();
    assert!(
        text.contains(&format!("(pid {})", rig.daemon.pid().unwrap())),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("uplink") && l.contains("up0") && l.contains("berth_ingress")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("BERTH_SERVICES")
            && l.contains(&berth_maps::SERVICES_CAPACITY.to_string())
            && l.trim_end().ends_with('4')),
        "{text}"
    );
}

#[test]
fn a_second_daemon_on_the_same_bpffs_is_refused_and_the_first_keeps_its_mappings() {
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("w", "172.17.0.2", &["8080:80"]);
    let pid = rig.daemon.pid().unwrap();
    let other = TempDir::new("second").unwrap();
    let out = run_daemon(
        &rig.topo.host.ns,
        &berth_bin().unwrap(),
        other.path(),
        rig.bpffs.path(),
        &[],
    );
    assert_eq!(
        last_line(&out),
        format!(
            "berth: another berth daemon (PID {pid}) holds the pin directory {}; stop it, or give this one its own --bpffs and --state-dir",
            rig.bpffs.path().join("berth").display()
        )
    );
    assert!(
        !other.path().join("state/berth.redb").exists(),
        "no store opened"
    );
    let s = status(&rig.daemon);
    assert_eq!(
        s["datapath"]["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "BERTH_SERVICES")
            .unwrap()["entries"],
        1
    );
    let addr = rig.topo.host.addr(8080);
    let body = rig
        .topo
        .client
        .ns
        .run(move || http_get(addr, "/", T))
        .unwrap();
    assert!(body.starts_with("192.0.2.2:"), "{body}");

    // `berth reset` aimed at the same pins but another socket is refused too.
    let reset = Command::new("ip")
        .args(["netns", "exec", rig.topo.host.ns.name()])
        .arg(rig.daemon.bin())
        .arg("--socket")
        .arg(other.path().join("none.sock"))
        .arg("reset")
        .arg("--state-dir")
        .arg(rig.daemon.state_dir())
        .arg("--bpffs")
        .arg(rig.bpffs.path())
        .output()
        .unwrap();
    assert!(!reset.status.success());
    let err = String::from_utf8_lossy(&reset.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "berth: another berth daemon (PID {pid}) holds the state directory {}; stop it before resetting",
            rig.daemon.state_dir().display()
        )
    );
    assert!(rig.bpffs.path().join("berth/BERTH_SERVICES").exists());
    assert!(rig.daemon.state_dir().join("berth.redb").exists());
    let body = rig
        .topo
        .client
        .ns
        .run(move || http_get(addr, "/", T))
        .unwrap();
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

/// The shapes a check is to find, by map name.
fn shapes<const N: usize>(
    maps: [(&str, MapShape); N],
) -> std::collections::BTreeMap<String, MapShape> {
    maps.into_iter()
        .map(|(name, s)| (name.to_owned(), s))
        .collect()
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
    // BERTH_SERVICES with 16-byte values: no berth ever had that.
    let wrong = shape(sys::BPF_MAP_TYPE_HASH, 8, 16, 1024);
    let id = pin_map(
        &bpffs,
        "BERTH_SERVICES",
        &wrong,
        &[(vec![1; 8], vec![2; 16])],
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
            "berth: pinned map BERTH_SERVICES ({}) is hash, key 8 B, value 16 B, 1024 entries, flags 0x0, \
             but this berth needs hash, key 8 B, value 12 B, {} entries, flags 0x1 and cannot convert it; \
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

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`: flows seen just now,
/// so the daemon's expiry leaves them be.
fn now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn nat_v1(port: u16, flags: u8, last_seen_ns: u64) -> Vec<u8> {
    migrate::nat_v1_bytes(&migrate::NatEntryV1 {
        host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
        host_port_be: port.to_be(),
        flags,
        _pad: 0,
        last_seen_ns,
    })
}

fn ct_v1(flags: u8, last_seen_ns: u64) -> Vec<u8> {
    migrate::ct_v1_bytes(&migrate::CtEntryV1 {
        last_seen_ns,
        flags,
        _pad: [0; 7],
    })
}

/// A policy flow's key: container 172.17.0.3:`sport` -> 172.17.0.2:5432.
fn ct_key(sport: u16) -> Vec<u8> {
    let mut k = vec![172, 17, 0, 3, 172, 17, 0, 2];
    k.extend(sport.to_be_bytes());
    k.extend(5432u16.to_be_bytes());
    k.extend([6, 0, 0, 0]);
    k
}

/// What the previous release (8071dfd, layout 1) pinned, as `bpftool map
/// show` lists it for that build: every map, its shape, nothing else.
fn previous_release_pins() -> Vec<(&'static str, MapShape)> {
    use berth_maps::*;
    let policy_value = 8 + 16 * MAX_RULES as u32;
    let mut no_prealloc = shape(sys::BPF_MAP_TYPE_HASH, 8, policy_value, POLICY_CAPACITY);
    no_prealloc.flags = 1; // BPF_F_NO_PREALLOC
    vec![
        (SERVICES_MAP, shape(sys::BPF_MAP_TYPE_HASH, 8, 8, 131_072)),
        (HOST_ADDRS_MAP, shape(sys::BPF_MAP_TYPE_HASH, 4, 4, 1024)),
        (NAT_MAP, shape(sys::BPF_MAP_TYPE_HASH, 16, 16, 262_144)),
        (PORTS_MAP, shape(sys::BPF_MAP_TYPE_HASH, 4, 4, 131_072)),
        (
            SOCK_REV_MAP,
            shape(sys::BPF_MAP_TYPE_LRU_HASH, 16, 8, 65_536),
        ),
        (ENDPOINTS_MAP, shape(sys::BPF_MAP_TYPE_HASH, 4, 8, 16_384)),
        (POLICY_MAP, no_prealloc),
        (SG_MEMBERS_MAP, shape(sys::BPF_MAP_TYPE_HASH, 8, 4, 65_536)),
        (CT_MAP, shape(sys::BPF_MAP_TYPE_HASH, 16, 16, 262_144)),
        (CONFIG_MAP, shape(sys::BPF_MAP_TYPE_ARRAY, 4, 8, 4)),
        (
            COUNTERS_MAP,
            shape(sys::BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 13),
        ),
    ]
}

/// The maps layout 2 added, which the upgrade must create.
const NEW_IN_LAYOUT_2: [&str; 8] = [
    berth_maps::NAT_NEW_MAP,
    berth_maps::CT_NEW_MAP,
    berth_maps::NAT_FWD_MAP,
    berth_maps::FRAGS_MAP,
    berth_maps::LOCAL_NETS_MAP,
    berth_maps::PORT_ADDRS_MAP,
    berth_maps::HOOKED_PORTS_MAP,
    berth_maps::PORT_MACS_MAP,
];

fn lookup(pin: &Path, key: &[u8], value_size: usize) -> Option<Vec<u8>> {
    let fd = sys::obj_get(pin).unwrap();
    let mut value = vec![0u8; value_size];
    sys::map_lookup(&fd, key, &mut value)
        .unwrap()
        .then_some(value)
}

fn read_as<T: bytemuck::Pod>(bytes: &[u8]) -> T {
    bytemuck::pod_read_unaligned(bytes)
}

/// The previous release's pins (layout 1, no version record): 16-byte NAT
/// and CT entries, 13 counters, none of the maps layout 2 added. The new
/// daemon adopts them: each tracked flow converted field by field, the
/// counters kept, the new maps created, the layout recorded; a restart
/// then has nothing left to migrate. (That a converted flow's packets are
/// still translated is in the fixtures: `migrated.rs`, `policy_fixtures`.)
#[test]
fn an_upgrade_from_the_previous_layout_keeps_the_tracked_flows() {
    use berth_maps::{CtEntry, NatEntry, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_REPLIED};
    use berth_maps::{NAT_F_ESTABLISHED, NAT_F_REPLIED};
    // The store holds the tasks the flows belong to, as it did under the
    // previous release (a start forgets flows no stored binding owns).
    let mut rig = Rig::start();
    for (task, ip, ports) in [
        ("web", "172.17.0.2", ["-p", "8080:80", "-p", "8081:80"]),
        ("api", "172.17.0.3", ["-p", "9000:9000", "-p", "9001:9001"]),
    ] {
        let mut args = vec!["map", "add", "--task", task, "--ip", ip];
        args.extend(ports);
        rig.daemon.cli_ok(args).unwrap();
    }
    rig.daemon.stop().unwrap();
    fs::remove_dir_all(rig.bpffs.path().join("berth")).unwrap();
    let seen = now_ns();
    let nat = vec![
        (flow_key(40000), nat_v1(8080, NAT_F_REPLIED, seen)),
        (flow_key(40001), nat_v1(8081, 0, seen + 1)),
    ];
    let ct = vec![
        (ct_key(50000), ct_v1(CT_F_REPLIED, seen + 2)),
        (ct_key(50001), ct_v1(CT_F_REPLIED | CT_F_CLOSING, seen + 3)),
    ];
    let dnat_count = 5u64;
    for (name, old) in previous_release_pins() {
        let entries = match name {
            berth_maps::NAT_MAP => nat.clone(),
            berth_maps::CT_MAP => ct.clone(),
            _ => Vec::new(),
        };
        pin_map(&rig.bpffs, name, &old, &entries);
    }
    let dir = rig.bpffs.path().join("berth");
    {
        let fd = sys::obj_get(&dir.join(berth_maps::COUNTERS_MAP)).unwrap();
        let old = previous_release_pins()[10].1;
        let mut per_cpu = vec![0u8; sys::value_buf_len(&old).unwrap()];
        per_cpu[..8].copy_from_slice(&dnat_count.to_ne_bytes());
        sys::map_update(&fd, &0u32.to_ne_bytes(), &per_cpu).unwrap();
    }
    assert!(!dir.join(pins::LAYOUT_LINK).exists());

    rig.daemon.start_again().unwrap();

    let nat_pin = dir.join(berth_maps::NAT_MAP);
    let nat_size = size_of::<NatEntry>();
    let e: NatEntry = read_as(&lookup(&nat_pin, &nat[0].0, nat_size).expect("flow kept"));
    assert_eq!(
        e,
        NatEntry {
            host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            host_port_be: 8080u16.to_be(),
            flags: NAT_F_REPLIED | NAT_F_ESTABLISHED,
            _pad: 0,
            last_seen_ns: seen,
            client_port_be: 40000u16.to_be(),
            wscale: [0xff, 0xff],
            seq_end: [0, 0],
            max_win: [0, 0],
            binding: 0,
            packets: [0, 0],
            bytes: [0, 0],
            opened_ns: 0,
            ifindex: 0,
            tcp_flags: [0, 0],
            _pad3: 0,
        }
    );
    let e: NatEntry = read_as(&lookup(&nat_pin, &nat[1].0, nat_size).expect("flow kept"));
    assert_eq!(
        (e.host_port_be, e.flags, e.last_seen_ns, e.client_port_be),
        (
            8081u16.to_be(),
            NAT_F_ESTABLISHED,
            seen + 1,
            40001u16.to_be()
        )
    );
    let ct_pin = dir.join(berth_maps::CT_MAP);
    let ct_size = size_of::<CtEntry>();
    for ((key, _), (flags, last_seen_ns)) in ct.iter().zip([
        (CT_F_REPLIED | CT_F_ESTABLISHED, seen + 2),
        (CT_F_REPLIED | CT_F_CLOSING | CT_F_ESTABLISHED, seen + 3),
    ]) {
        let e: CtEntry = read_as(&lookup(&ct_pin, key, ct_size).expect("flow kept"));
        assert_eq!(
            e,
            CtEntry {
                last_seen_ns,
                flags,
                _pad: 0,
                wscale: [0xff, 0xff],
                seq_end: [0, 0],
                max_win: [0, 0],
                _pad2: 0,
            }
        );
    }
    let counters = dir.join(berth_maps::COUNTERS_MAP);
    let fd = sys::obj_get(&counters).unwrap();
    let now = sys::map_shape(&fd).unwrap();
    assert_eq!(now.max_entries, berth_maps::COUNTERS_LEN);
    let got = lookup(
        &counters,
        &0u32.to_ne_bytes(),
        sys::value_buf_len(&now).unwrap(),
    )
    .unwrap();
    assert_eq!(&got[..8], &dnat_count.to_ne_bytes(), "counters kept");
    let names = pinned_names(&rig.bpffs);
    for name in NEW_IN_LAYOUT_2 {
        assert!(names.iter().any(|n| n == name), "{name} created: {names:?}");
    }
    assert_eq!(
        fs::read_link(dir.join(pins::LAYOUT_LINK)).unwrap(),
        PathBuf::from(pins::LAYOUT_VERSION.to_string())
    );
    let s = status(&rig.daemon);
    assert_eq!(
        s["datapath"]["migrated"],
        serde_json::json!([
            format!(
                "BERTH_CONFIG: capacity 4 -> {} (4 entries kept)",
                berth_maps::CONFIG_LEN
            ),
            format!(
                "BERTH_COUNTERS: capacity 13 -> {} (13 entries kept)",
                berth_maps::COUNTERS_LEN
            ),
            "BERTH_CT: 16-byte values converted to 32 bytes (2 entries kept)",
            format!(
                "BERTH_ENDPOINTS: capacity 16384 -> {}, allocated on use (0 entries kept)",
                berth_maps::ENDPOINTS_CAPACITY
            ),
            format!(
                "BERTH_HOST_ADDRS: capacity 1024 -> {}, allocated on use (0 entries kept)",
                berth_maps::DEFAULT_MAX_HOST_ADDRS
            ),
            "BERTH_NAT: 16-byte values converted to 88 bytes (2 entries kept)",
            format!(
                "BERTH_PORTS: capacity 131072 -> {}, allocated on use (0 entries kept)",
                berth_maps::PORTS_CAPACITY
            ),
            // Layout 3: a service value carries its counters slot.
            "BERTH_SERVICES: 8-byte values converted to 12 bytes (0 entries kept)",
            format!(
                "BERTH_SG_MEMBERS: capacity 65536 -> {}, allocated on use (0 entries kept)",
                berth_maps::SG_MEMBERS_CAPACITY
            ),
            format!(
                "BERTH_SOCK_REV: capacity 65536 -> {} (0 entries kept)",
                berth_maps::SOCK_REV_CAPACITY
            ),
        ]),
        "{s:#}"
    );
    // Every map this berth pinned has its shape: a restart migrates nothing.
    rig.daemon.restart().unwrap();
    assert_eq!(
        status(&rig.daemon)["datapath"]["migrated"],
        serde_json::json!([])
    );
    for (key, _) in &nat {
        assert!(lookup(&nat_pin, key, nat_size).is_some(), "flow kept");
    }
    for (key, _) in &ct {
        assert!(lookup(&ct_pin, key, ct_size).is_some(), "flow kept");
    }
}

/// The migration itself, on real maps: a converter carries 16-byte NAT
/// entries into an 88-byte map pinned in place (whatever `NatEntry` this
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
    let expected = shapes([
        (
            berth_maps::NAT_MAP,
            shape(sys::BPF_MAP_TYPE_HASH, 16, 88, 2048),
        ),
        (
            berth_maps::CT_MAP,
            shape(sys::BPF_MAP_TYPE_HASH, 16, 16, 4096),
        ),
    ]);
    let report = pins::check_and_migrate(&dir, &expected).unwrap();
    assert_eq!(report.found_layout, Some(1));
    assert_eq!(
        report.migrated,
        [
            "BERTH_CT: capacity 1024 -> 4096 (1 entries kept)",
            "BERTH_NAT: 16-byte values converted to 88 bytes (2 entries kept)"
        ]
    );
    let fd = sys::obj_get(&dir.join(berth_maps::NAT_MAP)).unwrap();
    assert_eq!(sys::map_shape(&fd).unwrap(), expected[berth_maps::NAT_MAP]);
    for (key, v1) in &nat {
        let mut value = vec![0u8; 88];
        assert!(sys::map_lookup(&fd, key, &mut value).unwrap());
        assert_eq!(value, migrate::nat_entry_v1_to_v3(key, v1));
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

/// Layout 2's 40-byte NAT entries, established and not, carried into this
/// build's 88-byte ones: everything kept, the flow-log counters zero.
#[test]
fn layout_2_nat_tables_are_converted_keeping_every_flow() {
    let bpffs = Bpffs::new().unwrap();
    let dir = bpffs.path().join("berth");
    let v2 = |port: u16, flags: u8| {
        migrate::nat_v2_bytes(&migrate::NatEntryV2 {
            host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            host_port_be: port.to_be(),
            flags,
            _pad: 0,
            last_seen_ns: 7_000,
            client_port_be: 40000u16.to_be(),
            wscale: [7, 7],
            seq_end: [11, 22],
            max_win: [33, 44],
            binding: 0,
        })
    };
    let est = vec![(flow_key(40000), v2(8080, berth_maps::NAT_F_ESTABLISHED))];
    let new = vec![(flow_key(40001), v2(8081, berth_maps::NAT_F_SEQ_FWD))];
    pin_map(
        &bpffs,
        berth_maps::NAT_MAP,
        &shape(sys::BPF_MAP_TYPE_HASH, 16, 40, 1024),
        &est,
    );
    pin_map(
        &bpffs,
        berth_maps::NAT_NEW_MAP,
        &shape(sys::BPF_MAP_TYPE_LRU_HASH, 16, 40, 1024),
        &new,
    );
    std::os::unix::fs::symlink("2", dir.join(pins::LAYOUT_LINK)).unwrap();
    let expected = shapes([
        (
            berth_maps::NAT_MAP,
            shape(sys::BPF_MAP_TYPE_HASH, 16, 88, 1024),
        ),
        (
            berth_maps::NAT_NEW_MAP,
            shape(sys::BPF_MAP_TYPE_LRU_HASH, 16, 88, 1024),
        ),
    ]);
    let report = pins::check_and_migrate(&dir, &expected).unwrap();
    assert_eq!(report.found_layout, Some(2));
    assert_eq!(
        report.migrated,
        [
            "BERTH_NAT: 40-byte values converted to 88 bytes (1 entries kept)",
            "BERTH_NAT_NEW: 40-byte values converted to 88 bytes (1 entries kept)",
        ]
    );
    for (name, entries) in [(berth_maps::NAT_MAP, &est), (berth_maps::NAT_NEW_MAP, &new)] {
        let fd = sys::obj_get(&dir.join(name)).unwrap();
        for (key, old) in entries {
            let mut value = vec![0u8; 88];
            assert!(sys::map_lookup(&fd, key, &mut value).unwrap(), "{name}");
            assert_eq!(
                &value[..40],
                old.as_slice(),
                "{name}: layout 2's bytes kept"
            );
            assert!(value[40..].iter().all(|b| *b == 0), "{name}: counters zero");
        }
    }
}

/// Layout 3's fragment tables had no port in their keys (12 and 40
/// bytes): they are made anew, empty, with this build's keys. Their entries
/// live seconds, no converter could give one a port, and a verdict of no
/// port is one no port gave; nothing else is refused for them.
#[test]
fn layout_3_fragment_tables_are_made_anew_empty_with_the_ports_in_their_keys() {
    let bpffs = Bpffs::new().unwrap();
    let dir = bpffs.path().join("berth");
    let lru = sys::BPF_MAP_TYPE_LRU_HASH;
    let (key4, key6) = (
        size_of::<berth_maps::FragKey>() as u32,
        size_of::<berth_maps::FragKey6>() as u32,
    );
    let (value4, value6) = (
        size_of::<berth_maps::FragEntry>() as u32,
        size_of::<berth_maps::FragEntry6>() as u32,
    );
    let old = [
        (berth_maps::FRAGS_MAP, shape(lru, 12, value4, 1024)),
        (berth_maps::FRAGS6_MAP, shape(lru, 40, value6, 1024)),
    ];
    for (name, old) in &old {
        let entry = (
            vec![1; old.key_size as usize],
            vec![2; old.value_size as usize],
        );
        pin_map(&bpffs, name, old, &[entry]);
    }
    std::os::unix::fs::symlink("3", dir.join(pins::LAYOUT_LINK)).unwrap();
    let expected = shapes([
        (berth_maps::FRAGS_MAP, shape(lru, key4, value4, 1024)),
        (berth_maps::FRAGS6_MAP, shape(lru, key6, value6, 1024)),
    ]);
    let report = pins::check_and_migrate(&dir, &expected).unwrap();
    assert_eq!(report.found_layout, Some(3));
    let made_anew: Vec<String> = old
        .iter()
        .map(|(name, old)| {
            format!(
                "{name}: {old} made anew as {}, empty (fragments in flight are dropped)",
                expected[*name]
            )
        })
        .collect();
    assert_eq!(report.migrated, made_anew);
    // The old pins are gone: the loader pins new, empty maps in their place.
    for (name, _) in &old {
        assert!(!dir.join(name).exists(), "{name} unpinned");
    }
    assert_eq!(
        fs::read_link(dir.join(pins::LAYOUT_LINK)).unwrap(),
        PathBuf::from(pins::LAYOUT_VERSION.to_string())
    );
}

/// A TCP echo server on the container's port 7, published as 7007, and a
/// client connection through it that answered once.
fn echo_connection(topo: &Topology, d: &Daemon) -> TcpStream {
    let listener = topo
        .container
        .ns
        .run(|| TcpListener::bind("0.0.0.0:7"))
        .unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    d.cli_ok([
        "map",
        "add",
        "--task",
        "echo",
        "--ip",
        "172.17.0.2",
        "-p",
        "7007:7",
    ])
    .unwrap();
    let addr = topo.host.addr(7007);
    let mut c = topo
        .client
        .ns
        .run(move || TcpStream::connect_timeout(&addr, T))
        .unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    echo(&mut c, b"hello");
    c
}

fn echo(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    c.read_exact(&mut buf).expect("the echo");
    assert_eq!(buf, msg);
}

fn capacities(d: &Daemon) -> Vec<(String, u64)> {
    let s = status(d);
    let names = [
        berth_maps::NAT_MAP,
        berth_maps::NAT_FWD_MAP,
        berth_maps::CT_MAP,
        berth_maps::NAT_NEW_MAP,
        berth_maps::CT_NEW_MAP,
    ];
    let maps = s["datapath"]["maps"].as_array().unwrap();
    names
        .iter()
        .map(|n| {
            let m = maps.iter().find(|m| m["name"] == *n).unwrap();
            (n.to_string(), m["capacity"].as_u64().unwrap())
        })
        .collect()
}

fn migrated(d: &Daemon) -> Vec<String> {
    status(d)["datapath"]["migrated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Fake flows (UDP, seen now) in the pinned table `name`.
fn add_flows(bpffs: &Bpffs, name: &str, n: u16) {
    let fd = sys::obj_get(&bpffs.path().join("berth").join(name)).unwrap();
    let entry = berth_maps::NatEntry {
        last_seen_ns: now_ns(),
        ..Default::default()
    };
    let value = bytemuck::bytes_of(&entry);
    for port in 0..n {
        let mut key = flow_key(30000 + port);
        key[12] = 17;
        sys::map_update(&fd, &key, value).unwrap();
    }
}

/// `--nat-max`, `--ct-max` and `--ct-embryonic-max` changed between two
/// starts resize the pinned tables, every flow kept, where a daemon used
/// to refuse; a live connection never notices. A table of established
/// flows made smaller than the flows it holds refuses the start, changing
/// nothing; an LRU table of unestablished flows keeps what fits.
#[test]
fn capacity_flags_changed_between_restarts_resize_the_tables_and_keep_the_flows() {
    let mut rig = Rig::start();
    let mut conn = echo_connection(&rig.topo, &rig.daemon);
    let default = capacities(&rig.daemon);
    assert_eq!(default[0].1, u64::from(berth_maps::NAT_CAPACITY));

    rig.daemon.stop().unwrap();
    let flags = [
        "--nat-max",
        "4096",
        "--ct-max",
        "2048",
        "--ct-embryonic-max",
        "1024",
    ];
    rig.daemon.set_extra_args(&flags);
    rig.daemon.start_again().unwrap();
    assert_eq!(
        capacities(&rig.daemon),
        [
            ("BERTH_NAT".to_owned(), 4096),
            ("BERTH_NAT_FWD".to_owned(), 4096),
            ("BERTH_CT".to_owned(), 2048),
            ("BERTH_NAT_NEW".to_owned(), 1024),
            ("BERTH_CT_NEW".to_owned(), 1024),
        ]
    );
    assert_eq!(
        migrated(&rig.daemon),
        [
            format!(
                "BERTH_CT: capacity {} -> 2048 (0 entries kept)",
                berth_maps::CT_CAPACITY
            ),
            format!(
                "BERTH_CT6: capacity {} -> 2048 (0 entries kept)",
                berth_maps::CT6_CAPACITY
            ),
            format!(
                "BERTH_CT6_NEW: capacity {} -> 1024 (0 entries kept)",
                berth_maps::CT6_NEW_CAPACITY
            ),
            format!(
                "BERTH_CT_NEW: capacity {} -> 1024 (0 entries kept)",
                berth_maps::CT_NEW_CAPACITY
            ),
            format!(
                "BERTH_NAT: capacity {} -> 4096 (1 entries kept)",
                berth_maps::NAT_CAPACITY
            ),
            format!(
                "BERTH_NAT6: capacity {} -> 4096 (0 entries kept)",
                berth_maps::NAT6_CAPACITY
            ),
            format!(
                "BERTH_NAT6_FWD: capacity {} -> 4096 (0 entries kept)",
                berth_maps::NAT6_FWD_CAPACITY
            ),
            format!(
                "BERTH_NAT6_NEW: capacity {} -> 1024 (0 entries kept)",
                berth_maps::NAT6_NEW_CAPACITY
            ),
            format!(
                "BERTH_NAT_FWD: capacity {} -> 4096 (0 entries kept)",
                berth_maps::NAT_FWD_CAPACITY
            ),
            format!(
                "BERTH_NAT_NEW: capacity {} -> 1024 (0 entries kept)",
                berth_maps::NAT_NEW_CAPACITY
            ),
        ]
    );
    echo(&mut conn, b"after the resize");

    // Three established flows do not fit in two: refused, nothing changed,
    // not even the tables that could have been resized (BERTH_CT and
    // BERTH_CT_NEW back to their defaults come first).
    rig.daemon.stop().unwrap();
    add_flows(&rig.bpffs, berth_maps::NAT_MAP, 2);
    let pin = |name: &str| rig.bpffs.path().join("berth").join(name);
    let nat_pin = pin(berth_maps::NAT_MAP);
    let ids = |names: &[&str]| names.iter().map(|n| map_id(&pin(n))).collect::<Vec<_>>();
    let tables = [
        berth_maps::CT_MAP,
        berth_maps::CT_NEW_MAP,
        berth_maps::NAT_MAP,
        berth_maps::NAT_FWD_MAP,
        berth_maps::NAT_NEW_MAP,
    ];
    let before = ids(&tables);
    rig.daemon.set_extra_args(&["--nat-max", "2"]);
    assert!(
        rig.daemon.start_again().is_err(),
        "a too small --nat-max is refused"
    );
    let stderr = rig.daemon.stderr();
    assert_eq!(
        stderr.lines().last().unwrap(),
        "berth: pinned map BERTH_NAT holds 3 entries, more than the 2 this berth gives it; \
         start with a larger capacity, or `berth reset`"
    );
    assert_eq!(ids(&tables), before, "every pin still holds the same map");
    assert!(!nat_pin.with_file_name("BERTH_NAT_migrating").exists());

    // Unestablished flows beyond a smaller LRU table: some are evicted,
    // and the daemon says how many.
    add_flows(&rig.bpffs, berth_maps::NAT_NEW_MAP, 40);
    rig.daemon
        .set_extra_args(&["--nat-max", "4096", "--ct-embryonic-max", "16"]);
    rig.daemon.start_again().unwrap();
    let m = migrated(&rig.daemon);
    let line = m
        .iter()
        .find(|l| l.starts_with("BERTH_NAT_NEW: capacity 1024 -> 16 ("))
        .unwrap_or_else(|| panic!("{m:?}"));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (kept, evicted) = (numbers[numbers.len() - 2], numbers[numbers.len() - 1]);
    assert!(kept <= 16 && kept > 0, "{line}");
    assert_eq!(kept + evicted, 40, "{line}");
    assert!(
        line.ends_with("evicted by the smaller LRU table)"),
        "{line}"
    );
    echo(&mut conn, b"still the same connection");
}

/// (name, capacity, entries) of the maps `--max-flows` and
/// `--max-mappings` size, as `berth status` reads them from the kernel.
fn sized_maps(d: &Daemon) -> Vec<(String, u64, u64)> {
    let s = status(d);
    let maps = s["datapath"]["maps"].as_array().unwrap();
    [
        berth_maps::SERVICES_MAP,
        berth_maps::PORTS_MAP,
        berth_maps::NAT_MAP,
        berth_maps::NAT_FWD_MAP,
        berth_maps::CT_MAP,
        berth_maps::NAT_NEW_MAP,
        berth_maps::CT_NEW_MAP,
        berth_maps::SOCK_REV_MAP,
    ]
    .iter()
    .map(|n| {
        let m = maps.iter().find(|m| m["name"] == *n).unwrap();
        (
            n.to_string(),
            m["capacity"].as_u64().unwrap(),
            m["entries"].as_u64().unwrap(),
        )
    })
    .collect()
}

fn assert_sized(d: &Daemon, capacities: [u64; 8], entries: [u64; 8]) {
    let got = sized_maps(d);
    let want: Vec<(String, u64, u64)> = got
        .iter()
        .zip(capacities.into_iter().zip(entries))
        .map(|((name, _, _), (c, e))| (name.clone(), c, e))
        .collect();
    assert_eq!(got, want);
}

/// (name, capacity) of the IPv6 flow tables, as `berth status` reads them
/// from the kernel.
fn capacities6(d: &Daemon) -> Vec<(String, u64)> {
    let s = status(d);
    let maps = s["datapath"]["maps"].as_array().unwrap();
    [
        berth_maps::NAT6_MAP,
        berth_maps::CT6_MAP,
        berth_maps::NAT6_NEW_MAP,
        berth_maps::CT6_NEW_MAP,
        berth_maps::SOCK_REV6_MAP,
    ]
    .iter()
    .map(|n| {
        let m = maps.iter().find(|m| m["name"] == *n).unwrap();
        (n.to_string(), m["capacity"].as_u64().unwrap())
    })
    .collect()
}

/// IPv6 flows get tables of their own size: 16 384 flows by default (as
/// IPv4's), said in the log at start; `--max-flows6`
/// resizes them across a restart and leaves IPv4's tables as they were.
#[test]
fn max_flows6_sizes_the_ipv6_flow_tables_only_and_the_start_says_so() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let mut d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    let six = |flows: u64, lru: u64| {
        vec![
            ("BERTH_NAT6".to_owned(), flows),
            ("BERTH_CT6".to_owned(), flows),
            ("BERTH_NAT6_NEW".to_owned(), lru),
            ("BERTH_CT6_NEW".to_owned(), lru),
            ("BERTH_SOCK_REV6".to_owned(), lru),
        ]
    };
    assert_eq!(capacities6(&d), six(16384, 2048));
    let ipv4 = capacities(&d);
    assert_eq!(ipv4[0], ("BERTH_NAT".to_owned(), 16384));
    assert!(
        d.stderr().contains(
            "flow tables: IPv4 16384 flows, IPv6 16384 flows (--max-flows, --max-flows6)"
        ),
        "{}",
        d.stderr()
    );

    d.stop().unwrap();
    d.set_extra_args(&["--max-flows6", "8192"]);
    d.start_again().unwrap();
    assert_eq!(capacities6(&d), six(8192, 1024));
    assert_eq!(capacities(&d), ipv4, "IPv4's tables are --max-flows'");
    assert!(
        d.stderr().contains("IPv4 16384 flows, IPv6 8192 flows"),
        "{}",
        d.stderr()
    );
}

/// `--max-flows` and `--max-mappings` size the tables the daemon creates
/// (the tables of unestablished flows and socket translations an eighth
/// of the flows); a publish beyond `--max-mappings` is refused in one line,
/// nothing of it published or guarded; a restart with other values resizes
/// the pinned tables, the live connection and every published port kept.
#[test]
fn max_flows_and_max_mappings_size_the_tables_across_a_restart() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let small = ["--max-flows", "1024", "--max-mappings", "4"];
    let mut d = Daemon::start_with(
        &topo.host.ns,
        &bpffs,
        DaemonOptions {
            extra_args: small.iter().map(ToString::to_string).collect(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut conn = echo_connection(&topo, &d);
    echo(&mut conn, b"before");
    d.cli_ok([
        "map",
        "add",
        "--task",
        "three",
        "--ip",
        "172.17.0.3",
        "-p",
        "9001:80",
        "-p",
        "9002:80",
        "-p",
        "9003:80",
    ])
    .unwrap();
    assert_sized(
        &d,
        [4, 4, 1024, 1024, 1024, 128, 128, 128],
        [4, 4, 1, 0, 0, 0, 0, 0],
    );

    let out = d
        .cli([
            "map",
            "add",
            "--task",
            "fifth",
            "--ip",
            "172.17.0.3",
            "-p",
            "9004:80",
        ])
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "berth: the datapath holds at most 4 published ports; start the daemon with a larger --max-mappings",
    );
    assert!(!d.cli_ok(["map", "ls"]).unwrap().contains("fifth"));
    assert_eq!(
        (sized_maps(&d)[0].2, sized_maps(&d)[1].2),
        (4, 4),
        "the refused port is neither published nor guarded"
    );

    d.stop().unwrap();
    d.set_extra_args(&["--max-flows", "65536", "--max-mappings", "64"]);
    d.start_again().unwrap();
    assert_sized(
        &d,
        [64, 64, 65536, 65536, 65536, 8192, 8192, 8192],
        [4, 4, 1, 0, 0, 0, 0, 0],
    );
    let m = migrated(&d);
    assert!(
        m.contains(&"BERTH_NAT: capacity 1024 -> 65536 (1 entries kept)".to_owned()),
        "{m:?}"
    );
    assert!(
        m.contains(&"BERTH_SERVICES: capacity 4 -> 64 (4 entries kept)".to_owned()),
        "{m:?}"
    );
    echo(&mut conn, b"after the resize");
    d.cli_ok([
        "map",
        "add",
        "--task",
        "fifth",
        "--ip",
        "172.17.0.3",
        "-p",
        "9004:80",
    ])
    .unwrap();
}

/// An upgrade from pins without `BERTH_PORT_ADDRS` (the previous release
/// had none) swaps programs that check a container's source against that
/// new, empty map into its port's links. The ports' addresses are written
/// before the programs are, so not one packet of a container sending
/// throughout is taken for spoofed (found by a real upgrade: one was).
#[test]
fn an_upgrade_learns_the_ports_addresses_before_the_new_programs_check_them() {
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    };
    let mut rig = Rig::start();
    let receiver = rig
        .topo
        .container2
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:9"))
        .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for args in [
        &[
            "map",
            "add",
            "--task",
            "a",
            "--ip",
            "172.17.0.2",
            "-p",
            "7007:7",
        ][..],
        &[
            "map",
            "add",
            "--task",
            "b",
            "--ip",
            "172.17.0.3",
            "-p",
            "7008:7",
        ][..],
        &["sg", "create", "sg-b"][..],
        &[
            "sg",
            "rule",
            "add",
            "sg-b",
            "--ingress",
            "--proto",
            "udp",
            "--port",
            "9",
            "--cidr",
            "172.17.0.0/16",
        ][..],
        &["sg", "attach", "sg-b", "--task", "b"][..],
    ] {
        rig.daemon.cli_ok(args).unwrap();
    }
    let sender = rig
        .topo
        .container
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap();
    let to: std::net::SocketAddr = "172.17.0.3:9".parse().unwrap();
    // Wait until the ports' addresses are known (the watcher polls).
    let deadline = std::time::Instant::now() + T;
    loop {
        sender.send_to(b"x", to).unwrap();
        if receiver.recv(&mut [0u8; 16]).is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no datagram arrives");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (flag, n) = (stop.clone(), sent.clone());
    let busy = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            if sender.send_to(b"x", to).is_ok() {
                n.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    });
    let spoofed = rig.counter("container_spoofed_source");
    rig.daemon.stop().unwrap();
    fs::remove_file(
        rig.bpffs
            .path()
            .join("berth")
            .join(berth_maps::PORT_ADDRS_MAP),
    )
    .unwrap();
    let before = sent.load(Ordering::Relaxed);
    rig.daemon.start_again().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert!(
        sent.load(Ordering::Relaxed) - before > 100,
        "the container kept sending through the restart"
    );
    assert_eq!(
        rig.counter("container_spoofed_source"),
        spoofed,
        "a container's own packets taken for spoofed"
    );
    receiver.recv(&mut [0u8; 16]).unwrap();
}

/// The programs still attached during a migration write to the old maps:
/// a flow that opens between the copy and the swap would be unknown to the
/// new programs, and a TCP flow past its SYN is then dropped (a real
/// upgrade under load lost one connection so). Once the new programs are
/// in, what the old maps gained is carried over, converted; what the new
/// programs wrote meanwhile stands.
#[test]
fn flows_the_old_programs_track_during_a_migration_are_carried_over() {
    let bpffs = Bpffs::new().unwrap();
    let dir = bpffs.path().join("berth");
    let old = shape(sys::BPF_MAP_TYPE_HASH, 16, 16, 1024);
    pin_map(
        &bpffs,
        berth_maps::NAT_MAP,
        &old,
        &[(flow_key(40000), nat_v1(8080, 2, 1_000))],
    );
    // What the old programs hold on to.
    let old_fd = sys::obj_get(&dir.join(berth_maps::NAT_MAP)).unwrap();
    let expected = shapes([(
        berth_maps::NAT_MAP,
        shape(sys::BPF_MAP_TYPE_HASH, 16, 88, 1024),
    )]);
    let (report, mut old_maps) = pins::check_and_migrate_keeping_old(&dir, &expected).unwrap();
    assert_eq!(report.migrated.len(), 1);
    let new_fd = sys::obj_get(&dir.join(berth_maps::NAT_MAP)).unwrap();

    // Between the copy and the swap: the old programs open two flows, the
    // new ones (on another interface already) open the second as well and
    // refresh the migrated one.
    let window = nat_v1(8081, 0, 2_000);
    sys::map_update(&old_fd, &flow_key(40001), &window).unwrap();
    sys::map_update(&old_fd, &flow_key(40002), &nat_v1(8082, 0, 3_000)).unwrap();
    sys::map_update(&old_fd, &flow_key(40000), &nat_v1(8080, 3, 4_000)).unwrap();
    let by_new = vec![7u8; 88];
    sys::map_update(&new_fd, &flow_key(40002), &by_new).unwrap();
    let refreshed = migrate::nat_entry_v1_to_v3(&flow_key(40000), &nat_v1(8080, 2, 5_000));
    sys::map_update(&new_fd, &flow_key(40000), &refreshed).unwrap();

    assert_eq!(old_maps.carry_over(), 1);
    let get = |k: &[u8]| {
        let mut v = vec![0u8; 88];
        assert!(sys::map_lookup(&new_fd, k, &mut v).unwrap(), "flow there");
        v
    };
    assert_eq!(
        get(&flow_key(40001)),
        migrate::nat_entry_v1_to_v3(&flow_key(40001), &window),
        "the flow opened in between, converted"
    );
    assert_eq!(
        get(&flow_key(40002)),
        by_new,
        "the new programs' entry stands"
    );
    assert_eq!(get(&flow_key(40000)), refreshed, "so does their refresh");
    assert_eq!(old_maps.carry_over(), 0, "nothing new since");
    sys::map_update(&old_fd, &flow_key(40003), &window).unwrap();
    assert_eq!(
        old_maps.carry_over(),
        1,
        "a later call takes what came since"
    );
}

#[test]
fn a_static_publish_over_a_host_listener_is_refused_in_dockers_words() {
    let rig = Rig::start();
    let tcp = rig
        .topo
        .host
        .ns
        .run(|| TcpListener::bind("0.0.0.0:2222"))
        .unwrap();
    let _udp = rig
        .topo
        .host
        .ns
        .run(|| UdpSocket::bind("192.0.2.1:5353"))
        .unwrap();
    let _lo = rig
        .topo
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
        let out = rig
            .daemon
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
    assert_eq!(
        rig.daemon.cli_ok(["map", "ls", "--json"]).unwrap().trim(),
        "[]"
    );
    // The host process keeps its port: a client still reaches it.
    let addr = rig.topo.host.addr(2222);
    rig.topo
        .client
        .ns
        .run(move || TcpStream::connect_timeout(&addr, T))
        .expect("the host listener still answers");
    tcp.accept().unwrap();
    // Other addresses and protocols of those ports are free.
    rig.map_add("w", "172.17.0.2", &["192.0.2.1:2223:80", "2222:80/udp"]);
}
