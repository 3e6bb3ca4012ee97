//! Tasks as a request names them: the task name, its port specs and its
//! container IP, each parsed into a checked value or one clear error.
use std::net::Ipv4Addr;

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
