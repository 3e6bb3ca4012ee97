//! The IPv6 bridge-subnet check (issue 15) through the real daemon and
//! CLI: an IPv6 container address outside every served bridge's IPv6
//! subnets is refused in one line and changes nothing, as IPv4's; status
//! lists a bridge's IPv6 networks beside its IPv4 ones (what `map ls`'s
//! BRIDGE column matches an IPv6 binding against).
use berth_integration::Rig;

/// The dual-stack rig's docker0 has `fd00:17::1/64`: `fd00:99::2` is on
/// no bridge berth serves.
#[test]
fn an_ipv6_address_outside_the_bridges_ipv6_subnets_is_refused_in_one_line() {
    let rig = Rig::builder().dual_stack().start();
    let err = rig.berth_err(&[
        "map",
        "add",
        "--task",
        "w",
        "--ip6",
        "fd00:99::2",
        "-p",
        "8080:80",
    ]);
    assert_eq!(
        err,
        "berth: container IPv6 address fd00:99::2 is not in an IPv6 subnet of any bridge \
         berth serves (docker0 fd00:17::/64)"
    );
    // Nothing published, on either family: the dual-stack request is
    // refused whole.
    let err = rig.berth_err(&[
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "--ip6",
        "fd00:99::2",
        "-p",
        "8080:80",
    ]);
    assert!(err.contains("fd00:99::2 is not in an IPv6 subnet"), "{err}");
    assert_eq!(rig.bindings().len(), 0);
    // A task definition's container, as `task run --ip6` names it.
    let def = rig.write_file(
        "web.json",
        r#"{"family": "web", "containerDefinitions": [{"name": "web", "image": "nginx",
            "memory": 128, "portMappings": [{"containerPort": 80, "hostPort": 8080}]}]}"#,
    );
    let def = def.display().to_string();
    let err = rig.berth_err(&[
        "task",
        "run",
        "--task-def",
        &def,
        "--name",
        "web",
        "--ip",
        "web=172.17.0.2",
        "--ip6",
        "web=fd00:99::2",
    ]);
    assert!(err.contains("fd00:99::2 is not in an IPv6 subnet"), "{err}");
    assert_eq!(rig.bindings().len(), 0);
    // On the bridge's IPv6 subnet: published.
    rig.berth_words("map add --task w --ip6 fd00:17::2 -p 8080:80");
    assert_eq!(rig.bindings().len(), 1);
}

#[test]
fn status_lists_a_bridges_ipv6_network_after_its_ipv4_one() {
    let rig = Rig::builder().dual_stack().start();
    let v = rig.json(&["status", "--json"]);
    let docker0 = v["datapath"]["bridges"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == "docker0").cloned())
        .unwrap_or_else(|| panic!("no docker0 in {v}"));
    assert_eq!(
        docker0["subnets"],
        serde_json::json!(["172.17.0.0/16", "fd00:17::/64"]),
        "link-local fe80::/64 left out: {docker0}"
    );
}
