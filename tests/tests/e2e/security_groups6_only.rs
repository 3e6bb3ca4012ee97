//! The security groups of a task registered with IPv6 only (`berth map add
//! --ip6` without `--ip`) hold at its container's veth, though the
//! container holds an IPv4 address no task has: the judges find the task
//! by the port's learned IPv6 address (`ebpf/src/port_ep6.rs`), not by the
//! packets' addresses.
use super::security_groups6::{
    addr, assert_connects, assert_refused, ipv6_in, listen, setup, BRIDGE6, CTR2_6, CTR2_LL, CTR6,
};

#[test]
fn an_ipv6_only_tasks_groups_hold_at_its_veth_both_ways() {
    let rig = setup();
    let (ctr, ctr2) = (&rig.topo.container, &rig.topo.container2);
    ipv6_in(&ctr2.ns, ctr2.ifname, CTR2_6, CTR2_LL);
    let _web = listen(&ctr.ns, 80);
    let _allowed = listen(&rig.topo.host.ns, 8087);
    let _other = listen(&rig.topo.host.ns, 8088);
    // The container keeps its IPv4 address (172.17.0.2), no task's.
    rig.berth(&[
        "map", "add", "--task", "web", "--ip6", CTR6, "-p", "8080:80",
    ]);
    assert_connects(&ctr2.ns, addr(CTR6, 80));

    // In: nothing (a new group has no ingress rule); out: TCP 8087 only.
    rig.berth(&["sg", "create", "web"]);
    rig.berth_words("sg rule rm web --egress --proto all --cidr ::/0");
    rig.berth_words("sg rule add web --egress --proto tcp --port 8087 --cidr ::/0");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);

    // East-west: another container's connection to port 80 is refused.
    let denied_in = rig.counter("policy_denied_ingress");
    assert_refused(&ctr2.ns, addr(CTR6, 80));
    assert!(rig.counter("policy_denied_ingress") > denied_in);
    // Out: what the rules allow, and not what they do not.
    assert_connects(&ctr.ns, addr(BRIDGE6, 8087));
    let denied_out = rig.counter("policy_denied_egress");
    assert_refused(&ctr.ns, addr(BRIDGE6, 8088));
    assert!(rig.counter("policy_denied_egress") > denied_out);

    // A rule admits the other container: the same connection opens.
    rig.berth_words("sg rule add web --ingress --proto tcp --port 80 --cidr fd00:17::/64");
    assert_connects(&ctr2.ns, addr(CTR6, 80));
}
