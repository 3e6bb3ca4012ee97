//! `berth map add|rm|ls`: publish, unpublish and list ports.
use clap::Subcommand;

use super::output::{print, table, to_json_line};
use crate::{
    domain::{
        cidr::Ipv4Cidr,
        error::Result,
        model::Binding,
        task::{parse_container_ip, parse_container_ip6, parse_specs, validate_task_name},
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
        /// The container's IPv4 address on the bridge (may be left out
        /// for an IPv6-only container given --ip6).
        #[arg(
            long,
            value_name = "CONTAINER_IP",
            default_value = "",
            hide_default_value = true
        )]
        ip: String,
        /// The container's IPv6 address on the bridge: a spec without a
        /// host IP then publishes over IPv6 too (one host port for both),
        /// and `[::]:…` specs are allowed.
        #[arg(long, value_name = "CONTAINER_IPV6")]
        ip6: Option<String>,
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
        MapCommand::Add {
            task,
            ip,
            ip6,
            ports,
        } => {
            validate_task_name(&task)?;
            if ip.is_empty() && ip6.is_none() {
                return Err(crate::domain::error::Error::NoContainerIp(task));
            }
            if !ip.is_empty() {
                parse_container_ip(&ip)?;
            }
            if let Some(ip6) = &ip6 {
                parse_container_ip6(ip6)?;
            }
            parse_specs(&ports)?;
            let req = AddRequest {
                task,
                container_ip: ip,
                container_ip6: ip6,
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
                    print(&bindings_table_with_bridges(&bindings, &bridges))?;
                } else {
                    print(&bindings_table(&bindings))?;
                }
                match ipv4_only_note(&bindings) {
                    Some(note) => print(&note),
                    None => Ok(()),
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

/// The bridge whose subnet (`172.17.0.0/16`, `fd00:17::/64`, as status
/// reports them) holds `ip`; `-` where none does (its bridge is waiting
/// or was re-addressed, or has no subnet of `ip`'s family).
fn bridge_of(ip: std::net::IpAddr, bridges: &[BridgeState]) -> String {
    use std::net::IpAddr;
    let holds = |net: &String| {
        let Some((addr, len)) = net.split_once('/') else {
            return false;
        };
        let Ok(len) = len.parse() else {
            return false;
        };
        match (ip, addr.parse()) {
            (IpAddr::V4(ip), Ok(IpAddr::V4(addr))) => Ipv4Cidr::new(addr, len).contains(ip),
            (IpAddr::V6(ip), Ok(IpAddr::V6(addr))) => {
                crate::domain::cidr::Ipv6Cidr::new(addr, len).contains(ip)
            }
            _ => false,
        }
    };
    bridges
        .iter()
        .find(|b| b.subnets.iter().any(holds))
        .map_or_else(|| "-".to_owned(), |b| b.name.clone())
}

/// Where the host publishes over IPv6 at all, the tasks that do not: an
/// IPv6 client of theirs is refused (berth has no NAT64), which the table
/// alone would not say. `None` when every task has IPv6 or none has.
pub fn ipv4_only_note(bindings: &[Binding]) -> Option<String> {
    if !bindings.iter().any(Binding::is_ipv6) {
        return None;
    }
    let with6: std::collections::BTreeSet<&str> = bindings
        .iter()
        .filter(|b| b.is_ipv6())
        .map(|b| b.task.as_str())
        .collect();
    let only4: std::collections::BTreeSet<&str> = bindings
        .iter()
        .map(|b| b.task.as_str())
        .filter(|t| !with6.contains(t))
        .collect();
    (!only4.is_empty()).then(|| {
        format!(
            "IPv4 only (no IPv6 binding; IPv6 clients are refused): {}\n",
            only4.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
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
                subnets: vec!["172.17.0.0/16".into(), "fd00:17::/64".into()],
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
                b("d", "fd00:17::2"),
                b("e", "fd00:99::2"),
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
                "d     fd00:17::2    0.0.0.0  8080       80              tcp    docker0",
                "e     fd00:99::2    0.0.0.0  8080       80              tcp    -",
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

#[cfg(test)]
mod ipv6_tests {
    use super::*;

    fn b(task: &str, ctr: &str, bind: &str) -> Binding {
        Binding {
            bind_ip: bind.parse().unwrap(),
            ..Binding::for_test(task, ctr.parse::<std::net::IpAddr>().unwrap(), 8080)
        }
    }

    #[test]
    fn the_table_lists_both_families_of_a_dual_stack_task() {
        let text = bindings_table(&[b("web", "172.17.0.2", "0.0.0.0"), b("web", "fd00::2", "::")]);
        assert_eq!(
            text,
            "TASK  CONTAINER IP  BIND IP  HOST PORT  CONTAINER PORT  PROTO\n\
             web   172.17.0.2    0.0.0.0  8080       80              tcp\n\
             web   fd00::2       ::       8080       80              tcp\n"
        );
    }

    #[test]
    fn ipv4_only_tasks_are_named_once_the_host_publishes_over_ipv6() {
        let v4 = [
            b("a", "172.17.0.2", "0.0.0.0"),
            b("b", "172.17.0.3", "0.0.0.0"),
        ];
        assert_eq!(ipv4_only_note(&v4), None, "no IPv6 anywhere: no note");
        let mixed = [
            v4[0].clone(),
            v4[1].clone(),
            b("b", "fd00::3", "::"),
            b("c", "fd00::4", "::"),
        ];
        assert_eq!(
            ipv4_only_note(&mixed).as_deref(),
            Some("IPv4 only (no IPv6 binding; IPv6 clients are refused): a\n")
        );
        assert_eq!(ipv4_only_note(&mixed[2..]), None);
    }

    #[test]
    fn map_add_takes_ip6_and_checks_it_before_any_io() {
        use clap::Parser as _;
        let cli = crate::interfaces::cli::Cli::try_parse_from([
            "berth",
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "--ip6",
            "fd00::2",
            "-p",
            "8080:80",
        ])
        .unwrap();
        let crate::interfaces::cli::Command::Map(cmd) = cli.command else {
            panic!("not map");
        };
        let MapCommand::Add { ip6, .. } = &cmd else {
            panic!("not add");
        };
        assert_eq!(ip6.as_deref(), Some("fd00::2"));
        // A daemon that is not there: a bad address fails first, in one line.
        let client = Client::new(std::path::Path::new("/nonexistent/berth.sock"));
        let bad = MapCommand::Add {
            task: "web".into(),
            ip: "172.17.0.2".into(),
            ip6: Some("fe80::1".into()),
            ports: vec!["8080:80".into()],
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(run(&client, bad)).unwrap_err();
        assert!(
            matches!(err, crate::domain::error::Error::BadContainerIpv6(_)),
            "{err}"
        );
    }
}
