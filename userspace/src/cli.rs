//! The `berth` command line: one clap tree, one dispatcher.
use std::{io::Write, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::{AddRequest, RemoveRequest, Stats},
    client::Client,
    daemon::{self, DaemonConfig},
    datapath::{AttachMode, DatapathConfig},
    error::{Error, Result},
    model::Binding,
    socket::DEFAULT_SOCKET,
    state::{parse_container_ip, parse_specs, validate_task_name},
};

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
    /// Show the datapath's packet counters.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface where published ports are reached (repeatable).
    #[arg(long = "uplink", value_name = "IF", required = true)]
    pub uplinks: Vec<String>,
    /// The containers' bridge (e.g. docker0).
    #[arg(long, value_name = "IF")]
    pub bridge: String,
    /// Where the desired state (berth.redb) is kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,
    /// bpffs mount point; berth pins under <DIR>/berth.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// How the ingress program attaches to the uplinks.
    #[arg(long, value_enum, default_value = "tc")]
    pub attach: AttachMode,
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
        /// [hostIP:]hostPort:containerPort[/tcp|/udp], ports may be ranges.
        #[arg(short = 'p', long = "publish", value_name = "SPEC", required = true)]
        ports: Vec<String>,
    },
    /// Unpublish the given ports of a task, or all of them.
    Rm {
        #[arg(long, value_name = "NAME")]
        task: String,
        /// Spec to unpublish (repeatable); none means every port of the task.
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
            Command::Daemon(args) => daemon::run(args.into_config(self.socket)).await,
            Command::Map(MapCommand::Add { task, ip, ports }) => {
                // Same checks as the daemon, so typos fail before any I/O.
                validate_task_name(&task)?;
                parse_container_ip(&ip)?;
                parse_specs(&ports)?;
                let req = AddRequest {
                    task,
                    container_ip: ip,
                    ports,
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
                bridge: self.bridge,
                bpffs: self.bpffs,
                attach: self.attach,
            },
        }
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `berth map ls | head` closing the pipe early is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing to stdout", e))
        }
        _ => Ok(()),
    }
}

fn to_json_line(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map(|s| s + "\n")
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Columns padded to their widest cell, two spaces apart, no trailing
/// spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
