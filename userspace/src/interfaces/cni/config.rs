//! What a runtime hands berth-cni: the `CNI_*` environment and the plugin
//! configuration on stdin (with `name`, `cniVersion`, `runtimeConfig` and
//! `prevResult` injected), checked the way the CNI library's `skel` checks
//! them, and `runtimeConfig.portMappings` turned into berth port specs.
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde_json::Value;

use super::error::{CniError, Code};
use crate::{adapters::socket::DEFAULT_SOCKET, domain::cni};

/// The versions berth-cni speaks. 0.1.0 and 0.2.0 have another result
/// format (`ip4`/`ip6`), which no chained runtime sends any more.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// What an error is tagged with when the request's version is unknown.
pub const NEWEST_VERSION: &str = "1.1.0";

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("unknown CNI_COMMAND: {other:?}"),
                ))
            }
        })
    }

    /// The oldest configuration version that has this verb.
    fn since(self) -> &'static str {
        match self {
            Self::Check => "0.4.0",
            Self::Gc | Self::Status => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// The `CNI_*` variables, checked as `skel` checks them for each verb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

impl Env {
    /// `get` reads one variable (`std::env::var` in the binary). `Ok(None)`:
    /// no `CNI_COMMAND` at all, someone ran the binary by hand.
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, CniError> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let Some(command) = var("CNI_COMMAND") else {
            return Ok(None);
        };
        let command = Command::parse(&command)?;
        // (variable, required for ADD/CHECK/DEL) as skel has them; GC and
        // STATUS need CNI_PATH only, which berth-cni does not use.
        let attachment = matches!(command, Command::Add | Command::Check | Command::Del);
        let mut missing = Vec::new();
        let mut need = |k: &'static str, required: bool| {
            let v = var(k);
            if required && v.is_none() {
                missing.push(k);
            }
            v.unwrap_or_default()
        };
        let container_id = need("CNI_CONTAINERID", attachment);
        let netns = need(
            "CNI_NETNS",
            matches!(command, Command::Add | Command::Check),
        );
        let ifname = need("CNI_IFNAME", attachment);
        need("CNI_PATH", command != Command::Version);
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if attachment {
            cni::check_id("container ID", &container_id).map_err(|e| {
                CniError::new(Code::InvalidEnvironment, format!("CNI_CONTAINERID: {e}"))
            })?;
            cni::check_ifname(&ifname)
                .map_err(|e| CniError::new(Code::InvalidEnvironment, format!("CNI_IFNAME: {e}")))?;
        }
        let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
        let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok(Some(Self {
            command,
            container_id,
            netns,
            ifname,
            pod_namespace: arg("K8S_POD_NAMESPACE"),
            pod_name: arg("K8S_POD_NAME"),
        }))
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_ARGS: invalid pair {pair:?}, expected KEY=VALUE"),
            )),
        })
        .collect()
}

/// One `runtimeConfig.portMappings` entry (CNI CONVENTIONS.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapEntry {
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

impl PortMapEntry {
    /// The entry as a berth port spec (`hostIP:hostPort:containerPort/proto`).
    /// Ports must be 1-65535, as portmap requires (a hostPort of 0 is refused
    /// there too); the protocol tcp or udp in any case, tcp when absent (the
    /// Kubernetes default); the host IP absent (every IPv4 address; see
    /// [`NetConf::specs_for`] for IPv6) or an address of either family.
    pub fn to_spec(&self) -> Result<String, CniError> {
        let port = |what: &str, p: i64| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| CniError::config(format!("invalid {what} number: {p}")))
        };
        let host_port = port("host port", self.host_port)?;
        let container_port = port("container port", self.container_port)?;
        let protocol = match self.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => "tcp",
            "udp" => "udp",
            other => {
                return Err(CniError::config(format!(
                    "port mapping {host_port}:{container_port}: unsupported protocol {other:?}; berth publishes tcp and udp"
                )))
            }
        };
        let host_ip = match self.host_ip.as_str() {
            "" => Ipv4Addr::UNSPECIFIED.to_string(),
            s => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => ip.to_string(),
                Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
                Err(_) => {
                    return Err(CniError::config(format!(
                        "port mapping {host_port}:{container_port}: malformed hostIP {s:?}"
                    )))
                }
            },
        };
        Ok(format!("{host_ip}:{host_port}:{container_port}/{protocol}"))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapEntry>,
}

/// The plugin configuration berth-cni reads; other keys are ignored, as the
/// spec passes the whole plugin object through.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The daemon's API socket.
    #[serde(default = "default_socket")]
    pub socket: String,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments still alive on this network.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Value>>,
}

fn default_socket() -> String {
    DEFAULT_SOCKET.to_owned()
}

impl NetConf {
    /// Parses stdin and checks name and version for `command` as `skel`
    /// does: a config it cannot read is code 6, a missing name 7, a version
    /// berth-cni does not speak (or one older than the verb) 1.
    pub fn parse(stdin: &[u8], command: Command) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(Code::Decoding, format!("error parsing network config: {e}"))
        })?;
        if conf.name.is_empty() {
            return Err(CniError::config("missing network name"));
        }
        cni::check_id("network name", &conf.name).map_err(CniError::config)?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            let got = if conf.cni_version.is_empty() {
                "none (0.1.0)"
            } else {
                &conf.cni_version
            };
            return Err(
                CniError::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(
                    format!(
                        "config is {got}, plugin supports [{}]",
                        SUPPORTED_VERSIONS.join(" ")
                    ),
                ),
            );
        }
        if version_lt(&conf.cni_version, command.since()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "config version {} does not allow {command:?}; it needs {} or later",
                    conf.cni_version,
                    command.since()
                ),
            ));
        }
        if !conf.socket.starts_with('/') {
            return Err(CniError::config(format!(
                "socket {:?}: expected an absolute path to the berth daemon's socket",
                conf.socket
            )));
        }
        Ok(conf)
    }

    /// The port mappings as berth specs; the first bad entry fails them all.
    pub fn specs(&self) -> Result<Vec<String>, CniError> {
        self.specs_for(false)
    }

    /// [`NetConf::specs`]; `ipv6`: the sandbox has an IPv6 address, so an
    /// entry without a hostIP is published on `[::]` too, as portmap does
    /// for each family the container has.
    pub fn specs_for(&self, ipv6: bool) -> Result<Vec<String>, CniError> {
        let mut out = Vec::new();
        for e in &self.runtime_config.port_mappings {
            let spec = e.to_spec()?;
            let v6 = (ipv6 && e.host_ip.is_empty())
                .then(|| spec.strip_prefix("0.0.0.0:").map(|p| format!("[::]:{p}")))
                .flatten();
            out.push(spec);
            out.extend(v6);
        }
        Ok(out)
    }
}

/// `a < b` for the dotted versions above.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a) < parts(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Option<Env>, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::read(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ];

    #[test]
    fn environment_of_an_add_is_read_with_the_pod() {
        let e = env(ADD).unwrap().unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "abc123");
        assert_eq!(e.pod_namespace.as_deref(), Some("default"));
        assert_eq!(e.pod_name.as_deref(), Some("web-0"));
    }

    #[test]
    fn missing_variables_are_named() {
        let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/x")]).unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert_eq!(
            err.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        // DEL needs no netns; GC and STATUS no attachment at all.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ])
        .unwrap();
        env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).unwrap();
        env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(env(&[]).unwrap(), None);
    }

    #[test]
    fn bad_environment_values_are_refused() {
        let mut vars = ADD.to_vec();
        vars[1] = ("CNI_CONTAINERID", "-bad id");
        assert!(env(&vars)
            .unwrap_err()
            .msg
            .starts_with("CNI_CONTAINERID: invalid container ID"));
        let mut vars = ADD.to_vec();
        vars[5] = ("CNI_ARGS", "K8S_POD_NAME");
        assert_eq!(
            env(&vars).unwrap_err().msg,
            "CNI_ARGS: invalid pair \"K8S_POD_NAME\", expected KEY=VALUE"
        );
        let err = env(&[("CNI_COMMAND", "RESET"), ("CNI_PATH", "/x")]).unwrap_err();
        assert_eq!(err.msg, "unknown CNI_COMMAND: \"RESET\"");
    }

    fn conf(json: &str, command: Command) -> Result<NetConf, CniError> {
        NetConf::parse(json.as_bytes(), command)
    }

    #[test]
    fn versions_are_negotiated_per_verb() {
        for v in SUPPORTED_VERSIONS {
            let c = conf(
                &format!(r#"{{"cniVersion":"{v}","name":"n"}}"#),
                Command::Add,
            )
            .unwrap();
            assert_eq!(c.socket, DEFAULT_SOCKET);
        }
        for (v, cmd) in [
            ("0.3.1", Command::Check),
            ("1.0.0", Command::Gc),
            ("1.0.0", Command::Status),
        ] {
            let err = conf(&format!(r#"{{"cniVersion":"{v}","name":"n"}}"#), cmd).unwrap_err();
            assert_eq!(err.code, Code::IncompatibleVersion, "{v} {cmd:?}");
        }
        for v in ["0.2.0", "2.0.0", ""] {
            let err = conf(
                &format!(r#"{{"cniVersion":"{v}","name":"n"}}"#),
                Command::Add,
            )
            .unwrap_err();
            assert_eq!(err.code, Code::IncompatibleVersion);
            assert_eq!(err.msg, "incompatible CNI versions");
            assert!(
                err.details
                    .contains("plugin supports [0.3.0 0.3.1 0.4.0 1.0.0 1.1.0]"),
                "{}",
                err.details
            );
        }
        conf(r#"{"cniVersion":"1.1.0","name":"n"}"#, Command::Gc).unwrap();
    }

    #[test]
    fn config_errors_have_their_codes() {
        assert_eq!(conf("{", Command::Add).unwrap_err().code, Code::Decoding);
        let err = conf(r#"{"cniVersion":"1.0.0"}"#, Command::Add).unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (Code::InvalidConfig, "missing network name")
        );
        let err = conf(
            r#"{"cniVersion":"1.0.0","name":"n","socket":"rel.sock"}"#,
            Command::Add,
        )
        .unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
    }

    fn entry(host: i64, container: i64, protocol: &str, host_ip: &str) -> PortMapEntry {
        PortMapEntry {
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn port_mappings_become_berth_specs() {
        assert_eq!(
            entry(8080, 80, "tcp", "").to_spec().unwrap(),
            "0.0.0.0:8080:80/tcp"
        );
        assert_eq!(
            entry(53, 53, "UDP", "192.0.2.1").to_spec().unwrap(),
            "192.0.2.1:53:53/udp"
        );
        assert_eq!(
            entry(8080, 80, "", "").to_spec().unwrap(),
            "0.0.0.0:8080:80/tcp"
        );
    }

    #[test]
    fn a_sandbox_with_ipv6_gets_each_entry_without_a_host_ip_on_both_families() {
        let mut c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","socket":"/run/berth.sock",
               "runtimeConfig":{"portMappings":[
                 {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                 {"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"192.0.2.1"}]},
               "prevResult":{"cniVersion":"1.0.0"}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            c.specs_for(true).unwrap(),
            [
                "0.0.0.0:8080:80/tcp",
                "[::]:8080:80/tcp",
                "192.0.2.1:53:53/udp"
            ]
        );
        assert_eq!(
            c.specs_for(false).unwrap(),
            ["0.0.0.0:8080:80/tcp", "192.0.2.1:53:53/udp"]
        );
        c.runtime_config.port_mappings.clear();
        assert!(c.specs_for(true).unwrap().is_empty());
    }

    #[test]
    fn an_ipv6_host_ip_is_an_ipv6_spec() {
        assert_eq!(
            entry(8080, 80, "tcp", "2001:db8::1").to_spec().unwrap(),
            "[2001:db8::1]:8080:80/tcp"
        );
        assert_eq!(
            entry(8080, 80, "udp", "::").to_spec().unwrap(),
            "[::]:8080:80/udp"
        );
    }

    #[test]
    fn bad_port_mappings_are_refused_clearly() {
        for (e, want) in [
            (entry(0, 80, "tcp", ""), "invalid host port number: 0"),
            (
                entry(8080, 0, "tcp", ""),
                "invalid container port number: 0",
            ),
            (
                entry(70000, 80, "tcp", ""),
                "invalid host port number: 70000",
            ),
            (
                entry(8080, 80, "sctp", ""),
                "port mapping 8080:80: unsupported protocol \"sctp\"; berth publishes tcp and udp",
            ),
            (
                entry(8080, 80, "tcp", "300.1.1.1"),
                "port mapping 8080:80: malformed hostIP \"300.1.1.1\"",
            ),
        ] {
            let err = e.to_spec().unwrap_err();
            assert_eq!((err.code, err.msg.as_str()), (Code::InvalidConfig, want));
        }
    }

    #[test]
    fn runtime_config_is_read_from_the_injected_keys() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"berth-cni","socket":"/run/b.sock",
               "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
               "prevResult":{"cniVersion":"1.0.0"}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(c.socket, "/run/b.sock");
        assert_eq!(c.specs().unwrap(), ["0.0.0.0:8080:80/tcp"]);
        assert!(c.prev_result.is_some());
    }
}
