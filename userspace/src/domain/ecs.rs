//! Amazon ECS task definitions, as `RegisterTaskDefinition` takes them or as
//! `DescribeTaskDefinition` returns them (`{"taskDefinition": {...}}`).
//! berth reads what bridge mode publishes: `networkMode` and each
//! container's `name` and `portMappings` (`containerPort`, `hostPort`,
//! `protocol`, `containerPortRange`). Every other field is ignored, as ECS
//! ignores what it does not know. Errors name the offending field by its
//! path (`containerDefinitions[0].portMappings[1].containerPort: ...`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde_json::Value;

use crate::{
    domain::error::{Error, Result},
    domain::model::Protocol,
    domain::spec::{PortRange, PortSpec},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDefinition {
    pub containers: Vec<ContainerDefinition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerDefinition {
    pub name: String,
    pub port_mappings: Vec<PortMappingDef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappedPorts {
    /// `containerPort`, with `hostPort` (`None`: absent or 0, dynamic).
    Port { container: u16, host: Option<u16> },
    /// `containerPortRange`; its host ports are always dynamic.
    Range(PortRange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMappingDef {
    pub ports: MappedPorts,
    pub protocol: Protocol,
}

impl PortMappingDef {
    /// The `-p` equivalent. Bridge mode binds every host address.
    pub fn spec(&self) -> PortSpec {
        let (host, container) = match self.ports {
            MappedPorts::Port { container, host } => {
                (host.map(PortRange::single), PortRange::single(container))
            }
            MappedPorts::Range(range) => (None, range),
        };
        PortSpec {
            bind_ip: Some(Ipv4Addr::UNSPECIFIED.into()),
            host,
            container,
            protocol: self.protocol,
        }
    }
}

impl ContainerDefinition {
    pub fn specs(&self) -> Vec<PortSpec> {
        self.port_mappings
            .iter()
            .map(PortMappingDef::spec)
            .collect()
    }
}

impl TaskDefinition {
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| def_err(format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self> {
        // What `aws ecs register-task-definition --container-definitions
        // file://…` and Terraform's `container_definitions` hold: the
        // containers alone, network mode left to its default.
        if let Value::Array(containers) = value {
            return Self::from_containers(containers, "");
        }
        let def = match value.get("taskDefinition") {
            Some(inner) if inner.is_object() => inner,
            Some(other) => return Err(wrong_type("taskDefinition", "an object", other)),
            None => value,
        };
        let Some(def) = def.as_object() else {
            return Err(def_err(format!(
                "expected a JSON object, got {}",
                describe(def)
            )));
        };
        check_network_mode(def.get("networkMode"))?;
        let containers = match def.get("containerDefinitions") {
            None | Some(Value::Null) => return Err(def_err("containerDefinitions is missing")),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(def_err("containerDefinitions is empty"))
            }
            Some(Value::Array(a)) => a,
            Some(other) => return Err(wrong_type("containerDefinitions", "an array", other)),
        };
        Self::from_containers(containers, "containerDefinitions")
    }

    /// `containers` found at `at` (empty: the document's top level).
    fn from_containers(containers: &[Value], at: &str) -> Result<Self> {
        if containers.is_empty() {
            let what = if at.is_empty() {
                "the container definitions array"
            } else {
                at
            };
            return Err(def_err(format!("{what} is empty")));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, c) in containers.iter().enumerate() {
            let path = format!("{at}[{i}]");
            let container = parse_container(&path, c)?;
            if !seen.insert(container.name.clone()) {
                return Err(def_err(format!(
                    "{path}.name: container {:?} is defined twice",
                    container.name
                )));
            }
            out.push(container);
        }
        Ok(Self { containers: out })
    }

    /// Pairs each container with its `--ip`: a container with port mappings
    /// needs one, an `--ip` must name a container, and no two containers
    /// share an address.
    pub fn container_ips(
        &self,
        ips: &BTreeMap<String, Ipv4Addr>,
    ) -> Result<Vec<(&ContainerDefinition, Option<Ipv4Addr>)>> {
        for name in ips.keys() {
            if !self.containers.iter().any(|c| &c.name == name) {
                return Err(Error::UnknownContainer {
                    container: name.clone(),
                    known: self.containers.iter().map(|c| c.name.clone()).collect(),
                });
            }
        }
        let mut owner: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        let mut out = Vec::new();
        for c in &self.containers {
            let ip = ips.get(&c.name).copied();
            if ip.is_none() && !c.port_mappings.is_empty() {
                return Err(Error::MissingContainerIp(c.name.clone()));
            }
            if let Some(ip) = ip {
                if let Some(other) = owner.insert(ip, &c.name) {
                    return Err(Error::SharedContainerIp {
                        ip,
                        first: other.to_owned(),
                        second: c.name.clone(),
                    });
                }
            }
            out.push((c, ip));
        }
        if self.containers.iter().all(|c| c.port_mappings.is_empty()) {
            return Err(def_err("no container has portMappings; nothing to publish"));
        }
        Ok(out)
    }
}

/// Parses `CONTAINER=IP` (`berth task run --ip`).
pub fn parse_container_ip_arg(arg: &str) -> Result<(String, Ipv4Addr)> {
    let Some((name, ip)) = arg.split_once('=').filter(|(n, _)| !n.is_empty()) else {
        return Err(Error::ContainerIpArg(arg.to_owned()));
    };
    let ip = crate::domain::task::parse_container_ip(ip)?;
    Ok((name.to_owned(), ip))
}

fn check_network_mode(mode: Option<&Value>) -> Result<()> {
    let mode = match mode {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(wrong_type("networkMode", "a string", other)),
    };
    let why = match mode {
        "bridge" => return Ok(()),
        "awsvpc" => {
            "gives each task its own elastic network interface and IP address, so there \
             are no host ports to publish"
        }
        "host" => {
            "runs the containers in the host's network namespace, where they bind host \
             ports themselves, so there is nothing to publish"
        }
        "none" => "gives the containers no external network, so there is nothing to publish",
        other => {
            return Err(def_err(format!(
                "networkMode {other:?} is unknown; berth publishes ports of bridge-mode tasks \
                 (networkMode \"bridge\" or absent)"
            )))
        }
    };
    Err(def_err(format!(
        "networkMode {mode:?} {why}; berth applies to bridge mode only"
    )))
}

fn parse_container(path: &str, c: &Value) -> Result<ContainerDefinition> {
    let Some(c) = c.as_object() else {
        return Err(wrong_type(path, "an object", c));
    };
    let name = match c.get("name") {
        None | Some(Value::Null) => return Err(def_err(format!("{path}.name is missing"))),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(def_err(format!("{path}.name is empty")))
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(wrong_type(&format!("{path}.name"), "a string", other)),
    };
    let mappings = match c.get("portMappings") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(wrong_type(
                &format!("{path}.portMappings"),
                "an array",
                other,
            ))
        }
    };
    let port_mappings = mappings
        .iter()
        .enumerate()
        .map(|(i, m)| parse_mapping(&format!("{path}.portMappings[{i}]"), m))
        .collect::<Result<_>>()?;
    Ok(ContainerDefinition {
        name,
        port_mappings,
    })
}

fn parse_mapping(path: &str, m: &Value) -> Result<PortMappingDef> {
    let Some(m) = m.as_object() else {
        return Err(wrong_type(path, "an object", m));
    };
    let field = |name: &str| m.get(name).filter(|v| !v.is_null());
    let protocol = match field("protocol") {
        None => Protocol::Tcp,
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => {
                return Err(def_err(format!(
                    "{path}.protocol: unknown protocol {s:?}; use tcp or udp"
                )))
            }
        },
        Some(other) => return Err(wrong_type(&format!("{path}.protocol"), "a string", other)),
    };
    let host = field("hostPort")
        .map(|v| port(&format!("{path}.hostPort"), v, 0))
        .transpose()?
        .filter(|&p| p != 0);
    let ports = match (field("containerPort"), field("containerPortRange")) {
        (Some(_), Some(_)) => {
            return Err(def_err(format!(
                "{path}: containerPort and containerPortRange are mutually exclusive; give one"
            )))
        }
        (None, None) => {
            return Err(def_err(format!(
                "{path}: give containerPort or containerPortRange"
            )))
        }
        (Some(v), None) => MappedPorts::Port {
            container: port(&format!("{path}.containerPort"), v, 1)?,
            host,
        },
        (None, Some(v)) => {
            if let Some(h) = host {
                return Err(def_err(format!(
                    "{path}: hostPort {h} cannot be used with containerPortRange; the host \
                     ports of a range are always dynamic"
                )));
            }
            MappedPorts::Range(port_range(&format!("{path}.containerPortRange"), v)?)
        }
    };
    Ok(PortMappingDef { ports, protocol })
}

/// An integer port in `min..=65535`.
fn port(path: &str, v: &Value, min: u16) -> Result<u16> {
    let Some(n) = v.as_i64().or_else(|| v.as_u64().map(|_| i64::MAX)) else {
        return Err(wrong_type(path, "an integer", v));
    };
    match u16::try_from(n) {
        Ok(p) if p >= min => Ok(p),
        _ => Err(def_err(format!(
            "{path}: port {v} is out of range {min}-65535"
        ))),
    }
}

/// `"8000-8010"`, both ends in 1-65535, in order.
fn port_range(path: &str, v: &Value) -> Result<PortRange> {
    let Some(s) = v.as_str() else {
        return Err(wrong_type(path, "a string like \"8000-8010\"", v));
    };
    let bad = || {
        def_err(format!(
            "{path}: {s:?} is not a port range like \"8000-8010\""
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let parse = |t: &str| -> Result<u16> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        match t.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(def_err(format!("{path}: port {t} is out of range 1-65535"))),
        }
    };
    let (start, end) = (parse(a)?, parse(b)?);
    if start > end {
        return Err(def_err(format!(
            "{path}: port range {start}-{end} is reversed"
        )));
    }
    Ok(PortRange { start, end })
}

fn def_err(reason: impl Into<String>) -> Error {
    Error::TaskDefinition(reason.into())
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> Error {
    def_err(format!(
        "{path}: expected {expected}, got {}",
        describe(got)
    ))
}

/// A JSON value for an error message, cut short if long.
fn describe(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(37).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<TaskDefinition> {
        TaskDefinition::from_value(&v)
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    fn web(mappings: Value) -> Value {
        json!({"family": "web", "containerDefinitions": [
            {"name": "web", "image": "nginx", "portMappings": mappings}
        ]})
    }

    #[test]
    fn register_input_shape_with_every_mapping_kind() {
        let def = parse(json!({
            "family": "shop",
            "networkMode": "bridge",
            "requiresCompatibilities": ["EC2"],
            "containerDefinitions": [
                {"name": "web", "image": "nginx", "memory": 128, "essential": true,
                 "portMappings": [
                    {"containerPort": 80, "hostPort": 0, "protocol": "tcp"},
                    {"containerPort": 443, "hostPort": 8443},
                    {"containerPort": 53, "protocol": "udp", "name": "dns", "appProtocol": null},
                    {"containerPortRange": "8000-8010", "protocol": "tcp"}
                 ]},
                {"name": "log-router", "image": "fluent-bit"}
            ]
        }))
        .unwrap();
        assert_eq!(def.containers.len(), 2);
        let web = &def.containers[0];
        assert_eq!(web.name, "web");
        let specs: Vec<String> = web.specs().iter().map(ToString::to_string).collect();
        assert_eq!(
            specs,
            [
                "0.0.0.0::80/tcp",
                "0.0.0.0:8443:443/tcp",
                "0.0.0.0::53/udp",
                "0.0.0.0::8000-8010/tcp"
            ]
        );
        assert!(matches!(
            web.port_mappings[3].ports,
            MappedPorts::Range(PortRange {
                start: 8000,
                end: 8010
            })
        ));
        assert!(def.containers[1].port_mappings.is_empty());
    }

    #[test]
    fn describe_output_shape_is_unwrapped() {
        let inner = web(json!([{"containerPort": 80}]));
        let wrapped = json!({"taskDefinition": inner, "tags": []});
        assert_eq!(parse(wrapped).unwrap(), parse(inner).unwrap());
    }

    #[test]
    fn absent_host_port_and_null_network_mode_are_dynamic_bridge() {
        let mut v = web(json!([{"containerPort": 80, "hostPort": null}]));
        v["networkMode"] = Value::Null;
        let def = parse(v).unwrap();
        assert_eq!(
            def.containers[0].port_mappings[0].ports,
            MappedPorts::Port {
                container: 80,
                host: None
            }
        );
    }

    #[test]
    fn other_network_modes_are_refused_with_what_they_mean() {
        let mut v = web(json!([{"containerPort": 80}]));
        v["networkMode"] = json!("awsvpc");
        assert_eq!(
            err(v.clone()),
            "task definition: networkMode \"awsvpc\" gives each task its own elastic network \
             interface and IP address, so there are no host ports to publish; berth applies \
             to bridge mode only"
        );
        v["networkMode"] = json!("host");
        assert!(err(v.clone()).contains("host's network namespace"));
        v["networkMode"] = json!("none");
        assert!(err(v.clone()).contains("no external network"));
        v["networkMode"] = json!("nat");
        assert!(err(v.clone()).contains("\"nat\" is unknown"));
        v["networkMode"] = json!(1);
        assert_eq!(
            err(v),
            "task definition: networkMode: expected a string, got 1"
        );
    }

    #[test]
    fn bad_json_is_one_line() {
        let e = TaskDefinition::from_json(b"{\"containerDefinitions\": [").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("task definition: not valid JSON: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn a_bare_array_of_container_definitions_is_a_task_definition() {
        // `--container-definitions file://…` and Terraform's
        // `container_definitions` hold just this array.
        let containers = json!([
            {"name": "web", "image": "nginx", "portMappings": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "protocol": "udp"}
            ]},
            {"name": "sidecar", "image": "envoy"}
        ]);
        let bare = parse(containers.clone()).unwrap();
        let wrapped = parse(json!({"family": "web", "containerDefinitions": containers})).unwrap();
        assert_eq!(bare, wrapped);
        let specs: Vec<String> = bare.containers[0]
            .specs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(specs, ["0.0.0.0:8080:80/tcp", "0.0.0.0::53/udp"]);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (json!("web"), "task definition: expected a JSON object, got \"web\""),
            (json!([]), "task definition: the container definitions array is empty"),
            (
                json!([{"name": "web", "portMappings": [{"containerPort": "80"}]}]),
                "task definition: [0].portMappings[0].containerPort: expected an integer, got \"80\"",
            ),
            (
                json!({"taskDefinition": "x"}),
                "task definition: taskDefinition: expected an object, got \"x\"",
            ),
            (
                json!({"containerDefinitions": {}}),
                "task definition: containerDefinitions: expected an array, got {}",
            ),
            (
                json!({"family": "x"}),
                "task definition: containerDefinitions is missing",
            ),
            (
                json!({"containerDefinitions": []}),
                "task definition: containerDefinitions is empty",
            ),
            (
                json!({"containerDefinitions": [7]}),
                "task definition: containerDefinitions[0]: expected an object, got 7",
            ),
            (
                json!({"containerDefinitions": [{"image": "x"}]}),
                "task definition: containerDefinitions[0].name is missing",
            ),
            (
                json!({"containerDefinitions": [{"name": 5}]}),
                "task definition: containerDefinitions[0].name: expected a string, got 5",
            ),
            (
                json!({"containerDefinitions": [{"name": "a", "portMappings": {"containerPort": 80}}]}),
                "task definition: containerDefinitions[0].portMappings: expected an array, got {\"containerPort\":80}",
            ),
            (
                web(json!([{"containerPort": "80"}])),
                "task definition: containerDefinitions[0].portMappings[0].containerPort: expected an integer, got \"80\"",
            ),
            (
                web(json!([{"containerPort": 80.5}])),
                "task definition: containerDefinitions[0].portMappings[0].containerPort: expected an integer, got 80.5",
            ),
            (
                web(json!([{"containerPort": 80, "hostPort": true}])),
                "task definition: containerDefinitions[0].portMappings[0].hostPort: expected an integer, got true",
            ),
            (
                web(json!([{"containerPort": 80, "protocol": 6}])),
                "task definition: containerDefinitions[0].portMappings[0].protocol: expected a string, got 6",
            ),
            (
                web(json!([{"containerPortRange": 8000}])),
                "task definition: containerDefinitions[0].portMappings[0].containerPortRange: expected a string like \"8000-8010\", got 8000",
            ),
        ];
        for (v, msg) in cases {
            assert_eq!(err(v), msg);
        }
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        let cases = [
            (
                json!([{"containerPort": 0}]),
                "containerPort: port 0 is out of range 1-65535",
            ),
            (
                json!([{"containerPort": 65536}]),
                "containerPort: port 65536 is out of range 1-65535",
            ),
            (
                json!([{"containerPort": -1}]),
                "containerPort: port -1 is out of range 1-65535",
            ),
            (
                json!([{"containerPort": 18446744073709551615u64}]),
                "containerPort: port 18446744073709551615 is out of range 1-65535",
            ),
            (
                json!([{"containerPort": 80, "hostPort": 70000}]),
                "hostPort: port 70000 is out of range 0-65535",
            ),
            (
                json!([{"containerPortRange": "0-10"}]),
                "containerPortRange: port 0 is out of range 1-65535",
            ),
            (
                json!([{"containerPortRange": "9000-70000"}]),
                "containerPortRange: port 70000 is out of range 1-65535",
            ),
            (
                json!([{"containerPortRange": "9010-9000"}]),
                "containerPortRange: port range 9010-9000 is reversed",
            ),
            (
                json!([{"containerPortRange": "9000"}]),
                "containerPortRange: \"9000\" is not a port range like \"8000-8010\"",
            ),
            (
                json!([{"containerPortRange": "a-b"}]),
                "containerPortRange: \"a-b\" is not a port range like \"8000-8010\"",
            ),
            (
                json!([{"containerPort": 80, "protocol": "sctp"}]),
                "protocol: unknown protocol \"sctp\"; use tcp or udp",
            ),
        ];
        for (mappings, msg) in cases {
            let got = err(web(mappings));
            let want = format!("task definition: containerDefinitions[0].portMappings[0].{msg}");
            assert_eq!(got, want);
        }
    }

    #[test]
    fn container_port_and_range_are_exclusive_and_one_is_needed() {
        assert_eq!(
            err(web(
                json!([{"containerPort": 80, "containerPortRange": "80-81"}])
            )),
            "task definition: containerDefinitions[0].portMappings[0]: containerPort and \
             containerPortRange are mutually exclusive; give one"
        );
        assert_eq!(
            err(web(json!([{"hostPort": 80}]))),
            "task definition: containerDefinitions[0].portMappings[0]: give containerPort or \
             containerPortRange"
        );
        assert_eq!(
            err(web(
                json!([{"containerPortRange": "80-81", "hostPort": 8080}])
            )),
            "task definition: containerDefinitions[0].portMappings[0]: hostPort 8080 cannot be \
             used with containerPortRange; the host ports of a range are always dynamic"
        );
        // hostPort 0 with a range is what ECS itself returns.
        parse(web(json!([{"containerPortRange": "80-81", "hostPort": 0}]))).unwrap();
    }

    #[test]
    fn duplicate_container_names_are_refused() {
        assert_eq!(
            err(json!({"containerDefinitions": [{"name": "a"}, {"name": "a"}]})),
            "task definition: containerDefinitions[1].name: container \"a\" is defined twice"
        );
    }

    fn ips(pairs: &[(&str, &str)]) -> BTreeMap<String, Ipv4Addr> {
        pairs
            .iter()
            .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
            .collect()
    }

    fn two_containers() -> TaskDefinition {
        parse(json!({"containerDefinitions": [
            {"name": "web", "portMappings": [{"containerPort": 80}]},
            {"name": "sidecar"}
        ]}))
        .unwrap()
    }

    #[test]
    fn every_container_with_ports_needs_an_ip() {
        let def = two_containers();
        let paired = def.container_ips(&ips(&[("web", "172.17.0.2")])).unwrap();
        assert_eq!(paired[0].1, Some("172.17.0.2".parse().unwrap()));
        assert_eq!(paired[1].1, None);
        let e = def
            .container_ips(&ips(&[("sidecar", "172.17.0.3")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"web\" has port mappings but no IP; add --ip web=CONTAINER_IP"
        );
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn an_ip_for_an_unknown_container_is_refused() {
        let e = two_containers()
            .container_ips(&ips(&[("web", "172.17.0.2"), ("db", "172.17.0.9")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--ip db=...: the task definition has no container named \"db\" (it has web, sidecar)"
        );
    }

    #[test]
    fn containers_may_not_share_an_ip() {
        let e = two_containers()
            .container_ips(&ips(&[("web", "172.17.0.2"), ("sidecar", "172.17.0.2")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "containers web and sidecar both have IP 172.17.0.2; each container has its own \
             address on the bridge"
        );
    }

    #[test]
    fn a_definition_without_any_port_mapping_publishes_nothing_and_is_refused() {
        let def = parse(json!({"containerDefinitions": [{"name": "worker"}]})).unwrap();
        assert_eq!(
            def.container_ips(&BTreeMap::new()).unwrap_err().to_string(),
            "task definition: no container has portMappings; nothing to publish"
        );
    }

    #[test]
    fn ip_args_are_container_equals_ip() {
        assert_eq!(
            parse_container_ip_arg("web=172.17.0.2").unwrap(),
            ("web".to_owned(), "172.17.0.2".parse().unwrap())
        );
        assert_eq!(
            parse_container_ip_arg("172.17.0.2")
                .unwrap_err()
                .to_string(),
            "--ip \"172.17.0.2\": expected CONTAINER=IP"
        );
        assert_eq!(
            parse_container_ip_arg("=172.17.0.2")
                .unwrap_err()
                .to_string(),
            "--ip \"=172.17.0.2\": expected CONTAINER=IP"
        );
        assert_eq!(
            parse_container_ip_arg("web=172.17")
                .unwrap_err()
                .to_string(),
            "malformed container IP \"172.17\""
        );
    }
}
