//! The container bridge whose subnets every container IP must be in.
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
}

impl Bridge {
    pub fn name(&self) -> &str {
        match self {
            Self::System { name, .. } | Self::Fixed { name, .. } => name,
        }
    }

    pub fn subnets(&self) -> Result<Vec<Ipv4Cidr>> {
        match self {
            Self::System { name, read } => {
                read(name).map_err(|e| Error::io(format!("reading the addresses of {name}"), e))
            }
            Self::Fixed { subnets, .. } => Ok(subnets.clone()),
        }
    }

    pub fn check_contains(&self, ip: Ipv4Addr) -> Result<()> {
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
