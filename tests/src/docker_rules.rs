//! The iptables rules Docker 28 (iptables-nft backend, userland proxy on,
//! ICC on) writes for the default bridge when no port is published, as
//! `iptables-save` prints them. Applied in the topology's host namespace so
//! berth is exercised on a host that looks like a real Docker host:
//! FORWARD policy DROP, `DOCKER ! -i docker0 -o docker0 -j DROP`, and
//! MASQUERADE for the bridge subnet.
//!
//! On a bridge with IPv6 (`--ipv6`, `ip6tables` on, the default since
//! Docker 27) the same rules go into `ip6tables` with the bridge's IPv6
//! subnet and `::1/128` as loopback: [`docker_default_rules6`].
//!
//! Docker 28 also adds per-container raw-table rules
//! (`-A PREROUTING -d <ctr>/32 ! -i docker0 -j DROP`) and DOCKER/nat DNAT
//! rules, but only for ports it publishes itself; berth publishes instead.

/// `iptables-restore` input for bridge `bridge` with subnet `subnet`
/// (e.g. `docker0`, `172.17.0.0/16`).
pub fn docker_default_rules(bridge: &str, subnet: &str) -> String {
    rules(bridge, subnet, "127.0.0.0/8")
}

/// `ip6tables-restore` input for bridge `bridge` with IPv6 subnet `subnet`
/// (e.g. `docker0`, `fd00:17::/64`).
pub fn docker_default_rules6(bridge: &str, subnet: &str) -> String {
    rules(bridge, subnet, "::1/128")
}

fn rules(bridge: &str, subnet: &str, loopback: &str) -> String {
    format!(
        "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE
-A DOCKER -i {bridge} -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i {bridge} -o {bridge} -j DROP
-A DOCKER-BRIDGE -o {bridge} -j DOCKER
-A DOCKER-CT -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i {bridge} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP
-A DOCKER-USER -j RETURN
COMMIT
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_bridge_and_subnet() {
        let r = docker_default_rules("docker0", "172.17.0.0/16");
        assert!(r.contains(":FORWARD DROP [0:0]"));
        assert!(r.contains("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"));
        assert!(r.contains("-A DOCKER ! -i docker0 -o docker0 -j DROP"));
        assert_eq!(r.matches("COMMIT").count(), 2);
        assert!(r.contains("-A OUTPUT ! -d 127.0.0.0/8 -m addrtype"));
    }

    #[test]
    fn ipv6_rules_use_the_ipv6_subnet_and_loopback() {
        let r = docker_default_rules6("docker0", "fd00:17::/64");
        assert!(r.contains(":FORWARD DROP [0:0]"));
        assert!(r.contains("-A POSTROUTING -s fd00:17::/64 ! -o docker0 -j MASQUERADE"));
        assert!(r.contains("-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER"));
        assert!(!r.contains("127.0.0.0/8"));
    }
}
