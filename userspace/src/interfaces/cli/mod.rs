//! The `berth` command line: one clap tree, one dispatcher, and a module
//! per command group (as bpfman's `cli/`); `output` prints and tabulates.
pub mod daemon;
pub mod events;
pub mod log;
pub mod map;
pub mod output;
pub mod reset;
pub mod sg;
pub mod status;
pub mod task;
pub mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use self::{daemon::DaemonArgs, map::MapCommand, reset::ResetArgs, task::TaskCommand};
use crate::{adapters::socket::DEFAULT_SOCKET, domain::error::Result, interfaces::client::Client};

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
    /// Show the datapath's packet counters, or one task's per-binding
    /// counters.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show this task's bindings with their counters.
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
    },
    /// Live rates of tasks and bindings (packets/s, bit/s, new flows/s,
    /// refusals, drops), refreshed like `docker stats`.
    Top {
        /// Print one table (rates over one --interval) and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between samples.
        #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// Run, stop and list tasks from ECS task definitions.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Security groups: stateful allow rules for tasks (AWS semantics).
    #[command(subcommand)]
    Sg(sg::SgCommand),
    /// Print binding added/removed events, one JSON object per line.
    Events {
        /// First print an "added" event for every current binding.
        #[arg(long)]
        existing: bool,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Turn the datapath log on or off while the daemon runs.
    Log(log::LogArgs),
    /// With the daemon stopped, remove berth's eBPF pins, its state and the
    /// host ports it reserved, leaving the host as before berth.
    Reset(ResetArgs),
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
                reset::run(args, self.socket).await
            }
            Command::Daemon(args) => {
                crate::interfaces::daemon::run(args.into_config(self.socket)).await
            }
            Command::Reset(args) => reset::run(args, self.socket).await,
            Command::Task(cmd) => task::run(&client, cmd).await,
            Command::Sg(cmd) => sg::run(&client, cmd).await,
            Command::Events { existing, count } => events::run(&client, existing, count).await,
            Command::Map(cmd) => map::run(&client, cmd).await,
            Command::Status { json } => status::run_status(&client, json).await,
            Command::Stats { json, task: None } => status::run_stats(&client, json).await,
            Command::Stats {
                json,
                task: Some(t),
            } => top::run_task_stats(&client, &t, json).await,
            Command::Top { once, interval } => {
                top::run_top(&client, once, std::time::Duration::from_secs_f64(interval)).await
            }
            Command::Log(args) => log::run(&client, args).await,
        }
    }
}

fn parse_interval(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
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
    use clap::CommandFactory as _;

    use super::{map::bindings_table, status::stats_table, task::tasks_table, *};
    use crate::{
        adapters::datapath::AttachMode,
        domain::{
            error::Error,
            model::{Binding, Protocol},
            spec::PortRange,
        },
        interfaces::api::{Stats, TaskView},
    };

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn metrics_flags_parse_and_bad_ones_are_one_line() {
        let cli = parse(&["top", "--once", "--interval", "0.5"]).unwrap();
        assert!(matches!(cli.command, Command::Top { once: true, interval } if interval == 0.5));
        let cli = parse(&["stats", "--task", "web", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Stats { json: true, task: Some(t) } if t == "web"));
        let cli = parse(&["map", "ls", "--stats", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Map(MapCommand::Ls {
                json: true,
                stats: true
            })
        ));
        for (args, want) in [
            (
                &["top", "--interval", "0"][..],
                "\"0\" is not a number of seconds from 0.1 to 3600",
            ),
            (
                &[
                    "daemon",
                    "--uplink",
                    "u",
                    "--bridge",
                    "b",
                    "--metrics-listen",
                    ":9475",
                ][..],
                "\":9475\" is not an IP address and port",
            ),
        ] {
            let err = one_line_clap_error(&parse(args).unwrap_err());
            assert!(err.contains(want), "{err}");
            assert_eq!(err.lines().count(), 1);
        }
        let Command::Daemon(d) = parse(&[
            "daemon",
            "--uplink",
            "u",
            "--bridge",
            "b",
            "--metrics-listen",
            "[::1]:9475",
            "--metrics-per-binding=false",
        ])
        .unwrap()
        .command
        else {
            panic!("daemon")
        };
        let c = d.into_config("/s".into());
        assert_eq!(c.metrics.listen, Some("[::1]:9475".parse().unwrap()));
        assert!(!c.metrics.per_binding);
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
        assert_eq!(config.datapath.bridges, ["docker0"]);
        assert_eq!(config.dynamic_ports, None, "ip_local_port_range at start");
        assert_eq!(
            config.reserved_ports,
            crate::engine::allocator::DEFAULT_RESERVED_PORTS
                .into_iter()
                .collect()
        );
        assert_eq!(config.port_cooldown_secs, 300);
        assert_eq!(config.limits, crate::domain::limits::ApiLimits::default());
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
        parse(&["daemon", "--bridge", "br0"]).unwrap_err();
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
            ..
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
        let Command::Map(MapCommand::Add {
            task, ip, ports, ..
        }) = cli.command
        else {
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
            ecs: Default::default(),
            cni: None,
            docker_events: false,
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
