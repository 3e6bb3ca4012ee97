//! The container bridges: every container IP must be in a subnet of one.
use std::net::Ipv4Addr;

use crate::domain::{
    cidr::Ipv4Cidr,
    error::{Error, Result},
};

/// The container bridge whose subnets container IPs must be in.
#[derive(Clone, Debug)]
pub enum Bridge {
    /// Read the interface's addresses on every check, so a re-addressed
    /// bridge is picked up without a restart. The reader is the adapter's
    /// (`netif::interface_subnets`): the engine does no I/O of its own.
    System {
        name: String,
        read: fn(&str) -> std::io::Result<Vec<Ipv4Cidr>>,
    },
    /// Fixed subnets, for tests and for callers that already know them.
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
    pub fn system(names: &[String], read: fn(&str) -> std::io::Result<Vec<Ipv4Cidr>>) -> Self {
        let mut each: Vec<Self> = names
            .iter()
            .map(|name| Self::System {
                name: name.clone(),
                read,
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
            Self::System { name, read } => {
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
        let one = Bridge::system(&["docker0".into()], read);
        assert!(matches!(one, Bridge::System { .. }));
        assert!(matches!(
            one.check_contains("10.0.0.1".parse().unwrap()),
            Err(Error::NotInBridgeSubnet { .. })
        ));
        let two = Bridge::system(&["docker0".into(), "cni0".into()], read);
        assert!(matches!(&two, Bridge::Several(v) if v.len() == 2));
    }
}
