//! `berth sg ...` and the daemon's security-group flags.
use clap::{ArgGroup, Args, Subcommand};

use crate::{
    adapters::datapath::FlowTimeouts,
    domain::error::Result,
    domain::rules::{self as sg, Direction, RuleSpec, DEFAULT_MAX_SGS_PER_TASK},
    domain::task::validate_task_name,
    engine::sg_book::{SgSettings, SgView},
    interfaces::api::sg::CreateSgRequest,
    interfaces::cli::output::{print, table, to_json_line},
    interfaces::client::Client,
};

#[derive(Debug, Subcommand)]
pub enum SgCommand {
    /// Create a security group: no ingress rules, all egress allowed.
    Create {
        #[arg(value_name = "NAME")]
        name: String,
        /// At most 255 characters.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
    },
    /// Remove a security group (refused while it is attached to a task or
    /// named by another group's rule).
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Add or remove an allow rule.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Attach a security group to a task: the task's rules become the union
    /// of its groups' rules.
    Attach {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "TASK")]
        task: String,
    },
    /// Detach a security group from a task (a task with none is open).
    Detach {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "TASK")]
        task: String,
    },
    /// List security groups.
    Ls {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a security group: rules, tasks, member IPs, drop counters.
    Show {
        #[arg(value_name = "NAME")]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add an allow rule.
    Add(RuleArgs),
    /// Remove the rule with these fields (the description is not compared).
    Rm(RuleArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("direction").required(true).args(["ingress", "egress"])))]
#[command(group(ArgGroup::new("peer").required(true).args(["cidr", "sg"])))]
pub struct RuleArgs {
    /// The group the rule belongs to.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Traffic to the group's tasks.
    #[arg(long)]
    pub ingress: bool,
    /// Traffic from the group's tasks.
    #[arg(long)]
    pub egress: bool,
    /// A protocol by name, or any other by its number 1-254 (`47`: GRE),
    /// which allows all of it (no ports).
    #[arg(
        long,
        visible_alias = "protocol",
        value_name = "tcp|udp|icmp|icmpv6|all|N"
    )]
    pub proto: String,
    /// Destination port or range (tcp and udp).
    #[arg(long, value_name = "P|P-Q")]
    pub port: Option<String>,
    /// ICMP type, -1 for any [default: -1].
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub icmp_type: Option<i64>,
    /// ICMP code, -1 for any [default: -1].
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    pub icmp_code: Option<i64>,
    /// Peer addresses: a canonical CIDR such as 10.0.0.0/8, or an IPv6
    /// one such as `2001:db8::/32` or `::/0` (each matches its own family).
    #[arg(long, value_name = "CIDR")]
    pub cidr: Option<String>,
    /// Peer group: the container IPs of the tasks it is attached to (may be
    /// the group itself).
    #[arg(long, value_name = "GROUP")]
    pub sg: Option<String>,
    /// At most 255 characters.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
}

impl RuleArgs {
    /// The group and the rule, checked as the daemon checks them.
    pub fn into_spec(self) -> Result<(String, RuleSpec)> {
        sg::validate_name(&self.name)?;
        let spec = RuleSpec {
            direction: if self.ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            protocol: self.proto,
            port: self.port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            cidr: self.cidr,
            sg: self.sg,
            description: self.description,
        };
        spec.parse()?;
        Ok((self.name, spec))
    }
}

/// `berth daemon` flags for security groups and connection tracking.
#[derive(Debug, Args)]
pub struct SgDaemonArgs {
    /// Security group for tasks that have none (created if missing, with no
    /// ingress rules); without it such tasks are open, as with Docker.
    #[arg(long, value_name = "NAME", value_parser = parse_sg_name)]
    pub default_sg: Option<String>,
    /// Most security groups one task may have (1-16).
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_SGS_PER_TASK,
        value_parser = clap::value_parser!(u8).range(1..=16)
    )]
    pub max_sgs_per_task: u8,
    /// Idle timeout of an established TCP flow, seconds (60-432000).
    #[arg(long, value_name = "SECS", value_parser = seconds(60))]
    #[arg(default_value_t = berth_maps::TIMEOUT_TCP_ESTABLISHED_S)]
    pub ct_tcp_timeout: u64,
    /// Idle timeout of a TCP flow whose handshake has not completed (SYN
    /// seen, the client's ACK of the SYN-ACK not yet), seconds (1-432000).
    #[arg(long, value_name = "SECS", value_parser = seconds(1))]
    #[arg(default_value_t = berth_maps::TIMEOUT_TCP_SYN_S)]
    pub ct_tcp_syn_timeout: u64,
    /// Idle timeout of a UDP flow with no answer yet, seconds (1-432000).
    #[arg(long, value_name = "SECS", value_parser = seconds(1))]
    #[arg(default_value_t = berth_maps::TIMEOUT_UDP_SINGLE_S)]
    pub ct_udp_timeout: u64,
    /// Idle timeout of an answered UDP flow, seconds (1-432000).
    #[arg(long, value_name = "SECS", value_parser = seconds(1))]
    #[arg(default_value_t = berth_maps::TIMEOUT_UDP_STREAM_S)]
    pub ct_udp_stream_timeout: u64,
    /// Idle timeout of an ICMP echo flow, seconds (1-432000).
    #[arg(long, value_name = "SECS", value_parser = seconds(1))]
    #[arg(default_value_t = berth_maps::TIMEOUT_ICMP_S)]
    pub ct_icmp_timeout: u64,
    /// Capacity of the security-group connection-tracking table
    /// [default: --max-flows]. When it is full new flows are refused and counted
    /// (`ct_table_full`); established ones are never evicted. A pinned table
    /// of another size is resized at start, its flows kept (refused when
    /// they do not fit).
    #[arg(long, value_name = "N", value_parser = table_capacity())]
    pub ct_max: Option<u32>,
    /// Capacity of the table of established published-port flows (and of
    /// the table of clash-remapped client ports) [default: --max-flows]. When it
    /// is full, flows completing their handshake are refused and counted
    /// (`nat_table_full`); established ones are never evicted. A pinned table
    /// of another size is resized at start, its flows kept (refused when
    /// they do not fit).
    #[arg(long, value_name = "N", value_parser = table_capacity())]
    pub nat_max: Option<u32>,
    /// Capacity of each table of not yet established flows (published ports
    /// and security groups) [default: an eighth of --max-flows]. These are LRU tables: a new
    /// flow is never refused; the least recently used unestablished flow
    /// makes room. A pinned table of another size is resized at start
    /// (made smaller than its fill, it keeps what fits).
    #[arg(long, value_name = "N", value_parser = table_capacity())]
    pub ct_embryonic_max: Option<u32>,
}

impl SgDaemonArgs {
    pub fn settings(&self) -> SgSettings {
        SgSettings {
            max_per_task: self.max_sgs_per_task,
            default_sg: self.default_sg.clone(),
            timeouts: FlowTimeouts {
                tcp_established: self.ct_tcp_timeout,
                tcp_syn: self.ct_tcp_syn_timeout,
                udp_single: self.ct_udp_timeout,
                udp_stream: self.ct_udp_stream_timeout,
                icmp: self.ct_icmp_timeout,
                ..FlowTimeouts::default()
            },
        }
    }
}

/// A `--ct-*-timeout`: `min` seconds up to the longest the datapath keeps
/// an idle flow.
fn seconds(min: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(min..=berth_maps::TIMEOUT_MAX_S)
}

/// A table's capacity: at least one entry, at most 2^24.
fn table_capacity() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=16_777_216)
}

fn parse_sg_name(s: &str) -> std::result::Result<String, String> {
    sg::validate_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

pub async fn run(client: &Client, cmd: SgCommand) -> Result<()> {
    match cmd {
        SgCommand::Create { name, description } => {
            sg::validate_name(&name)?;
            sg::validate_description(&description)?;
            let view = client
                .sg_create(&CreateSgRequest { name, description })
                .await?;
            print(&show_text(&view))
        }
        SgCommand::Rm { name } => {
            sg::validate_name(&name)?;
            print(&ls_table(&[client.sg_remove(&name).await?]))
        }
        SgCommand::Rule(RuleCommand::Add(args)) => {
            let (name, spec) = args.into_spec()?;
            print(&show_text(&client.sg_add_rule(&name, &spec).await?))
        }
        SgCommand::Rule(RuleCommand::Rm(args)) => {
            let (name, spec) = args.into_spec()?;
            print(&show_text(&client.sg_remove_rule(&name, &spec).await?))
        }
        SgCommand::Attach { name, task } => {
            sg::validate_name(&name)?;
            validate_task_name(&task)?;
            print(&show_text(&client.sg_attach(&name, &task).await?))
        }
        SgCommand::Detach { name, task } => {
            sg::validate_name(&name)?;
            validate_task_name(&task)?;
            print(&show_text(&client.sg_detach(&name, &task).await?))
        }
        SgCommand::Ls { json } => {
            let groups = client.sg_list().await?;
            if json {
                print(&to_json_line(&groups)?)
            } else {
                print(&ls_table(&groups))
            }
        }
        SgCommand::Show { name, json } => {
            sg::validate_name(&name)?;
            let view = client.sg_show(&name).await?;
            if json {
                print(&to_json_line(&view)?)
            } else {
                print(&show_text(&view))
            }
        }
    }
}

fn or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// One row per group; the daemon's `--default-sg` is marked.
pub fn ls_table(groups: &[SgView]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let name = if g.default {
                format!("{} (default)", g.name)
            } else {
                g.name.clone()
            };
            vec![
                name,
                g.id.to_string(),
                g.ingress.len().to_string(),
                g.egress.len().to_string(),
                or_dash(&g.tasks).replace(", ", ","),
                (g.members.len() + g.members6.len()).to_string(),
                g.description.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ID",
            "INGRESS",
            "EGRESS",
            "TASKS",
            "MEMBERS",
            "DESCRIPTION",
        ],
        &rows,
    )
}

/// The ports column: `80`, `8000-8010`, ICMP `8` or `3/4` (type/code),
/// `any`, `all`.
fn ports_cell(r: &RuleSpec) -> String {
    if let Some(p) = &r.port {
        return p.clone();
    }
    if r.protocol == "icmp" || r.protocol == "icmpv6" {
        let t = r.icmp_type.filter(|t| *t >= 0);
        let c = r.icmp_code.filter(|c| *c >= 0);
        return match (t, c) {
            (None, _) => "any".to_owned(),
            (Some(t), None) => t.to_string(),
            (Some(t), Some(c)) => format!("{t}/{c}"),
        };
    }
    "all".to_owned()
}

pub fn rules_table(rules: &[&RuleSpec]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let peer = match (&r.cidr, &r.sg) {
                (Some(c), _) => c.clone(),
                (_, Some(g)) => format!("sg:{g}"),
                _ => "-".to_owned(),
            };
            vec![
                r.direction.to_string(),
                r.protocol.clone(),
                ports_cell(r),
                peer,
                r.description.clone(),
            ]
        })
        .collect();
    table(
        &["DIRECTION", "PROTO", "PORTS", "PEER", "DESCRIPTION"],
        &rows,
    )
}

pub fn show_text(g: &SgView) -> String {
    let members: Vec<String> = g
        .members
        .iter()
        .map(ToString::to_string)
        .chain(g.members6.iter().map(ToString::to_string))
        .collect();
    let mut fields = vec![
        ("name", g.name.clone()),
        ("id", g.id.to_string()),
        ("description", g.description.clone()),
    ];
    if g.default {
        fields.push((
            "default",
            format!(
                "yes, for tasks without groups: {}",
                or_dash(&g.default_tasks)
            ),
        ));
    }
    fields.push(("tasks", or_dash(&g.tasks)));
    fields.push(("members", or_dash(&members)));
    let mut out = String::new();
    for (k, v) in fields {
        let line = format!("{:<13}{v}", format!("{k}:"));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push('\n');
    let rules: Vec<&RuleSpec> = g.ingress.iter().chain(&g.egress).collect();
    out.push_str(&rules_table(&rules));
    if let Some(counters) = &g.host_counters {
        let list: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "\nhost-wide drop counters (every task, not only this group's): {}\n",
            list.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::interfaces::cli::{one_line_clap_error, Cli, Command};

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    fn rule(args: &[&str]) -> std::result::Result<RuleArgs, String> {
        let mut full = vec!["sg", "rule", "add"];
        full.extend(args);
        match parse(&full) {
            Ok(Cli {
                command: Command::Sg(SgCommand::Rule(RuleCommand::Add(a))),
                ..
            }) => Ok(a),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(one_line_clap_error(&e)),
        }
    }

    #[test]
    fn rule_flags_make_a_spec() {
        let a = rule(&[
            "db",
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "5432",
            "--sg",
            "api",
        ])
        .unwrap();
        let (name, spec) = a.into_spec().unwrap();
        assert_eq!(name, "db");
        assert_eq!(spec.direction, Direction::Ingress);
        assert_eq!(spec.sg.as_deref(), Some("api"));
        let a = rule(&[
            "db",
            "--egress",
            "--proto",
            "icmp",
            "--icmp-type",
            "-1",
            "--icmp-code",
            "-1",
            "--cidr",
            "0.0.0.0/0",
        ])
        .unwrap();
        let (_, spec) = a.into_spec().unwrap();
        assert_eq!(spec.icmp_type, Some(-1));
    }

    #[test]
    fn direction_and_peer_are_exactly_one_each() {
        let e = rule(&["db", "--proto", "all", "--cidr", "0.0.0.0/0"]).unwrap_err();
        assert!(e.contains("--ingress") && !e.contains('\n'), "{e}");
        let e = rule(&[
            "db",
            "--ingress",
            "--egress",
            "--proto",
            "all",
            "--cidr",
            "0.0.0.0/0",
        ])
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = rule(&["db", "--ingress", "--proto", "all"]).unwrap_err();
        assert!(e.contains("--cidr"), "{e}");
        let e = rule(&[
            "db",
            "--ingress",
            "--proto",
            "all",
            "--cidr",
            "0.0.0.0/0",
            "--sg",
            "x",
        ])
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn bad_fields_fail_before_contacting_the_daemon() {
        let a = rule(&[
            "db",
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "90-80",
            "--cidr",
            "0.0.0.0/0",
        ])
        .unwrap();
        assert_eq!(
            a.into_spec().unwrap_err().to_string(),
            "port range 90-80 is reversed"
        );
        let a = rule(&[
            "db",
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "80",
            "--cidr",
            "10.0.0.1/8",
        ])
        .unwrap();
        assert!(a
            .into_spec()
            .unwrap_err()
            .to_string()
            .ends_with("did you mean 10.0.0.0/8?"));
    }

    fn daemon(extra: &[&str]) -> std::result::Result<SgDaemonArgs, String> {
        let mut args = vec!["daemon", "--uplink", "eth0", "--bridge", "br0"];
        args.extend(extra);
        match parse(&args) {
            Ok(Cli {
                command: Command::Daemon(d),
                ..
            }) => Ok(d.security_groups),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(one_line_clap_error(&e)),
        }
    }

    #[test]
    fn daemon_flags_and_their_ranges() {
        let d = daemon(&[]).unwrap();
        assert_eq!(d.settings(), SgSettings::default());
        assert_eq!(d.ct_max, None);
        let d = daemon(&[
            "--default-sg",
            "base",
            "--max-sgs-per-task",
            "16",
            "--ct-tcp-timeout",
            "60",
            "--ct-udp-timeout",
            "2",
            "--ct-udp-stream-timeout",
            "5",
            "--ct-icmp-timeout",
            "7",
            "--ct-max",
            "8",
            "--ct-tcp-syn-timeout",
            "3",
            "--nat-max",
            "9",
            "--ct-embryonic-max",
            "10",
        ])
        .unwrap();
        let s = d.settings();
        assert_eq!(s.default_sg.as_deref(), Some("base"));
        assert_eq!(s.max_per_task, 16);
        assert_eq!(
            (
                s.timeouts.tcp_established,
                s.timeouts.udp_single,
                s.timeouts.udp_stream,
                s.timeouts.icmp
            ),
            (60, 2, 5, 7)
        );
        assert_eq!(d.ct_max, Some(8));
        assert_eq!(s.timeouts.tcp_syn, 3);
        assert_eq!((d.nat_max, d.ct_embryonic_max), (Some(9), Some(10)));
        for (flag, value) in [
            ("--max-sgs-per-task", "0"),
            ("--max-sgs-per-task", "17"),
            ("--ct-tcp-timeout", "59"),
            ("--ct-tcp-timeout", "432001"),
            ("--ct-udp-timeout", "0"),
            ("--ct-max", "0"),
            ("--ct-tcp-syn-timeout", "0"),
            ("--nat-max", "0"),
            ("--ct-embryonic-max", "0"),
            ("--default-sg", "a b"),
        ] {
            let e = daemon(&[flag, value]).unwrap_err();
            assert!(e.contains(flag) && !e.contains('\n'), "{flag} {value}: {e}");
        }
    }

    fn view() -> SgView {
        SgView {
            name: "db".into(),
            id: 2,
            description: "database".into(),
            ingress: vec![
                RuleSpec {
                    direction: Direction::Ingress,
                    protocol: "tcp".into(),
                    port: Some("5432".into()),
                    icmp_type: None,
                    icmp_code: None,
                    cidr: None,
                    sg: Some("api".into()),
                    description: "from the API".into(),
                },
                RuleSpec {
                    direction: Direction::Ingress,
                    protocol: "icmp".into(),
                    port: None,
                    icmp_type: Some(8),
                    icmp_code: Some(-1),
                    cidr: Some("10.0.0.0/8".into()),
                    sg: None,
                    description: String::new(),
                },
            ],
            egress: vec![sg::Rule::allow_all_out().spec(Direction::Egress)],
            tasks: vec!["pg".into()],
            default: false,
            default_tasks: vec![],
            members: vec!["172.17.0.3".parse().unwrap()],
            members6: vec![],
            host_counters: Some(
                [
                    ("ct_table_full".to_owned(), 0),
                    ("policy_denied_ingress".to_owned(), 3),
                ]
                .into(),
            ),
        }
    }

    #[test]
    fn show_prints_rules_and_says_counters_are_host_wide() {
        assert_eq!(
            show_text(&view()),
            "name:        db\n\
             id:          2\n\
             description: database\n\
             tasks:       pg\n\
             members:     172.17.0.3\n\
             \n\
             DIRECTION  PROTO  PORTS  PEER        DESCRIPTION\n\
             ingress    tcp    5432   sg:api      from the API\n\
             ingress    icmp   8      10.0.0.0/8\n\
             egress     all    all    0.0.0.0/0\n\
             \n\
             host-wide drop counters (every task, not only this group's): \
             ct_table_full=0 policy_denied_ingress=3\n"
        );
    }

    #[test]
    fn ls_marks_the_default_group() {
        let mut v = view();
        v.default = true;
        v.host_counters = None;
        assert_eq!(
            ls_table(&[v]),
            "NAME          ID  INGRESS  EGRESS  TASKS  MEMBERS  DESCRIPTION\n\
             db (default)  2   2        1       pg     1        database\n"
        );
    }
}
