//! The `berth` command line: one clap tree, one dispatcher.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    allocator::DEFAULT_COOLDOWN_SECS,
    api::{AddRequest, RemoveRequest, RunTaskRequest, Stats, TaskView},
    client::Client,
    daemon::{self, DaemonConfig},
    datapath::{AttachMode, DatapathConfig},
    ecs::{parse_container_ip_arg, TaskDefinition},
    error::{Error, Result},
    host::{parse_port_list, SystemHost},
    model::Binding,
    reset::{self, ResetConfig},
    socket::DEFAULT_SOCKET,
    spec::{parse_range, PortRange},
    state::{parse_container_ip, parse_specs, validate_task_name},
};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Publish container ports with eBPF instead of docker-proxy and iptables.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "BERTH_SOCKET", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the datapath and serve the API.
    Daemon(DaemonArgs),
    /// Publish, unpublish and list ports.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show what the daemon has attached where, its maps' fill, its store
    /// and version.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the datapath's packet counters.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run, stop and list tasks from ECS task definitions.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Security groups: stateful allow rules for tasks (AWS semantics).
    #[command(subcommand)]
    Sg(crate::sg_cli::SgCommand),
    /// Print binding added/removed events, one JSON object per line.
    Events {
        /// First print an "added" event for every current binding.
        #[arg(long)]
        existing: bool,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// With the daemon stopped, remove berth's eBPF pins, its state and the
    /// host ports it reserved, leaving the host as before berth.
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The daemon's --state-dir.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The daemon's --bpffs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface where published ports are reached (repeatable).
    #[arg(
        long = "uplink",
        value_name = "IF",
        required_unless_present = "teardown"
    )]
    pub uplinks: Vec<String>,
    /// The containers' bridge (e.g. docker0).
    #[arg(long, value_name = "IF", required_unless_present = "teardown")]
    pub bridge: Option<String>,
    /// Where the desired state (berth.redb) is kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// bpffs mount point; berth pins under <DIR>/berth.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// How the ingress program attaches to the uplinks.
    #[arg(long, value_enum, default_value = "tc")]
    pub attach: AttachMode,
    /// Where dynamic host ports come from [default: the namespace's
    /// net.ipv4.ip_local_port_range].
    #[arg(long, value_name = "A-B", value_parser = parse_dynamic_range)]
    pub dynamic_ports: Option<PortRange>,
    /// Ports never handed out dynamically: comma list, ranges as a-b; ""
    /// for none.
    #[arg(
        long,
        value_name = "LIST",
        value_parser = parse_reserved_ports,
        default_value = "22,2375,2376,51678,51679"
    )]
    pub reserved_ports: BTreeSet<u16>,
    /// Seconds a released host port is not handed out again.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_COOLDOWN_SECS)]
    pub port_cooldown: u64,
    /// Do not run: the same as `berth reset`.
    #[arg(long)]
    pub teardown: bool,
    /// Run without the cgroup socket hooks (no bind guard, no localhost or
    /// hairpin access) instead of refusing to start when they cannot attach.
    #[arg(long)]
    pub no_socket_hooks: bool,
    /// Docker events mode: publish the ports of the containers of the
    /// Docker engine at this socket (dockerd with `--userland-proxy=false`).
    #[arg(
        long,
        value_name = "unix:///PATH",
        num_args = 0..=1,
        default_missing_value = crate::docker_events::DEFAULT_DOCKER_HOST,
        value_parser = crate::docker_events::parse_docker_host
    )]
    pub docker: Option<PathBuf>,
    #[command(flatten)]
    pub capacity: crate::datapath::Capacity,
    #[command(flatten)]
    pub security_groups: crate::sg_cli::SgDaemonArgs,
    #[command(flatten)]
    pub api: crate::limits::ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Publish every container's port mappings of an ECS task definition
    /// (bridge mode) as one task, and print each container's networkBindings
    /// as ECS DescribeTasks shows them (JSON).
    Run {
        /// RegisterTaskDefinition input, DescribeTaskDefinition output, or
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

impl Cli {
    /// The daemon wants a multi-threaded runtime and logs; the rest do not.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Daemon(_))
    }

    pub async fn execute(self) -> Result<()> {
        let client = Client::new(&self.socket);
        match self.command {
            Command::Daemon(args) if args.teardown => {
                let args = ResetArgs {
                    state_dir: args.state_dir,
                    bpffs: args.bpffs,
                };
                run_reset(args, self.socket).await
            }
            Command::Daemon(args) => daemon::run(args.into_config(self.socket)).await,
            Command::Reset(args) => run_reset(args, self.socket).await,
            Command::Task(cmd) => run_task_command(&client, cmd).await,
            Command::Sg(cmd) => crate::sg_cli::run(&client, cmd).await,
            Command::Events { existing, count } => print_events(&client, existing, count).await,
            Command::Map(MapCommand::Add { task, ip, ports }) => {
                // Same checks as the daemon, so typos fail before any I/O.
                validate_task_name(&task)?;
                parse_container_ip(&ip)?;
                parse_specs(&ports)?;
                let req = AddRequest {
                    task,
                    container_ip: ip,
                    ports,
                    held_by_docker: false,
                };
                print(&bindings_table(&client.add(&req).await?))
            }
            Command::Map(MapCommand::Rm { task, ports }) => {
                validate_task_name(&task)?;
                parse_specs(&ports)?;
                let removed = client.remove(&RemoveRequest { task, ports }).await?;
                print(&bindings_table(&removed))
            }
            Command::Map(MapCommand::Ls { json }) => {
                let bindings = client.bindings().await?;
                if json {
                    print(&to_json_line(&bindings)?)
                } else {
                    print(&bindings_table(&bindings))
                }
            }
            Command::Status { json } => {
                let status = client.status().await?;
                if json {
                    print(&to_json_line(&status)?)
                } else {
                    print(&crate::datapath::status::status_text(&status))
                }
            }
            Command::Stats { json } => {
                let stats = client.stats().await?;
                if json {
                    print(&to_json_line(&stats)?)
                } else {
                    print(&stats_table(&stats))
                }
            }
        }
    }
}

impl DaemonArgs {
    fn into_config(self, socket: PathBuf) -> DaemonConfig {
        let mut uplinks: Vec<String> = Vec::new();
        for uplink in self.uplinks {
            if !uplinks.contains(&uplink) {
                uplinks.push(uplink);
            }
        }
        DaemonConfig {
            socket,
            state_dir: self.state_dir,
            datapath: DatapathConfig {
                uplinks,
                bridge: self.bridge.unwrap_or_default(),
                bpffs: self.bpffs,
                attach: self.attach,
                ct_capacity: self.security_groups.ct_max,
                socket_hooks: !self.no_socket_hooks,
                nat_capacity: self.security_groups.nat_max,
                embryonic_capacity: self.security_groups.ct_embryonic_max,
                capacity: self.capacity,
            },
            dynamic_ports: self.dynamic_ports,
            reserved_ports: self.reserved_ports,
            port_cooldown_secs: self.port_cooldown,
            security_groups: self.security_groups.settings(),
            limits: self.api.limits(),
            socket_group: self.api.socket_group,
            docker: self.docker,
        }
    }
}

fn parse_dynamic_range(s: &str) -> std::result::Result<PortRange, String> {
    parse_range(s).map_err(|e| e.to_string())
}

fn parse_reserved_ports(s: &str) -> std::result::Result<BTreeSet<u16>, String> {
    parse_port_list(s)
}

async fn run_reset(args: ResetArgs, socket: PathBuf) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::ResetNotRoot);
    }
    let config = ResetConfig {
        socket,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
    };
    let report = reset::reset(&config, &SystemHost::default()).await?;
    print(&format!("berth reset: {report}\n"))
}

async fn run_task_command(client: &Client, cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Run {
            task_def,
            name,
            ips,
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
            let req = RunTaskRequest {
                name,
                task_definition: value,
                ips: raw,
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

/// Prints events as they come; `count` ends it early.
async fn print_events(client: &Client, existing: bool, count: Option<u64>) -> Result<()> {
    if count == Some(0) {
        return Ok(());
    }
    let mut seen = 0u64;
    let mut failed = None;
    client
        .events(existing, |line| {
            if let Err(err) = print(&format!("{line}\n")) {
                failed = Some(err);
                return false;
            }
            seen += 1;
            count.is_none_or(|n| seen < n)
        })
        .await?;
    match failed {
        Some(err) => Err(err),
        None if count.is_some_and(|n| seen < n) => Err(Error::DaemonProtocol(format!(
            "the daemon ended the event stream after {seen} events"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `berth map ls | head` closing the pipe early is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing to stdout", e))
        }
        _ => Ok(()),
    }
}

pub(crate) fn to_json_line(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map(|s| s + "\n")
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Columns padded to their widest cell, two spaces apart, no trailing
/// spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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

pub fn stats_table(stats: &Stats) -> String {
    let rows: Vec<Vec<String>> = stats
        .counters
        .iter()
        .map(|(name, value)| vec![name.clone(), value.to_string()])
        .collect();
    table(&["COUNTER", "VALUE"], &rows)
}

/// clap's own errors are several lines (message, tip, usage); berth prints
/// one: the message, with the usage line folded in.
pub fn one_line_clap_error(err: &clap::Error) -> String {
    let text = err.render().to_string();
    // The message is the first paragraph (it may list missing arguments on
    // the lines below it); the usage line comes after.
    let message = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    match text.lines().find_map(|l| l.trim().strip_prefix("Usage: ")) {
        Some(usage) => format!("{message} (usage: {usage})"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::model::Protocol;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_flags_and_defaults() {
        let cli = parse(&[
            "daemon", "--uplink", "eth0", "--uplink", "eth1", "--uplink", "eth0", "--bridge",
            "docker0",
        ])
        .unwrap();
        assert!(cli.is_daemon());
        let Command::Daemon(args) = cli.command else {
            panic!()
        };
        let config = args.into_config(cli.socket);
        assert_eq!(config.socket, PathBuf::from("/run/berth/berth.sock"));
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(config.datapath.bpffs, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(config.datapath.attach, AttachMode::Tc);
        assert_eq!(config.datapath.uplinks, ["eth0", "eth1"]);
        assert_eq!(config.datapath.bridge, "docker0");
        assert_eq!(config.dynamic_ports, None, "ip_local_port_range at start");
        assert_eq!(
            config.reserved_ports,
            crate::allocator::DEFAULT_RESERVED_PORTS
                .into_iter()
                .collect()
        );
        assert_eq!(config.port_cooldown_secs, 300);
        assert_eq!(config.limits, crate::limits::ApiLimits::default());
        assert_eq!(config.socket_group, None);
    }

    #[test]
    fn api_limit_flags() {
        let args = daemon_args(&[
            "--socket-group",
            "docker",
            "--max-ports-per-request",
            "100",
            "--max-ports-per-task",
            "200",
            "--max-connections",
            "10",
            "--max-event-subscribers",
            "3",
        ])
        .unwrap();
        let config = args.into_config("/s".into());
        assert_eq!(config.socket_group.as_deref(), Some("docker"));
        assert_eq!(config.limits.ports.per_request, 100);
        assert_eq!(config.limits.ports.per_task, 200);
        assert_eq!(config.limits.max_connections, 10);
        assert_eq!(config.limits.max_event_subscribers, 3);
        for bad in ["--max-ports-per-request=0", "--max-connections=0"] {
            assert!(daemon_args(&[bad]).is_err(), "{bad}");
        }
    }

    fn daemon_args(extra: &[&str]) -> std::result::Result<DaemonArgs, clap::Error> {
        let mut args = vec!["daemon", "--uplink", "eth0", "--bridge", "br0"];
        args.extend(extra);
        let Command::Daemon(args) = parse(&args)?.command else {
            panic!()
        };
        Ok(args)
    }

    #[test]
    fn port_allocation_flags() {
        let args = daemon_args(&[
            "--dynamic-ports",
            "49153-65535",
            "--reserved-ports",
            "22, 8000-8002",
            "--port-cooldown",
            "0",
        ])
        .unwrap();
        let config = args.into_config(PathBuf::from("/s"));
        let policy = config.port_policy().unwrap();
        assert_eq!(
            policy.range,
            PortRange {
                start: 49153,
                end: 65535
            }
        );
        assert_eq!(policy.reserved, [22, 8000, 8001, 8002].into());
        assert_eq!(policy.cooldown_secs, 0);
        let none = daemon_args(&["--reserved-ports", ""]).unwrap();
        assert!(none.reserved_ports.is_empty());
    }

    #[test]
    fn bad_port_allocation_flags_are_one_line() {
        for (flag, value, msg) in [
            (
                "--dynamic-ports",
                "9000-8000",
                "port range 9000-8000 is reversed",
            ),
            ("--dynamic-ports", "0-100", "port 0 is out of range 1-65535"),
            (
                "--reserved-ports",
                "22,ssh",
                "invalid port \"ssh\": not a number",
            ),
            ("--port-cooldown", "soon", "invalid digit"),
        ] {
            let err = daemon_args(&[flag, value]).unwrap_err();
            let line = one_line_clap_error(&err);
            assert!(line.contains(msg), "{flag} {value}: {line}");
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn teardown_and_reset_need_no_interfaces() {
        let Command::Daemon(args) = parse(&["daemon", "--teardown", "--bpffs", "/b"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(args.teardown);
        assert_eq!(args.bpffs, PathBuf::from("/b"));
        let Command::Reset(args) = parse(&["reset", "--state-dir", "/s"]).unwrap().command else {
            panic!()
        };
        assert_eq!(args.state_dir, PathBuf::from("/s"));
        assert_eq!(args.bpffs, PathBuf::from("/sys/fs/bpf"));
        // Without --teardown the daemon still needs them.
        assert!(parse(&["daemon", "--bridge", "br0"]).is_err());
    }

    #[test]
    fn task_and_events_commands_parse() {
        let cli = parse(&[
            "task",
            "run",
            "--task-def",
            "td.json",
            "--name",
            "web-1",
            "--ip",
            "web=172.17.0.2",
            "--ip",
            "db=172.17.0.3",
        ])
        .unwrap();
        let Command::Task(TaskCommand::Run {
            task_def,
            name,
            ips,
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(task_def, PathBuf::from("td.json"));
        assert_eq!(name, "web-1");
        assert_eq!(ips, ["web=172.17.0.2", "db=172.17.0.3"]);
        assert!(matches!(
            parse(&["task", "stop", "web-1"]).unwrap().command,
            Command::Task(TaskCommand::Stop { .. })
        ));
        assert!(matches!(
            parse(&["task", "ls", "--json"]).unwrap().command,
            Command::Task(TaskCommand::Ls { json: true })
        ));
        assert!(matches!(
            parse(&["events", "--count", "3", "--existing"])
                .unwrap()
                .command,
            Command::Events {
                existing: true,
                count: Some(3)
            }
        ));
    }

    async fn run_offline(args: &[String]) -> Error {
        let mut full = vec!["--socket", "/nonexistent/berth.sock"];
        full.extend(args.iter().map(String::as_str));
        parse(&full).unwrap().execute().await.unwrap_err()
    }

    #[tokio::test]
    async fn task_run_checks_the_definition_before_contacting_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let good = write(
            "good.json",
            r#"{"containerDefinitions": [{"name": "web", "portMappings": [{"containerPort": 80}]}]}"#,
        );
        let bad = write("bad.json", "{");
        let host = write(
            "host.json",
            r#"{"networkMode": "host", "containerDefinitions": [{"name": "web"}]}"#,
        );
        let run = |file: String, ips: &[&str]| {
            let mut args: Vec<String> = vec!["task".into(), "run".into(), "--task-def".into()];
            args.extend([file, "--name".into(), "w".into()]);
            for ip in ips {
                args.extend(["--ip".to_owned(), ip.to_string()]);
            }
            args
        };
        let err = run_offline(&run(bad, &["web=172.17.0.2"])).await;
        assert!(
            err.to_string()
                .starts_with("task definition: not valid JSON: "),
            "{err}"
        );
        let err = run_offline(&run(host, &[])).await;
        assert!(err.to_string().contains("networkMode \"host\""), "{err}");
        let err = run_offline(&run(good.clone(), &[])).await;
        assert!(matches!(err, Error::MissingContainerIp(_)), "{err}");
        let err = run_offline(&run(good.clone(), &["web"])).await;
        assert_eq!(err.to_string(), "--ip \"web\": expected CONTAINER=IP");
        let err = run_offline(&run(good.clone(), &["web=172.17.0.2", "web=172.17.0.3"])).await;
        assert_eq!(err.to_string(), "--ip web=...: given twice");
        let err = run_offline(&run(good.clone(), &["web=172.17.0.2"])).await;
        assert!(matches!(err, Error::DaemonUnreachable(_)), "{err}");
        let err = run_offline(&run(
            dir.path().join("none.json").display().to_string(),
            &[],
        ))
        .await;
        assert!(err.to_string().starts_with("reading "), "{err}");
    }

    #[test]
    fn tasks_table_shows_ranges_as_ranges() {
        let view: TaskView = serde_json::from_value(serde_json::json!({
            "name": "shop-1",
            "containers": [
                {"name": "web", "containerIP": "172.17.0.2", "networkBindings": [
                    {"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 49160, "protocol": "tcp"},
                    {"bindIP": "0.0.0.0", "protocol": "udp", "containerPortRange": "8000-8010",
                     "hostPortRange": "49200-49210"}
                ]},
                {"name": "sidecar", "networkBindings": []}
            ]
        }))
        .unwrap();
        assert_eq!(
            tasks_table(&[view]),
            "TASK    CONTAINER  CONTAINER IP  BIND IP  HOST PORT    CONTAINER PORT  PROTO\n\
             shop-1  web        172.17.0.2    0.0.0.0  49160        80              tcp\n\
             shop-1  web        172.17.0.2    0.0.0.0  49200-49210  8000-8010       udp\n"
        );
    }

    #[test]
    fn socket_is_global() {
        let cli = parse(&["map", "ls", "--socket", "/tmp/b.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/b.sock"));
        let cli = parse(&["--socket", "/tmp/c.sock", "stats", "--json"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/c.sock"));
    }

    #[test]
    fn map_add_takes_repeated_publish_flags() {
        let cli = parse(&[
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:80",
            "--publish",
            "53:53/udp",
        ])
        .unwrap();
        let Command::Map(MapCommand::Add { task, ip, ports }) = cli.command else {
            panic!()
        };
        assert_eq!((task.as_str(), ip.as_str()), ("web", "172.17.0.2"));
        assert_eq!(ports, ["8080:80", "53:53/udp"]);
    }

    #[test]
    fn map_add_needs_a_port_and_says_so_in_one_line() {
        let err = parse(&["map", "add", "--task", "web", "--ip", "172.17.0.2"]).unwrap_err();
        let line = one_line_clap_error(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with(
                "the following required arguments were not provided: --publish <SPEC> (usage: "
            ),
            "{line}"
        );
        assert!(line.contains("(usage: berth map add"), "{line}");
    }

    #[test]
    fn attach_mode_accepts_xdp() {
        let cli = parse(&[
            "daemon", "--uplink", "eth0", "--bridge", "br0", "--attach", "xdp",
        ])
        .unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.attach, AttachMode::Xdp);
    }

    #[tokio::test]
    async fn bad_spec_fails_locally_before_contacting_the_daemon() {
        // The socket does not exist: reaching it would be a different error.
        let cli = parse(&[
            "--socket",
            "/nonexistent/berth.sock",
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:80/sctp",
        ])
        .unwrap();
        let err = cli.execute().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "port spec \"8080:80/sctp\": unknown protocol \"sctp\"; use tcp or udp"
        );
        let cli = parse(&["--socket", "/nonexistent/berth.sock", "map", "ls"]).unwrap();
        let err = cli.execute().await.unwrap_err();
        assert!(matches!(err, Error::DaemonUnreachable(_)), "{err}");
    }

    #[test]
    fn bindings_table_aligns_columns() {
        let b = Binding {
            task: "web".into(),
            container_ip: "172.17.0.2".parse().unwrap(),
            bind_ip: "0.0.0.0".parse().unwrap(),
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(
            bindings_table(&[b]),
            "TASK  CONTAINER IP  BIND IP  HOST PORT  CONTAINER PORT  PROTO\n\
             web   172.17.0.2    0.0.0.0  8080       80              tcp\n"
        );
        assert_eq!(
            bindings_table(&[]),
            "TASK  CONTAINER IP  BIND IP  HOST PORT  CONTAINER PORT  PROTO\n"
        );
    }

    #[test]
    fn stats_table_lists_counters_by_name() {
        let mut stats = Stats::default();
        stats.counters.insert("passed".into(), 12);
        stats.counters.insert("dnat".into(), 3);
        assert_eq!(
            stats_table(&stats),
            "COUNTER  VALUE\ndnat     3\npassed   12\n"
        );
    }
}
