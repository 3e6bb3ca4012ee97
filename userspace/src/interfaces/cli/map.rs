//! `berth map add|rm|ls`: publish, unpublish and list ports.
use clap::Subcommand;

use super::output::{print, table, to_json_line};
use crate::{
    domain::{
        error::Result,
        model::Binding,
        task::{parse_container_ip, parse_specs, validate_task_name},
    },
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
            };
            print(&bindings_table(&client.add(&req).await?))
        }
        MapCommand::Rm { task, ports } => {
            validate_task_name(&task)?;
            parse_specs(&ports)?;
            let removed = client.remove(&RemoveRequest { task, ports }).await?;
            print(&bindings_table(&removed))
        }
        MapCommand::Ls { json } => {
            let bindings = client.bindings().await?;
            if json {
                print(&to_json_line(&bindings)?)
            } else {
                print(&bindings_table(&bindings))
            }
        }
    }
}

/// The table `map` prints; a POD column (`namespace/name` of the pod a
/// `berth-cni` task belongs to) appears when any binding has one.
pub fn bindings_table(bindings: &[Binding]) -> String {
    let pod = |b: &Binding| b.cni.as_ref()?.pod();
    let with_pods = bindings.iter().any(|b| pod(b).is_some());
    let rows: Vec<Vec<String>> = bindings
        .iter()
        .map(|b| {
            let mut row = vec![
                b.task.clone(),
                b.container_ip.to_string(),
                b.bind_ip.to_string(),
                b.host_port.to_string(),
                b.container_port.to_string(),
                b.protocol.as_str().to_owned(),
            ];
            if with_pods {
                row.push(pod(b).unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut head = vec![
        "TASK",
        "CONTAINER IP",
        "BIND IP",
        "HOST PORT",
        "CONTAINER PORT",
        "PROTO",
    ];
    if with_pods {
        head.push("POD");
    }
    table(&head, &rows)
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
        };
        let att = CniAttachment {
            network: "kube".into(),
            container_id: "f00d".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some("web-0".into()),
        };
        assert_eq!(
            bindings_table(&[b("f00d", Some(att)), b("web", None)]),
            "TASK  CONTAINER IP  BIND IP  HOST PORT  CONTAINER PORT  PROTO  POD\n\
             f00d  10.88.0.5     0.0.0.0  8080       80              tcp    shop/web-0\n\
             web   10.88.0.5     0.0.0.0  8080       80              tcp    -\n"
        );
    }
}
