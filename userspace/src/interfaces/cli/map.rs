//! `berth map add|rm|ls`: publish, unpublish and list ports.
use clap::Subcommand;

use super::output::{print, table, to_json_line};
use crate::{
    domain::{
        cidr::Ipv4Cidr,
        error::Result,
        model::Binding,
        task::{parse_container_ip, parse_specs, validate_task_name},
    },
    engine::datapath::BridgeState,
    interfaces::{
        api::{AddRequest, RemoveRequest},
        client::Client,
    },
};

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Publish ports of a task's container.
    Add {
        #[arg(long, value_name = "NAME")]
        task: String,
        /// The container's IPv4 address on the bridge.
        #[arg(long, value_name = "CONTAINER_IP")]
        ip: String,
        /// [hostIP:][hostPort:]containerPort[/tcp|/udp], ports may be
        /// ranges; no (or 0) host port: the daemon picks one; a host range
        /// with one container port: the first free port of that range.
        #[arg(short = 'p', long = "publish", value_name = "SPEC", required = true)]
        ports: Vec<String>,
    },
    /// Unpublish the given ports of a task, or all of them.
    Rm {
        #[arg(long, value_name = "NAME")]
        task: String,
        /// Spec to unpublish (repeatable); none means every port of the task.
        /// Without a host port it names the container port's bindings.
        #[arg(short = 'p', long = "publish", value_name = "SPEC")]
        ports: Vec<String>,
    },
    /// List published ports.
    Ls {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// With each binding's counters: packets and bytes each way, flows
        /// opened, refused by security groups, tracked now.
        #[arg(long)]
        stats: bool,
    },
}

/// Checks locally what the daemon checks too, so typos fail before any I/O.
pub async fn run(client: &Client, cmd: MapCommand) -> Result<()> {
    match cmd {
        MapCommand::Add { task, ip, ports } => {
            validate_task_name(&task)?;
            parse_container_ip(&ip)?;
            parse_specs(&ports)?;
            let req = AddRequest {
                task,
                container_ip: ip,
                ports,
                held_by_docker: false,
                ecs_task_arn: None,
                ecs_container_name: None,
                docker_events: false,
            };
            print(&bindings_table(&client.add(&req).await?))
        }
        MapCommand::Rm { task, ports } => {
            validate_task_name(&task)?;
            parse_specs(&ports)?;
            let removed = client
                .remove(&RemoveRequest {
                    task,
                    ports,
                    docker_events: false,
                })
                .await?;
            print(&bindings_table(&removed))
        }
        MapCommand::Ls { json, stats: true } => {
            let rows = client.binding_stats(None).await?;
            if json {
                print(&to_json_line(&rows)?)
            } else {
                print(&super::top::binding_stats_table(&rows))
            }
        }
        MapCommand::Ls { json, stats: false } => {
            let bindings = client.bindings().await?;
            if json {
                print(&to_json_line(&bindings)?)
            } else {
                // With several bridges, say which one each container is on.
                let bridges = match client.status().await {
                    Ok(s) => s.datapath.map(|d| d.bridges).unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                if bridges.len() > 1 {
                    print(&bindings_table_with_bridges(&bindings, &bridges))
                } else {
                    print(&bindings_table(&bindings))
                }
            }
        }
    }
}

const HEADER: [&str; 6] = [
    "TASK",
    "CONTAINER IP",
    "BIND IP",
    "HOST PORT",
    "CONTAINER PORT",
    "PROTO",
];

fn binding_row(b: &Binding) -> Vec<String> {
    vec![
        b.task.clone(),
        b.container_ip.to_string(),
        b.bind_ip.to_string(),
        b.host_port.to_string(),
        b.container_port.to_string(),
        b.protocol.as_str().to_owned(),
    ]
}

pub fn bindings_table(bindings: &[Binding]) -> String {
    render(bindings, None)
}

/// The table `map` prints: a BRIDGE column with `bridges` (a daemon serving
/// several), and a POD column (`namespace/name` of the pod a `berth-cni`
/// task belongs to) when any binding has one.
fn render(bindings: &[Binding], bridges: Option<&[BridgeState]>) -> String {
    let pod = |b: &Binding| b.cni.as_ref()?.pod();
    let with_pods = bindings.iter().any(|b| pod(b).is_some());
    let rows: Vec<Vec<String>> = bindings
        .iter()
        .map(|b| {
            let mut row = binding_row(b);
            if let Some(bridges) = bridges {
                row.push(bridge_of(b.container_ip, bridges));
            }
            if with_pods {
                row.push(pod(b).unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut header = HEADER.to_vec();
    if bridges.is_some() {
        header.push("BRIDGE");
    }
    if with_pods {
        header.push("POD");
    }
    table(&header, &rows)
}

/// The bridge whose subnet (`172.17.0.0/16`, as status reports it) holds
/// `ip`; `-` where none does (its bridge is waiting or was re-addressed).
fn bridge_of(ip: std::net::IpAddr, bridges: &[BridgeState]) -> String {
    // Bridges report IPv4 subnets; an IPv6 binding's bridge is unknown here.
    let std::net::IpAddr::V4(ip) = ip else {
        return "-".to_owned();
    };
    let holds = |net: &String| {
        let Some((addr, len)) = net.split_once('/') else {
            return false;
        };
        match (addr.parse(), len.parse()) {
            (Ok(addr), Ok(len)) => Ipv4Cidr::new(addr, len).contains(ip),
            _ => false,
        }
    };
    bridges
        .iter()
        .find(|b| b.subnets.iter().any(holds))
        .map_or_else(|| "-".to_owned(), |b| b.name.clone())
}

/// [`bindings_table`] with a BRIDGE column, for a daemon serving several.
pub fn bindings_table_with_bridges(bindings: &[Binding], bridges: &[BridgeState]) -> String {
    render(bindings, Some(bridges))
}

#[cfg(test)]
mod bridge_tests {
    use super::*;

    #[test]
    fn several_bridges_name_each_containers_bridge() {
        let b = |task: &str, ip: &str| Binding {
            task: task.into(),
            container_ip: ip.parse().unwrap(),
            bind_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            host_port: 8080,
            container_port: 80,
            protocol: crate::domain::model::Protocol::Tcp,
            ecs: Default::default(),
            cni: None,
            docker_events: false,
        };
        let bridges = [
            BridgeState {
                name: "docker0".into(),
                subnets: vec!["172.17.0.0/16".into()],
                ..Default::default()
            },
            BridgeState {
                name: "cni0".into(),
                subnets: vec!["10.88.0.0/16".into()],
                ..Default::default()
            },
        ];
        let text = bindings_table_with_bridges(
            &[
                b("a", "172.17.0.2"),
                b("b", "10.88.0.5"),
                b("c", "192.168.0.9"),
            ],
            &bridges,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "TASK  CONTAINER IP  BIND IP  HOST PORT  CONTAINER PORT  PROTO  BRIDGE",
                "a     172.17.0.2    0.0.0.0  8080       80              tcp    docker0",
                "b     10.88.0.5     0.0.0.0  8080       80              tcp    cni0",
                "c     192.168.0.9   0.0.0.0  8080       80              tcp    -",
            ]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{cni::CniAttachment, model::Protocol};

    #[test]
    fn cni_tasks_show_their_pod() {
        let b = |task: &str, cni: Option<CniAttachment>| Binding {
            task: task.into(),
            container_ip: "10.88.0.5".parse().unwrap(),
            bind_ip: "0.0.0.0".parse().unwrap(),
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            ecs: Default::default(),
            cni,
            docker_events: false,
        };
        let att = CniAttachment {
            network: "kube".into(),
            container_id: "f00d".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some("web-0".into()),
        };
        let both = [b("f00d", Some(att)), b("web", None)];
        assert_eq!(
            bindings_table(&both),
            "TASK  CONTAINER IP  BIND IP  HOST PORT  CONTAINER PORT  PROTO  POD\n\
             f00d  10.88.0.5     0.0.0.0  8080       80              tcp    shop/web-0\n\
             web   10.88.0.5     0.0.0.0  8080       80              tcp    -\n"
        );
        let bridges = [BridgeState {
            name: "cni0".into(),
            subnets: vec!["10.88.0.0/16".into()],
            ..Default::default()
        }];
        assert_eq!(
            bindings_table_with_bridges(&both[..1], &bridges)
                .lines()
                .nth(1),
            Some(
                "f00d  10.88.0.5     0.0.0.0  8080       80              tcp    cni0    shop/web-0"
            )
        );
    }
}
