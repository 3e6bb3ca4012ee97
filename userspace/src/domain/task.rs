//! Tasks as a request names them: the task name, its port specs and its
//! container IP, each parsed into a checked value or one clear error.
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::domain::{
    error::{Error, Result},
    spec::PortSpec,
};

pub const MAX_TASK_NAME_LEN: usize = 255;

/// What is wrong with a task or security-group name, if anything: names
/// are non-empty, at most 255 of `[A-Za-z0-9_.-]`.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_TASK_NAME_LEN {
        Some("longer than 255 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    }
}

/// Task names: non-empty, at most 255 of `[A-Za-z0-9_.-]`.
pub fn validate_task_name(name: &str) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(Error::TaskName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// Parses every spec, failing on the first bad one.
pub fn parse_specs<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortSpec>> {
    specs
        .iter()
        .map(|s| {
            let s = s.as_ref();
            s.parse().map_err(|reason| Error::Spec {
                spec: s.to_owned(),
                reason,
            })
        })
        .collect()
}

pub fn parse_container_ip(ip: &str) -> Result<Ipv4Addr> {
    ip.parse()
        .map_err(|_| Error::MalformedContainerIp(ip.to_owned()))
}

/// A container's IPv6 address (`--ip6`, `containerIPv6`), checked as
/// [`check_container_ip6`] does.
pub fn parse_container_ip6(ip: &str) -> Result<Ipv6Addr> {
    let parsed = ip
        .parse()
        .map_err(|_| Error::MalformedContainerIpv6(ip.to_owned()))?;
    check_container_ip6(parsed)?;
    Ok(parsed)
}

/// The container IPv6 addresses berth publishes to: a unicast address
/// that is not link-local (those exist on every link and say nothing of
/// which container) nor IPv4-mapped (an IPv4 address, which `--ip` names).
pub fn check_container_ip6(ip: Ipv6Addr) -> Result<()> {
    let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || link_local
        || ip.to_ipv4_mapped().is_some()
    {
        return Err(Error::BadContainerIpv6(ip));
    }
    Ok(())
}
