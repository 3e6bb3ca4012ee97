//! The previous plugin's result: where the container's IPv4 address is
//! found, and how the result is passed on in the requested version (the
//! 0.3.x/0.4.0 results tag each IP with `"version"`, 1.x results do not;
//! otherwise the formats berth-cni speaks are the same).
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use super::{config::version_lt, error::CniError};

/// The container's IPv4 address: the first IPv4 entry of `ips` on the
/// sandbox interface, as portmap picks it (an entry whose `interface`
/// points at an interface that is not `ifname` or has no `sandbox` is
/// skipped; one without `interface` counts).
pub fn sandbox_ipv4(prev: &Value, ifname: &str) -> Result<Ipv4Addr, CniError> {
    sandbox_ip(prev, ifname, |_| true).ok_or_else(|| {
        CniError::config(format!(
            "prevResult has no IPv4 address on the sandbox interface {ifname}; berth publishes IPv4 only"
        ))
    })
}

/// The container's IPv6 address, picked as [`sandbox_ipv4`] picks the
/// IPv4 one; link-local addresses are not the container's own.
pub fn sandbox_ipv6(prev: &Value, ifname: &str) -> Option<Ipv6Addr> {
    sandbox_ip(prev, ifname, |ip: &Ipv6Addr| {
        crate::domain::task::check_container_ip6(*ip).is_ok()
    })
}

fn sandbox_ip<A: std::str::FromStr>(
    prev: &Value,
    ifname: &str,
    accept: impl Fn(&A) -> bool,
) -> Option<A> {
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let ips = prev["ips"].as_array().cloned().unwrap_or_default();
    for ip in &ips {
        let Some(addr) = ip["address"].as_str() else {
            continue;
        };
        let Ok(v4) = addr.split('/').next().unwrap_or("").parse::<A>() else {
            continue;
        };
        if !accept(&v4) {
            continue;
        }
        if let Some(idx) = ip["interface"].as_u64() {
            let on_sandbox = usize::try_from(idx)
                .ok()
                .and_then(|i| interfaces.get(i))
                .is_none_or(|i| {
                    i["name"].as_str() == Some(ifname)
                        && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
                });
            if !on_sandbox {
                continue;
            }
        }
        return Some(v4);
    }
    None
}

/// `prev` as a result of `version`: the same content, the `cniVersion`
/// asked for, and each IP's `"version"` tag added (0.x) or dropped (1.x).
pub fn convert(prev: &Value, version: &str) -> Value {
    let mut out = prev.clone();
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    obj.insert("cniVersion".into(), Value::String(version.into()));
    let old_format = version_lt(version, "1.0.0");
    if let Some(ips) = obj.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if old_format {
                let family = if ip
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.contains(':'))
                {
                    "6"
                } else {
                    "4"
                };
                ip.entry("version")
                    .or_insert_with(|| Value::String(family.into()));
            } else {
                ip.remove("version");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bridge_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/c1"}
            ],
            "ips": [
                {"address": "10.88.0.1/16", "gateway": "10.88.0.1", "interface": 0},
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    #[test]
    fn the_address_is_the_sandbox_interfaces_ipv4() {
        assert_eq!(
            sandbox_ipv4(&bridge_result(), "eth0").unwrap(),
            Ipv4Addr::new(10, 88, 0, 5)
        );
        // No interface index: the address counts (portmap does the same).
        let r = json!({"ips": [{"address": "10.1.0.7/24"}]});
        assert_eq!(
            sandbox_ipv4(&r, "eth0").unwrap(),
            Ipv4Addr::new(10, 1, 0, 7)
        );
    }

    #[test]
    fn the_ipv6_address_is_the_sandbox_interfaces_global_one() {
        assert_eq!(
            sandbox_ipv6(&bridge_result(), "eth0"),
            Some("fd00::5".parse().unwrap())
        );
        assert_eq!(sandbox_ipv6(&bridge_result(), "net1"), None);
        let r = json!({"ips": [{"address": "fe80::5/64"}, {"address": "10.1.0.7/24"}]});
        assert_eq!(
            sandbox_ipv6(&r, "eth0"),
            None,
            "link-local is no container's"
        );
    }

    #[test]
    fn no_ipv4_on_the_sandbox_interface_is_a_config_error() {
        let err = sandbox_ipv4(&bridge_result(), "net1").unwrap_err();
        assert_eq!(
            err.msg,
            "prevResult has no IPv4 address on the sandbox interface net1; berth publishes IPv4 only"
        );
        let v6_only = json!({"interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "fd00::5/64", "interface": 0}]});
        sandbox_ipv4(&v6_only, "eth0").unwrap_err();
        sandbox_ipv4(&json!({}), "eth0").unwrap_err();
    }

    #[test]
    fn results_convert_between_the_0x_and_1x_formats() {
        let old = convert(&bridge_result(), "0.4.0");
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        let back = convert(&old, "1.0.0");
        assert_eq!(back, bridge_result());
        // The same version passes through unchanged.
        assert_eq!(convert(&bridge_result(), "1.0.0"), bridge_result());
    }
}
