//! dockerd's command line for its userland proxy, read the way Go's `flag`
//! package reads docker-proxy's (`-name value`, `--name value`,
//! `-name=value`, bare booleans), so any engine that runs docker-proxy can
//! run this one.
use std::{ffi::OsString, net::IpAddr, path::PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One published port as dockerd hands it to its proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyArgs {
    pub proto: Proto,
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
    /// Newer engines bind the host port themselves and pass it on fd 4.
    pub use_listen_fd: bool,
    /// `-v` / `-version`.
    pub version: bool,
    /// berth's own option: the docker-proxy to run for what berth cannot do.
    pub fallback: Option<PathBuf>,
    /// The arguments as given, minus berth's own, for the fallback.
    pub passthrough: Vec<OsString>,
}

/// Options only berth-docker-proxy knows; stripped before the fallback runs.
const OWN_OPTIONS: &[&str] = &["fallback-proxy"];

pub fn parse(args: &[OsString]) -> Result<ProxyArgs, String> {
    let mut proto = Proto::Tcp;
    let mut host_ip: IpAddr = "0.0.0.0".parse().expect("literal");
    let mut container_ip: IpAddr = "0.0.0.0".parse().expect("literal");
    let (mut host_port, mut container_port) = (None, None);
    let (mut use_listen_fd, mut version) = (false, false);
    let mut fallback = None;
    let mut passthrough = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i]
            .to_str()
            .ok_or_else(|| format!("argument {:?} is not UTF-8", args[i]))?;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let start = i;
        i += 1;
        if matches!(name, "use-listen-fd" | "v" | "version") {
            let on = match inline.as_deref() {
                None | Some("true" | "1") => true,
                Some("false" | "0") => false,
                Some(v) => return Err(format!("invalid boolean value {v:?} for -{name}")),
            };
            match name {
                "use-listen-fd" => use_listen_fd = on,
                _ => version = on,
            }
        } else {
            let value = match inline {
                Some(v) => v,
                None => {
                    let v = args
                        .get(i)
                        .and_then(|v| v.to_str())
                        .ok_or_else(|| format!("flag needs an argument: -{name}"))?;
                    i += 1;
                    v.to_string()
                }
            };
            match name {
                "proto" => proto = parse_proto(&value)?,
                "host-ip" => host_ip = parse_ip(name, &value)?,
                "container-ip" => container_ip = parse_ip(name, &value)?,
                "host-port" => host_port = Some(parse_port(name, &value)?),
                "container-port" => container_port = Some(parse_port(name, &value)?),
                "fallback-proxy" => fallback = Some(PathBuf::from(value)),
                _ => return Err(format!("flag provided but not defined: -{name}")),
            }
        }
        if !OWN_OPTIONS.contains(&name) {
            passthrough.extend(args[start..i].iter().cloned());
        }
    }
    if version {
        return Ok(ProxyArgs {
            proto,
            host_ip,
            host_port: 0,
            container_ip,
            container_port: 0,
            use_listen_fd,
            version,
            fallback,
            passthrough,
        });
    }
    Ok(ProxyArgs {
        proto,
        host_ip,
        host_port: host_port.ok_or("missing -host-port")?,
        container_ip,
        container_port: container_port.ok_or("missing -container-port")?,
        use_listen_fd,
        version,
        fallback,
        passthrough,
    })
}

fn parse_proto(value: &str) -> Result<Proto, String> {
    match value {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "sctp" => Ok(Proto::Sctp),
        // docker-proxy's own words.
        other => Err(format!("unsupported protocol {other}")),
    }
}

fn parse_ip(name: &str, value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for flag -{name}: not an IP address"))
}

fn parse_port(name: &str, value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "invalid value {value:?} for flag -{name}: not a port 1-65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn dockerd_20_10_command_line_is_read() {
        let a = parse(&os(&[
            "-proto",
            "udp",
            "-host-ip",
            "0.0.0.0",
            "-host-port",
            "5353",
            "-container-ip",
            "172.18.0.2",
            "-container-port",
            "53",
        ]))
        .unwrap();
        assert_eq!(a.proto, Proto::Udp);
        assert_eq!(a.host_ip.to_string(), "0.0.0.0");
        assert_eq!((a.host_port, a.container_port), (5353, 53));
        assert_eq!(a.container_ip.to_string(), "172.18.0.2");
        assert!(!a.use_listen_fd);
    }

    #[test]
    fn go_flag_forms_and_berths_own_option_are_accepted_and_own_is_not_passed_on() {
        let a = parse(&os(&[
            "--proto=tcp",
            "-host-ip=::",
            "--host-port",
            "8080",
            "-container-ip",
            "172.18.0.2",
            "-container-port=80",
            "-use-listen-fd",
            "-fallback-proxy",
            "/opt/docker-proxy",
        ]))
        .unwrap();
        assert_eq!(a.host_ip.to_string(), "::");
        assert!(a.use_listen_fd);
        assert_eq!(a.fallback, Some(PathBuf::from("/opt/docker-proxy")));
        assert_eq!(
            a.passthrough,
            os(&[
                "--proto=tcp",
                "-host-ip=::",
                "--host-port",
                "8080",
                "-container-ip",
                "172.18.0.2",
                "-container-port=80",
                "-use-listen-fd",
            ])
        );
    }

    #[test]
    fn bad_input_is_one_line_in_docker_proxys_words() {
        let err = |args: &[&str]| parse(&os(args)).unwrap_err();
        assert_eq!(
            err(&["-proto", "icmp", "-host-port", "1", "-container-port", "1"]),
            "unsupported protocol icmp"
        );
        assert_eq!(
            err(&["-bogus", "1"]),
            "flag provided but not defined: -bogus"
        );
        assert_eq!(err(&["-host-port"]), "flag needs an argument: -host-port");
        assert_eq!(err(&["-host-port", "1"]), "missing -container-port");
        assert_eq!(
            err(&["-host-port", "0", "-container-port", "1"]),
            "invalid value \"0\" for flag -host-port: not a port 1-65535"
        );
        assert_eq!(
            err(&[
                "-host-ip",
                "nope",
                "-host-port",
                "1",
                "-container-port",
                "1"
            ]),
            "invalid value \"nope\" for flag -host-ip: not an IP address"
        );
    }
}
