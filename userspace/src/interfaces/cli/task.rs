//! `berth task run|stop|ls`: tasks from ECS task definitions.
use std::{collections::BTreeMap, path::PathBuf};

use clap::Subcommand;

use super::output::{print, table, to_json_line};
use crate::{
    domain::{
        ecs::{parse_container_ip_arg, TaskDefinition},
        error::{Error, Result},
        task::validate_task_name,
    },
    interfaces::{
        api::{RunTaskRequest, TaskView},
        client::Client,
    },
};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Publish every container's port mappings of an ECS task definition
    /// (bridge mode) as one task, and print each container's networkBindings
    /// as ECS `DescribeTasks` shows them (JSON).
    Run {
        /// `RegisterTaskDefinition` input, `DescribeTaskDefinition` output, or
        /// a bare array of container definitions.
        #[arg(long, value_name = "FILE.json")]
        task_def: PathBuf,
        /// The task's name (unique on this host).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// A container's IPv4 address on the bridge (repeatable; every
        /// container with port mappings needs one).
        #[arg(long = "ip", value_name = "CONTAINER=IP")]
        ips: Vec<String>,
        /// A container's IPv6 address (repeatable): its port mappings are
        /// published over IPv6 too, with the same host ports.
        #[arg(long = "ip6", value_name = "CONTAINER=IPV6")]
        ips6: Vec<String>,
    },
    /// Release every host port of a task run from a task definition.
    Stop {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// List the tasks run from task definitions.
    Ls {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(client: &Client, cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Run {
            task_def,
            name,
            ips,
            ips6,
        } => {
            validate_task_name(&name)?;
            let text = std::fs::read(&task_def)
                .map_err(|e| Error::io(format!("reading {}", task_def.display()), e))?;
            // The daemon checks all of this too; checking here first means a
            // typo fails without a round trip.
            let def = TaskDefinition::from_json(&text)?;
            let value: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| Error::TaskDefinition(format!("not valid JSON: {e}")))?;
            let mut parsed = BTreeMap::new();
            let mut raw = BTreeMap::new();
            for arg in &ips {
                let (container, ip) = parse_container_ip_arg(arg)?;
                if parsed.insert(container.clone(), ip).is_some() {
                    return Err(Error::DuplicateContainerIpArg(container));
                }
                raw.insert(container, ip.to_string());
            }
            def.container_ips(&parsed)?;
            let mut raw6 = BTreeMap::new();
            for arg in &ips6 {
                let Some((container, ip)) = arg.split_once('=').filter(|(n, _)| !n.is_empty())
                else {
                    return Err(Error::ContainerIpArg(arg.clone()));
                };
                crate::domain::task::parse_container_ip6(ip)?;
                if raw6.insert(container.to_owned(), ip.to_owned()).is_some() {
                    return Err(Error::DuplicateContainerIpArg(container.to_owned()));
                }
            }
            let req = RunTaskRequest {
                name,
                task_definition: value,
                ips: raw,
                ips6: raw6,
            };
            print(&to_json_line(&client.run_task(&req).await?)?)
        }
        TaskCommand::Stop { name } => {
            validate_task_name(&name)?;
            let task = client.stop_task(&name).await?;
            print(&tasks_table(std::slice::from_ref(&task)))
        }
        TaskCommand::Ls { json } => {
            let tasks = client.tasks().await?;
            if json {
                print(&to_json_line(&tasks)?)
            } else {
                print(&tasks_table(&tasks))
            }
        }
    }
}

/// One row per network binding; a range shows as `49200-49210`.
pub fn tasks_table(tasks: &[TaskView]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for task in tasks {
        for c in &task.record.containers {
            let ip = c
                .container_ip
                .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
            for nb in &c.network_bindings {
                let or_range = |port: Option<u16>, range: &Option<String>| {
                    port.map(|p| p.to_string())
                        .or_else(|| range.clone())
                        .unwrap_or_default()
                };
                rows.push(vec![
                    task.name.clone(),
                    c.name.clone(),
                    ip.clone(),
                    nb.bind_ip.to_string(),
                    or_range(nb.host_port, &nb.host_port_range),
                    or_range(nb.container_port, &nb.container_port_range),
                    nb.protocol.as_str().to_owned(),
                ]);
            }
        }
    }
    table(
        &[
            "TASK",
            "CONTAINER",
            "CONTAINER IP",
            "BIND IP",
            "HOST PORT",
            "CONTAINER PORT",
            "PROTO",
        ],
        &rows,
    )
}
