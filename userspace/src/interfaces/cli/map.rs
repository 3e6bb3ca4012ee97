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
            };
            print(&bindings_table(&client.add(&req).await?))
        }
        MapCommand::Rm { task, ports } => {
            validate_task_name(&task)?;
            parse_specs(&ports)?;
            let removed = client.remove(&RemoveRequest { task, ports }).await?;
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
                print(&bindings_table(&bindings))
            }
        }
    }
}

pub fn bindings_table(bindings: &[Binding]) -> String {
    let rows: Vec<Vec<String>> = bindings
        .iter()
        .map(|b| {
            vec![
                b.task.clone(),
                b.container_ip.to_string(),
                b.bind_ip.to_string(),
                b.host_port.to_string(),
                b.container_port.to_string(),
                b.protocol.as_str().to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "TASK",
            "CONTAINER IP",
            "BIND IP",
            "HOST PORT",
            "CONTAINER PORT",
            "PROTO",
        ],
        &rows,
    )
}
