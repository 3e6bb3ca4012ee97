//! The daemon under load: unpublishing with a full flow table, many idle
//! API connections, request limits, the socket's group, and new bridge
//! ports hooked as they appear. Root only.
use std::{
    io::Read as _,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        net::UnixStream,
        process::CommandExt as _,
    },
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr,
    flows::{count_ct_flows_touching, count_flows_of, insert_ct_flows, FlowFill},
    rig::map_add_args,
    tcp_connect, Bpffs, Daemon, HttpPeerServer, Rig,
};

/// A large host's flow tables: the tests fill 250 000 flows.
fn large_host() -> Rig {
    Rig::builder().flags(&["--max-flows", "262144"]).start()
}

/// Lists the bindings (what `map ls` asks) over and over until stopped;
/// returns the slowest answer. Through the API, so starting CLI processes
/// does not eat the CPU the daemon is timed on.
fn keep_listing(daemon: &Daemon, stop: &AtomicBool) -> Duration {
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = daemon.api("GET", "/v1/bindings", None).expect("map ls");
        assert_eq!(r.status, 200, "{:.200}", r.body);
        slowest = slowest.max(t.elapsed());
        thread::sleep(Duration::from_millis(5));
    }
    slowest
}

#[test]
fn removing_a_1000_port_range_with_a_full_flow_table_is_quick_and_blocks_nobody() {
    let rig = large_host();
    let range_ip = addr::CONTAINER2_IP;
    let other_ip = addr::CONTAINER_IP;
    let body = format!(
        r#"{{"task":"range","containerIP":"{range_ip}","ports":["20000-20999:20000-20999"]}}"#
    );
    let t = Instant::now();
    let r = rig.daemon.api("POST", "/v1/bindings", Some(&body)).unwrap();
    let published = t.elapsed();
    assert_eq!(r.status, 201, "{:.200}", r.body);
    rig.map_add("other", &other_ip.to_string(), &["8080:80"]);
    // 250 000 of the table's 262 144 flows: 200 per port of the range, and
    // 50 000 of another task's, which must survive.
    let range_flows = FlowFill {
        ctr_ip: range_ip,
        ctr_ports: 20000..=20999,
        host_base: 20000,
        client_ip: addr::CLIENT_IP,
        per_port: 200,
    }
    .insert(rig.bpffs.path())
    .unwrap();
    let other_flows = FlowFill {
        ctr_ip: other_ip,
        ctr_ports: 80..=80,
        host_base: 8080,
        client_ip: addr::CLIENT_IP,
        per_port: 50_000,
    }
    .insert(rig.bpffs.path())
    .unwrap();
    assert_eq!(
        count_flows_of(rig.bpffs.path(), range_ip).unwrap(),
        range_flows
    );

    let stop = AtomicBool::new(false);
    let (took, slowest_ls) = thread::scope(|sc| {
        let lister = sc.spawn(|| keep_listing(&rig.daemon, &stop));
        // Let the lister get going first.
        thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let r = rig
            .daemon
            .api("POST", "/v1/bindings/delete", Some(r#"{"task":"range"}"#))
            .unwrap();
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{:.200}", r.body);
        // The bindings are out before the answer; the flows go after it.
        let listed = rig.daemon.cli_ok(["map", "ls", "--json"]).unwrap();
        assert!(!listed.contains("\"range\""), "{listed}");
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (took, lister.join().unwrap())
    });
    let forgotten_after = wait_for_flows_gone(&rig.bpffs, range_ip, Duration::from_secs(5));
    eprintln!(
        "publishing 1000 ports took {published:?}; removing them with {} flows answered in \
         {took:?}; flows gone within {forgotten_after:?} more; slowest map ls meanwhile: \
         {slowest_ls:?}",
        range_flows + other_flows
    );
    // Without waiting for the sweep (0.3-0.8 s of an unoptimized build
    // here): under 100 ms, or within 2x of publishing the range when the
    // machine is slow for both.
    let bound = Duration::from_millis(100).max(published * 2);
    assert!(took < bound, "map rm took {took:?} (bound {bound:?})");
    assert!(
        slowest_ls < Duration::from_secs(1),
        "map ls took {slowest_ls:?}"
    );
    assert_eq!(
        count_flows_of(rig.bpffs.path(), other_ip).unwrap(),
        other_flows,
        "the other task's flows stay"
    );
}

/// Polls until no flow of `ip` is tracked; returns how long that took.
fn wait_for_flows_gone(bpffs: &Bpffs, ip: std::net::Ipv4Addr, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let left = count_flows_of(bpffs.path(), ip).unwrap();
        if left == 0 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "{left} flows of {ip} still tracked after {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes `spec` for task `task` at `ip` and fills the table with
/// `per_port` flows per container port of `ports`; returns how many.
fn publish_with_flows(
    rig: &Rig,
    task: &str,
    ip: std::net::Ipv4Addr,
    ports: std::ops::RangeInclusive<u16>,
    per_port: u32,
) -> usize {
    let spec = format!("{a}-{b}:{a}-{b}", a = ports.start(), b = ports.end());
    rig.map_add(task, &ip.to_string(), &[&spec]);
    FlowFill {
        ctr_ip: ip,
        host_base: *ports.start(),
        ctr_ports: ports,
        client_ip: addr::CLIENT_IP,
        per_port,
    }
    .insert(rig.bpffs.path())
    .unwrap()
}

#[test]
fn a_range_published_again_at_once_finds_none_of_the_old_flows() {
    let rig = large_host();
    let ip = addr::CONTAINER2_IP;
    let filled = publish_with_flows(&rig, "range", ip, 20000..=20999, 200);
    let t = Instant::now();
    rig.berth(&["map", "rm", "--task", "range"]);
    let removed = t.elapsed();
    // The replaced container: same address, same ports. Its publish waits
    // for the sweep, so nothing of the old flows is left to inherit.
    let t = Instant::now();
    rig.map_add("range", &ip.to_string(), &["20000-20999:20000-20999"]);
    let republished = t.elapsed();
    let left = count_flows_of(rig.bpffs.path(), ip).unwrap();
    eprintln!("{filled} flows: map rm {removed:?}, map add again {republished:?}, {left} left");
    assert_eq!(left, 0, "the republished range found old flows");
}

#[test]
fn a_removal_answered_just_before_shutdown_still_forgets_its_flows() {
    let mut rig = large_host();
    let ip = addr::CONTAINER2_IP;
    publish_with_flows(&rig, "range", ip, 20000..=20999, 200);
    rig.berth(&["map", "rm", "--task", "range"]);
    let status = rig.daemon.stop().unwrap();
    assert!(status.success(), "{status}: {}", rig.daemon.stderr());
    assert_eq!(
        count_flows_of(rig.bpffs.path(), ip).unwrap(),
        0,
        "the stopped daemon left the removal's flows"
    );
}

#[test]
fn a_restart_forgets_flows_of_bindings_the_store_does_not_have() {
    let mut rig = large_host();
    let kept_ip = addr::CONTAINER_IP;
    let ghost_ip = addr::CONTAINER2_IP;
    let kept = publish_with_flows(&rig, "kept", kept_ip, 8080..=8080, 1000);
    rig.daemon.stop().unwrap();
    // What a daemon killed before its sweep leaves: flows no stored
    // binding owns (and no service either, as after a committed removal).
    let ghost = FlowFill {
        ctr_ip: ghost_ip,
        ctr_ports: 30000..=30009,
        host_base: 30000,
        client_ip: addr::CLIENT_IP,
        per_port: 100,
    }
    .insert(rig.bpffs.path())
    .unwrap();
    assert_eq!(count_flows_of(rig.bpffs.path(), ghost_ip).unwrap(), ghost);
    // A kept container's flows through a host port it is not published on.
    let stray = FlowFill {
        ctr_ip: kept_ip,
        ctr_ports: 8080..=8080,
        host_base: 9999,
        client_ip: std::net::Ipv4Addr::new(192, 0, 2, 77),
        per_port: 10,
    }
    .insert(rig.bpffs.path())
    .unwrap();
    rig.daemon.start_again().unwrap();
    assert_eq!(count_flows_of(rig.bpffs.path(), ghost_ip).unwrap(), 0);
    assert_eq!(
        count_flows_of(rig.bpffs.path(), kept_ip).unwrap(),
        kept,
        "only the stored binding's flows stay ({stray} strays)"
    );
}

#[test]
fn a_removed_task_loses_its_policy_tracked_flows_and_others_keep_theirs() {
    let rig = large_host();
    let gone_ip = addr::CONTAINER2_IP;
    let kept_ip = addr::CONTAINER_IP;
    for (task, ip, spec) in [("gone", gone_ip, "9000:80"), ("kept", kept_ip, "9001:80")] {
        rig.map_add(task, &ip.to_string(), &[spec]);
    }
    let outsider = std::net::Ipv4Addr::new(192, 0, 2, 50);
    // Flows its groups allowed, both ways, and a flow between the others.
    insert_ct_flows(rig.bpffs.path(), outsider, gone_ip, 100).unwrap();
    insert_ct_flows(rig.bpffs.path(), gone_ip, kept_ip, 100).unwrap();
    insert_ct_flows(rig.bpffs.path(), outsider, kept_ip, 100).unwrap();
    rig.berth(&["map", "rm", "--task", "gone"]);
    let t = Instant::now();
    while count_ct_flows_touching(rig.bpffs.path(), gone_ip).unwrap() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the removed task's policy flows stay"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        count_ct_flows_touching(rig.bpffs.path(), kept_ip).unwrap(),
        100,
        "a task still there keeps its flows with others"
    );
}

#[test]
fn a_thousand_idle_connections_do_not_keep_map_ls_waiting() {
    let rig = Rig::start();
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let idle: Vec<UnixStream> = (0..1000)
        .map(|i| {
            UnixStream::connect(rig.daemon.socket())
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = rig.daemon.cli_ok(["map", "ls"]).unwrap();
    let took = t.elapsed();
    assert!(out.contains("8080"), "{out}");
    assert!(took < Duration::from_secs(1), "map ls took {took:?}");
    // The idle ones are closed after the header timeout (10 s).
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(first.read(&mut buf).unwrap(), 0, "closed by the daemon");
}

/// A group from the group database other than root's.
fn some_group() -> u32 {
    std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .find(|gid| *gid != 0 && *gid != NOGROUP)
        .expect("a group in /etc/group")
}

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

#[test]
fn socket_group_members_may_use_the_api_and_each_change_names_its_caller() {
    let gid = some_group();
    let rig = Rig::builder()
        .flags(&["--socket-group", &gid.to_string()])
        .start();
    let daemon = &rig.daemon;
    let meta = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let as_user = |group: u32, args: &[&str]| {
        let mut c = Command::new(daemon.bin());
        c.arg("--socket").arg(daemon.socket()).args(args);
        c.uid(NOBODY).gid(group);
        c.output().unwrap()
    };
    let out = as_user(
        gid,
        &[
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:80",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user(NOGROUP, &["map", "ls"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "berth: cannot connect to the berth daemon at {}: permission denied (run as root)",
            daemon.socket().display()
        )
    );
    let log = daemon.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("API change request") && l.contains("path=/v1/bindings"))
        .unwrap_or_else(|| panic!("no change logged:\n{log}"));
    assert!(line.contains(&format!("uid={NOBODY}")), "{line}");
    assert!(line.contains("status=201"), "{line}");
    assert!(!line.contains("pid=?"), "{line}");
}

#[test]
fn a_request_over_the_port_limits_is_refused_in_one_line() {
    let rig = Rig::builder()
        .flags(&["--max-ports-per-request", "100"])
        .start();
    let out = rig.berth_output(&map_add_args("web", "172.17.0.2", &["1-65535:1-65535"]));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "berth: this request names 65535 ports; the daemon allows at most 100 per request \
         (berth daemon --max-ports-per-request)"
    );
    assert_eq!(rig.berth(&["map", "ls", "--json"]).trim(), "[]");
}

/// Polls until `ok()` or `limit` passes; returns how long it took.
fn within(limit: Duration, ok: impl Fn() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return Some(t.elapsed());
        }
        thread::sleep(Duration::from_millis(1));
    }
    None
}

#[test]
fn a_new_bridge_port_is_hooked_as_soon_as_it_is_enslaved_before_it_is_up() {
    let rig = Rig::start();
    let host = &rig.topo.host.ns;
    let links = rig.bpffs.path().join("berth/links");
    let hooked = |port: &str| {
        ["berth_from_ctr", "berth_to_ctr"]
            .iter()
            .all(|p| links.join(format!("{p}@{port}")).exists())
    };
    // Ten ports, each enslaved while down, as Docker does before it sets
    // the port up. Attaching takes ~25 ms here (two tcx attaches, each an
    // RCU grace period); a poll every 250 ms would take ~125 ms on the
    // median. The median keeps one port slowed by a busy machine from
    // failing the run; every port must still be hooked within a second.
    let mut times = Vec::new();
    for i in 0..10 {
        let port = format!("bwnew{i}");
        let peer = format!("bwpeer{i}");
        host.ip(["link", "add", &port, "type", "veth", "peer", "name", &peer])
            .unwrap();
        host.ip(["link", "set", &port, "master", addr::BRIDGE])
            .unwrap();
        let took = within(Duration::from_secs(1), || hooked(&port));
        let Some(took) = took else {
            panic!("{port} not hooked within 1 s of joining the bridge");
        };
        eprintln!("{port}: hooked {took:?} after joining the bridge");
        times.push(took);
    }
    times.sort();
    assert!(
        times[times.len() / 2] <= Duration::from_millis(75),
        "median time to hook a new port above 75 ms: {times:?}"
    );
    // Leaving the bridge, or going away, unhooks.
    host.ip(["link", "set", "bwnew0", "nomaster"]).unwrap();
    host.ip(["link", "del", "bwnew1"]).unwrap();
    for port in ["bwnew0", "bwnew1"] {
        assert!(
            within(Duration::from_secs(1), || !links
                .join(format!("berth_from_ctr@{port}"))
                .exists())
            .is_some(),
            "{port} still hooked"
        );
    }
    assert!(hooked("bwnew2"), "the others stay hooked");
}

/// Resumes a `SIGSTOPped` daemon, also when the test fails.
struct Frozen(i32);

impl Frozen {
    fn freeze(pid: u32) -> Self {
        // SAFETY: kill(2) on a child we started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Self(pid as i32)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

fn reaches(ns: &berth_integration::NetNs, target: std::net::SocketAddr) -> bool {
    ns.run(move || tcp_connect(target, Duration::from_millis(500)))
        .is_ok()
}

fn port_not_hooked_yet(default_sg: bool) -> (bool, bool) {
    let flags: &[&str] = if default_sg {
        &["--default-sg", "base"]
    } else {
        &[]
    };
    let rig = Rig::builder().flags(flags).start();
    let topo = &rig.topo;
    let host_side = std::net::SocketAddr::from((addr::BRIDGE_IP, 9999));
    let _server = HttpPeerServer::start_in(&topo.host.ns, host_side).expect("start an HTTP server");
    assert!(
        reaches(&topo.container.ns, host_side),
        "a hooked container talks"
    );
    // With the daemon frozen, a new container's port is not hooked.
    let frozen = Frozen::freeze(rig.daemon.pid().unwrap());
    let late = topo
        .new_container("late", std::net::Ipv4Addr::new(172, 17, 0, 9))
        .unwrap();
    let before = reaches(&late.ns, host_side);
    drop(frozen);
    let after = within(Duration::from_secs(3), || reaches(&late.ns, host_side)).is_some();
    if default_sg {
        let stats = rig.berth(&["stats"]);
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with("unhooked_port") && !l.trim_end().ends_with(" 0")),
            "{stats}"
        );
    }
    (before, after)
}

#[test]
fn with_a_default_group_a_port_not_hooked_yet_cannot_talk_until_it_is() {
    assert_eq!(port_not_hooked_yet(true), (false, true));
}

#[test]
fn without_a_default_group_a_port_not_hooked_yet_talks_as_with_docker() {
    assert_eq!(port_not_hooked_yet(false), (true, true));
}
