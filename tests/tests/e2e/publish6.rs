//! Publishing over IPv6 through the real daemon and CLI (issue 15, control
//! plane): `--ip6`, a plain spec on both families with one host port, the
//! bind guard for an IPv6-only mapping, the IPv4-only note, the refusals,
//! and IPv6 bindings surviving a restart. (Translation is nat66's: the
//! traffic tests live with it.)
use berth_integration::{NetNs, Rig};

fn bind_probe(rig: &Rig, ns: &NetNs, proto: &str, addr: &str) -> String {
    rig.cg_probe(ns, &["bind", proto, addr])
}

/// (bindIP, hostPort, containerIP, containerPort) of task `task`'s bindings.
fn rows(rig: &Rig, task: &str) -> Vec<(String, u64, String, u64)> {
    let listed = rig.json(&["map", "ls", "--json"]);
    listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["task"] == task)
        .map(|b| {
            (
                b["bindIP"].as_str().unwrap().to_owned(),
                b["hostPort"].as_u64().unwrap(),
                b["containerIP"].as_str().unwrap().to_owned(),
                b["containerPort"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn ip6_publishes_a_plain_spec_on_both_families_with_one_host_port() {
    let rig = Rig::start();
    rig.berth_words("map add --task w --ip 172.17.0.2 --ip6 fd00::2 -p 80 -p [::]:8090:90");
    let got = rows(&rig, "w");
    assert_eq!(got.len(), 3, "{got:?}");
    let (v4, v6) = (&got[0], &got[1]);
    assert_eq!(
        (v4.0.as_str(), v4.2.as_str(), v4.3),
        ("0.0.0.0", "172.17.0.2", 80)
    );
    assert_eq!((v6.0.as_str(), v6.2.as_str(), v6.3), ("::", "fd00::2", 80));
    assert_eq!(v4.1, v6.1, "one dynamic host port for both families");
    assert_eq!(got[2], ("::".into(), 8090, "fd00::2".into(), 90));
    // A port published over IPv6 only is still no host socket's, of
    // either family.
    let host = &rig.topo.host.ns;
    assert_eq!(bind_probe(&rig, host, "tcp", "[::]:8090"), "EADDRINUSE");
    assert_eq!(bind_probe(&rig, host, "tcp", "0.0.0.0:8090"), "EADDRINUSE");
    // An IPv4-only task is named once the host publishes over IPv6.
    rig.map_add("db", "172.17.0.3", &["5432:5432"]);
    let table = rig.berth(&["map", "ls"]);
    assert!(
        table.ends_with("IPv4 only (no IPv6 binding; IPv6 clients are refused): db\n"),
        "{table}"
    );
    // The IPv6 half alone goes; then the guard lets go of the port.
    rig.berth(&["map", "rm", "--task", "w", "-p", "[::]:8090:90"]);
    assert_eq!(rows(&rig, "w").len(), 2);
    assert_eq!(bind_probe(&rig, host, "tcp", "[::]:8090"), "ok");
}

#[test]
fn an_ipv6_spec_without_ip6_or_a_bad_ip6_is_one_error_line_and_changes_nothing() {
    let rig = Rig::start();
    let err = rig.berth_err(&[
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "-p",
        "[::]:8080:80",
    ]);
    assert_eq!(
        err,
        "berth: port spec \"[::]:8080:80/tcp\" publishes over IPv6, but task w has no container IPv6 address (--ip6)"
    );
    let err = rig.berth_err(&[
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "--ip6",
        "fe80::2",
        "-p",
        "8080:80",
    ]);
    assert!(err.contains("fe80::2"), "{err}");
    assert_eq!(rig.berth(&["map", "ls", "--json"]).trim(), "[]");
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "[::]:8080"),
        "ok"
    );
}

#[test]
fn ipv6_bindings_are_restored_and_keep_guarding_after_a_restart() {
    let mut rig = Rig::start();
    rig.berth_words("map add --task w --ip6 fd00::2 -p 8095:80/udp");
    assert_eq!(rows(&rig, "w"), [("::".into(), 8095, "fd00::2".into(), 80)]);
    rig.daemon.restart().unwrap();
    assert_eq!(rows(&rig, "w"), [("::".into(), 8095, "fd00::2".into(), 80)]);
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "udp", "[::]:8095"),
        "EADDRINUSE",
        "after a restart"
    );
}
