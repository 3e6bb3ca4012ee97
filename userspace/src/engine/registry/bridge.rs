//! The container bridges: every container IP must be in a subnet of one.
//! An IPv6 container address is checked against the bridges' IPv6 subnets
//! (link-local ones aside) once any served bridge has one; a host whose
//! bridges have none (Docker without `--ipv6` routes a ULA prefix itself,
//! say) cannot be checked, and the registry says so in its log.
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::domain::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    error::{Error, Result},
};

/// Reads an interface's IPv6 subnets (the adapter's
/// `netif::interface_subnets6`).
pub(crate) type Read6 = fn(&str) -> std::io::Result<Vec<Ipv6Cidr>>;

/// The container bridge whose subnets container IPs must be in.
#[derive(Clone, Debug)]
pub enum Bridge {
    /// Read the interface's addresses on every check, so a re-addressed
    /// bridge is picked up without a restart. The reader is the adapter's
    /// (`netif::interface_subnets`): the engine does no I/O of its own.
    System {
        name: String,
        read: fn(&str) -> std::io::Result<Vec<Ipv4Cidr>>,
        read6: Read6,
    },
    /// Fixed subnets, for tests and for callers that already know them
    /// (IPv4 only: their IPv6 addresses go unchecked).
    Fixed {
        name: String,
        subnets: Vec<Ipv4Cidr>,
    },
    /// `--bridge` given more than once: a container may be on any of them.
    /// One that does not exist (yet) has no subnets and holds no one.
    Several(Vec<Self>),
}

impl Bridge {
    /// One bridge, or several as a `Several` of `System` ones (a single
    /// name stays a plain `System`, so its errors read as they always did).
    pub fn system(
        names: &[String],
        read: fn(&str) -> std::io::Result<Vec<Ipv4Cidr>>,
        read6: Read6,
    ) -> Self {
        let mut each: Vec<Self> = names
            .iter()
            .map(|name| Self::System {
                name: name.clone(),
                read,
                read6,
            })
            .collect();
        if each.len() == 1 {
            each.remove(0)
        } else {
            Self::Several(each)
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::System { name, .. } | Self::Fixed { name, .. } => name,
            Self::Several(all) => all.first().map_or("", Self::name),
        }
    }

    /// The subnets of every bridge.
    pub fn subnets(&self) -> Result<Vec<Ipv4Cidr>> {
        match self {
            Self::System { name, read, .. } => {
                read(name).map_err(|e| Error::io(format!("reading the addresses of {name}"), e))
            }
            Self::Fixed { subnets, .. } => Ok(subnets.clone()),
            Self::Several(all) => {
                let mut nets = Vec::new();
                for b in all {
                    nets.extend(b.subnets()?);
                }
                Ok(nets)
            }
        }
    }

    /// The bridge whose subnet holds `ip`, if any.
    pub fn bridge_of(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        match self {
            Self::Several(all) => {
                for b in all {
                    if let Some(name) = b.bridge_of(ip)? {
                        return Ok(Some(name));
                    }
                }
                Ok(None)
            }
            one => Ok(one
                .subnets()?
                .iter()
                .any(|n| n.contains(ip))
                .then(|| one.name().to_owned())),
        }
    }

    /// Each bridge's name with its IPv6 subnets (none for a `Fixed` one).
    fn subnets6(&self) -> Result<Vec<(String, Vec<Ipv6Cidr>)>> {
        match self {
            Self::System { name, read6, .. } => {
                let nets = read6(name)
                    .map_err(|e| Error::io(format!("reading the IPv6 addresses of {name}"), e))?;
                Ok(vec![(name.clone(), nets)])
            }
            Self::Fixed { name, .. } => Ok(vec![(name.clone(), Vec::new())]),
            Self::Several(all) => {
                let mut out = Vec::new();
                for b in all {
                    out.extend(b.subnets6()?);
                }
                Ok(out)
            }
        }
    }

    /// Whether `ip` is in an IPv6 subnet of a served bridge: `Ok(true)`
    /// yes; `Ok(false)` no bridge has an IPv6 subnet, so nothing can be
    /// checked (the caller says so); an error when some bridge has one and
    /// none holds `ip` (a typo, or a container on a network berth does not
    /// serve, whose traffic would never reach it).
    pub fn check_contains6(&self, ip: Ipv6Addr) -> Result<bool> {
        let all = self.subnets6()?;
        if all.iter().all(|(_, nets)| nets.is_empty()) {
            return Ok(false);
        }
        if all
            .iter()
            .any(|(_, nets)| nets.iter().any(|n| n.contains(ip)))
        {
            return Ok(true);
        }
        let listed: Vec<String> = all
            .iter()
            .map(|(name, nets)| {
                let nets = if nets.is_empty() {
                    "no IPv6 subnet".to_owned()
                } else {
                    nets.iter()
                        .map(|n| n.network().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                format!("{name} {nets}")
            })
            .collect();
        Err(Error::NotInBridgeSubnet6 {
            ip,
            bridges: listed.join(", "),
        })
    }

    pub fn check_contains(&self, ip: Ipv4Addr) -> Result<()> {
        if let Self::Several(all) = self {
            if self.bridge_of(ip)?.is_some() {
                return Ok(());
            }
            let mut listed = Vec::new();
            for b in all {
                let nets = b.subnets()?;
                let nets = if nets.is_empty() {
                    "no IPv4 address".to_owned()
                } else {
                    nets.iter()
                        .map(|n| n.network().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                listed.push(format!("{} {nets}", b.name()));
            }
            return Err(Error::NotInAnyBridgeSubnet {
                ip,
                bridges: listed.join(", "),
            });
        }
        let subnets = self.subnets()?;
        if subnets.is_empty() {
            return Err(Error::BridgeWithoutIpv4(self.name().to_owned()));
        }
        if subnets.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        Err(Error::NotInBridgeSubnet {
            ip,
            bridge: self.name().to_owned(),
            subnets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(name: &str, net: &str) -> Bridge {
        let (a, l) = net.split_once('/').unwrap();
        Bridge::Fixed {
            name: name.into(),
            subnets: vec![Ipv4Cidr::new(a.parse().unwrap(), l.parse().unwrap())],
        }
    }

    #[test]
    fn a_container_on_any_served_bridge_is_accepted_and_told_apart() {
        let both = Bridge::Several(vec![
            fixed("docker0", "172.17.0.1/16"),
            fixed("cni0", "10.88.0.1/16"),
            // Not created yet: no subnets, holds no one, fails nothing.
            Bridge::Fixed {
                name: "br-late".into(),
                subnets: vec![],
            },
        ]);
        both.check_contains("172.17.0.2".parse().unwrap()).unwrap();
        both.check_contains("10.88.0.7".parse().unwrap()).unwrap();
        assert_eq!(
            both.bridge_of("10.88.0.7".parse().unwrap()).unwrap(),
            Some("cni0".into())
        );
        assert_eq!(both.subnets().unwrap().len(), 2);
        let err = both
            .check_contains("192.168.1.2".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "container IP 192.168.1.2 is not in the subnet of any bridge berth serves \
             (docker0 172.17.0.0/16, cni0 10.88.0.0/16, br-late no IPv4 address)"
        );
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn one_name_stays_one_bridge_with_its_own_errors() {
        fn read(_: &str) -> std::io::Result<Vec<Ipv4Cidr>> {
            Ok(vec![Ipv4Cidr::new("172.17.0.1".parse().unwrap(), 16)])
        }
        fn none6(_: &str) -> std::io::Result<Vec<Ipv6Cidr>> {
            Ok(vec![])
        }
        let one = Bridge::system(&["docker0".into()], read, none6);
        assert!(matches!(one, Bridge::System { .. }));
        assert!(matches!(
            one.check_contains("10.0.0.1".parse().unwrap()),
            Err(Error::NotInBridgeSubnet { .. })
        ));
        let two = Bridge::system(&["docker0".into(), "cni0".into()], read, none6);
        assert!(matches!(&two, Bridge::Several(v) if v.len() == 2));
    }

    fn v4(_: &str) -> std::io::Result<Vec<Ipv4Cidr>> {
        Ok(vec![])
    }

    /// docker0 has `fd00:17::1/64`, cni0 only its link-local address
    /// (which the reader leaves out).
    fn by_name6(name: &str) -> std::io::Result<Vec<Ipv6Cidr>> {
        Ok(match name {
            "docker0" => vec![Ipv6Cidr::new("fd00:17::1".parse().unwrap(), 64)],
            _ => vec![],
        })
    }

    #[test]
    fn an_ipv6_address_outside_every_bridges_ipv6_subnets_is_refused() {
        let both = Bridge::system(&["docker0".into(), "cni0".into()], v4, by_name6);
        assert!(both.check_contains6("fd00:17::2".parse().unwrap()).unwrap());
        let err = both
            .check_contains6("fd00:99::2".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "container IPv6 address fd00:99::2 is not in an IPv6 subnet of any bridge \
             berth serves (docker0 fd00:17::/64, cni0 no IPv6 subnet)"
        );
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn without_any_ipv6_subnet_an_ipv6_address_cannot_be_checked() {
        let cni = Bridge::system(&["cni0".into()], v4, by_name6);
        assert!(!cni.check_contains6("fd00:99::2".parse().unwrap()).unwrap());
        // A fixed bridge knows no IPv6 subnets.
        assert!(!fixed("br0", "172.17.0.1/16")
            .check_contains6("fd00::2".parse().unwrap())
            .unwrap());
    }
}
