//! `berth status` and `berth stats`: what the daemon has attached, and its
//! packet counters.
use std::fmt::Write as _;

use super::output::{print, table, to_json_line};
use crate::{
    domain::error::Result,
    engine::datapath::AttachMode,
    interfaces::{
        api::{DockerStatus, Stats, StatusView},
        client::Client,
    },
};

pub async fn run_status(client: &Client, json: bool) -> Result<()> {
    let status = client.status().await?;
    if json {
        print(&to_json_line(&status)?)
    } else {
        print(&status_text(&status))
    }
}

pub async fn run_stats(client: &Client, json: bool) -> Result<()> {
    let stats = client.stats().await?;
    if json {
        print(&to_json_line(&stats)?)
    } else {
        print(&stats_table(&stats))
    }
}

pub fn stats_table(stats: &Stats) -> String {
    let rows: Vec<Vec<String>> = stats
        .counters
        .iter()
        .map(|(name, value)| vec![name.clone(), value.to_string()])
        .collect();
    table(&["COUNTER", "VALUE"], &rows)
}

/// Docker events mode in one line: the socket, whether berth follows it
/// (since when, and the last error while it does not), what it publishes.
fn docker_line(d: &DockerStatus) -> String {
    let state = match (d.connected, &d.last_error) {
        (true, _) => format!("connected since {}", d.since),
        (false, Some(e)) => format!("not connected since {} (last error: {e})", d.since),
        (false, None) => format!("not connected yet (since {})", d.since),
    };
    let plural = |n: usize, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    let clashes = if d.clashes.is_empty() {
        String::new()
    } else {
        format!(
            "; {} not published, task name taken ({})",
            plural(d.clashes.len(), "container"),
            d.clashes.join(", ")
        )
    };
    format!(
        "{} {state}; publishing {} as {}{clashes}",
        d.socket,
        plural(d.containers, "container"),
        plural(d.tasks, "task")
    )
}

/// One `--bridge`: attached (with its subnets and hooked ports), waiting
/// for the link to be created, or why it failed.
fn bridge_line(b: &crate::engine::datapath::BridgeState) -> String {
    match (b.state.as_str(), &b.detail) {
        ("attached", _) => {
            let nets = if b.subnets.is_empty() {
                "no IPv4 address yet".to_owned()
            } else {
                b.subnets.join(" ")
            };
            let ports = if b.ports == 1 { "port" } else { "ports" };
            format!(
                "{} attached (ifindex {}; {nets}; {} {ports})",
                b.name, b.ifindex, b.ports
            )
        }
        ("waiting", _) => format!("{} waiting (does not exist yet)", b.name),
        (state, Some(why)) => format!("{} {state}: {why}", b.name),
        (state, None) => format!("{} {state}", b.name),
    }
}

/// The host's addresses against the host address tables, and what a full
/// table left out.
fn host_addrs_line(h: &crate::engine::datapath::HostAddrsFill) -> String {
    let mut line = format!(
        "IPv4 {}, IPv6 {} (tables of {})",
        h.ipv4, h.ipv6, h.capacity
    );
    let full: Vec<String> = [("IPv4", h.ipv4_left_out), ("IPv6", h.ipv6_left_out)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(family, n)| format!("{n} {family}"))
        .collect();
    if !full.is_empty() {
        let _ = write!(
            line,
            "; FULL, left out: {} (link-local ones first); start the daemon with a larger --max-host-addrs",
            full.join(", ")
        );
    }
    line
}

/// The human form of [`StatusView`].
pub fn status_text(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "daemon     berth {} (pid {})", s.version, s.pid);
    let _ = writeln!(out, "socket     {}", s.socket);
    let _ = writeln!(out, "store      {}", s.store);
    if let Some(d) = &s.docker {
        let _ = writeln!(out, "docker     {}", docker_line(d));
    }
    let Some(d) = &s.datapath else {
        let _ = writeln!(out, "datapath   none (in-memory)");
        return out;
    };
    let attach = match d.attach {
        AttachMode::Tc => "tc",
        AttachMode::Xdp => "xdp",
    };
    let _ = writeln!(out, "attach     {attach}");
    let _ = writeln!(
        out,
        "pins       {} (layout {})",
        d.pin_dir, d.layout_version
    );
    for m in &d.migrated {
        let _ = writeln!(out, "migrated   {m}");
    }
    let hooks = &d.socket_hooks;
    match (&hooks.cgroup, &hooks.disabled_by) {
        (Some(cg), _) if hooks.enabled => {
            let how = if cg.private_mount {
                "hierarchy mounted privately; none was visible".to_owned()
            } else {
                format!("opened at {}", cg.opened_at)
            };
            let _ = writeln!(out, "cgroup     {} ({how})", cg.cgroup);
        }
        (_, Some(why)) => {
            let _ = writeln!(
                out,
                "cgroup     socket hooks off ({why}): no bind guard, localhost or hairpin access"
            );
        }
        _ => {
            let _ = writeln!(out, "cgroup     socket hooks off");
        }
    }
    for b in &d.bridges {
        let _ = writeln!(out, "bridge     {}", bridge_line(b));
    }
    if d.host_addrs.capacity > 0 {
        let _ = writeln!(out, "host addrs {}", host_addrs_line(&d.host_addrs));
    }
    let tw = d
        .attachments
        .iter()
        .map(|a| a.target.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let _ = writeln!(
        out,
        "\n{:<12} {:<tw$} {:<17} {:<20} {:>6} {:>6}",
        "ROLE", "TARGET", "PROGRAM", "HOOK", "LINK", "PROG"
    );
    for a in &d.attachments {
        let state = if a.attached { "" } else { "  (detached)" };
        let _ = writeln!(
            out,
            "{:<12} {:<tw$} {:<17} {:<20} {:>6} {:>6}{state}",
            a.role, a.target, a.program, a.hook, a.link_id, a.program_id
        );
    }
    let _ = writeln!(
        out,
        "\nMAP                TYPE          KEY  VALUE  CAPACITY  ENTRIES"
    );
    for m in &d.maps {
        let entries = m.entries.map_or("-".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:<18} {:<13} {:>3}  {:>5}  {:>8}  {:>7}",
            m.name, m.map_type, m.key_size, m.value_size, m.capacity, entries
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::datapath::{Attachment, DatapathStatus, MapStatus, SocketHooks};

    fn view() -> StatusView {
        StatusView {
            version: "0.1.0".into(),
            pid: 42,
            socket: "/run/berth/berth.sock".into(),
            store: "/var/lib/berth/berth.redb".into(),
            datapath: Some(DatapathStatus {
                attach: AttachMode::Tc,
                pin_dir: "/sys/fs/bpf/berth".into(),
                layout_version: 2,
                migrated: vec!["BERTH_CT: capacity 1024 -> 262144 (3 entries kept)".into()],
                socket_hooks: SocketHooks {
                    enabled: false,
                    cgroup: None,
                    disabled_by: Some("--no-socket-hooks".into()),
                },
                attachments: vec![Attachment {
                    role: "bridge port".into(),
                    target: "veth1".into(),
                    program: "berth_to_ctr".into(),
                    hook: "tc egress (tcx)".into(),
                    link_id: 7,
                    program_id: 9,
                    attached: false,
                    pin: "/sys/fs/bpf/berth/links/berth_to_ctr@veth1".into(),
                }],
                maps: vec![MapStatus {
                    name: "BERTH_SERVICES".into(),
                    map_type: "hash".into(),
                    key_size: 8,
                    value_size: 8,
                    capacity: 131_072,
                    entries: Some(3),
                    pin: "/sys/fs/bpf/berth/BERTH_SERVICES".into(),
                }],
                bridges: Vec::new(),
                host_addrs: Default::default(),
            }),
            docker: None,
        }
    }

    #[test]
    fn the_host_addrs_line_says_what_a_full_table_left_out() {
        let mut v = view();
        assert!(
            !status_text(&v).contains("host addrs"),
            "no datapath tables"
        );
        let d = v.datapath.as_mut().unwrap();
        d.host_addrs = crate::engine::datapath::HostAddrsFill {
            capacity: 1024,
            ipv4: 3,
            ipv4_left_out: 0,
            ipv6: 40,
            ipv6_left_out: 0,
        };
        assert!(
            status_text(&v).contains("\nhost addrs IPv4 3, IPv6 40 (tables of 1024)\n"),
            "{}",
            status_text(&v)
        );
        let d = v.datapath.as_mut().unwrap();
        d.host_addrs.ipv6 = 1100;
        d.host_addrs.ipv6_left_out = 76;
        assert!(
            status_text(&v).contains("\nhost addrs IPv4 3, IPv6 1100 (tables of 1024); FULL, left out: 76 IPv6 (link-local ones first); start the daemon with a larger --max-host-addrs\n"),
            "{}",
            status_text(&v)
        );
    }

    #[test]
    fn the_docker_line_says_the_socket_the_connection_and_what_is_published() {
        let mut v = view();
        assert!(!status_text(&v).contains("docker"), "only in events mode");
        let mut d = DockerStatus {
            socket: "unix:///var/run/docker.sock".into(),
            connected: true,
            since: "2026-12-01T17:00:00.000Z".into(),
            last_error: Some("an older failure".into()),
            containers: 3,
            tasks: 2,
            clashes: vec![],
        };
        v.docker = Some(d.clone());
        assert!(status_text(&v).contains(
            "\nstore      /var/lib/berth/berth.redb\ndocker     unix:///var/run/docker.sock connected since 2026-12-01T17:00:00.000Z; publishing 3 containers as 2 tasks\n"
        ), "{}", status_text(&v));
        d.connected = false;
        d.last_error = Some("Docker API /var/run/docker.sock: connection refused".into());
        d.containers = 1;
        d.tasks = 1;
        v.docker = Some(d.clone());
        assert!(status_text(&v).contains(
            "docker     unix:///var/run/docker.sock not connected since 2026-12-01T17:00:00.000Z (last error: Docker API /var/run/docker.sock: connection refused); publishing 1 container as 1 task\n"
        ), "{}", status_text(&v));
        d.last_error = None;
        v.docker = Some(d.clone());
        assert!(status_text(&v).contains(
            "docker     unix:///var/run/docker.sock not connected yet (since 2026-12-01T17:00:00.000Z); publishing 1 container as 1 task\n"
        ));
        let mut clashed = d.clone();
        clashed.clashes = vec!["web -> task web".into()];
        v.docker = Some(clashed);
        assert!(status_text(&v).contains(
            "publishing 1 container as 1 task; 1 container not published, task name taken (web -> task web)\n"
        ), "{}", status_text(&v));
        v.docker = Some(d);
        let json = serde_json::to_value(&v).unwrap();
        assert!(json["docker"].get("clashes").is_none());
        assert_eq!(json["docker"]["connected"], false);
        assert_eq!(json["docker"]["containers"], 1);
        assert!(json["docker"].get("lastError").is_none());
    }

    #[test]
    fn the_text_says_what_is_off_detached_and_migrated() {
        let text = status_text(&view());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "daemon     berth 0.1.0 (pid 42)");
        assert!(text.contains("migrated   BERTH_CT: capacity 1024 -> 262144 (3 entries kept)\n"));
        assert!(text.contains(
            "cgroup     socket hooks off (--no-socket-hooks): no bind guard, localhost or hairpin access\n"
        ));
        assert!(
            text.contains("bridge port  veth1  berth_to_ctr      tc egress (tcx)           7      9  (detached)\n"),
            "{text}"
        );
        let row: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with("BERTH_SERVICES"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(row, ["BERTH_SERVICES", "hash", "8", "8", "131072", "3"]);
    }

    #[test]
    fn the_json_round_trips_in_camel_case() {
        let json = serde_json::to_value(view()).unwrap();
        assert_eq!(
            json["datapath"]["socketHooks"]["disabledBy"],
            "--no-socket-hooks"
        );
        assert_eq!(json["datapath"]["attachments"][0]["linkId"], 7);
        assert_eq!(json["datapath"]["maps"][0]["type"], "hash");
        let back: StatusView = serde_json::from_value(json).unwrap();
        assert_eq!(back, view());
    }

    #[test]
    fn each_bridge_says_whether_it_is_attached_or_waited_for() {
        use crate::engine::datapath::BridgeState;
        let mut v = view();
        let d = v.datapath.as_mut().unwrap();
        d.bridges = vec![
            BridgeState {
                name: "docker0".into(),
                state: "attached".into(),
                ifindex: 4,
                subnets: vec!["172.17.0.0/16".into()],
                ports: 2,
                detail: None,
            },
            BridgeState {
                name: "cni0".into(),
                state: "waiting".into(),
                ..Default::default()
            },
            BridgeState {
                name: "br-x".into(),
                state: "failed".into(),
                ifindex: 0,
                detail: Some("br-x exists but is not a bridge".into()),
                ..Default::default()
            },
        ];
        let text = status_text(&v);
        assert!(
            text.contains(
                "bridge     docker0 attached (ifindex 4; 172.17.0.0/16; 2 ports)\n\
                 bridge     cni0 waiting (does not exist yet)\n\
                 bridge     br-x failed: br-x exists but is not a bridge\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["datapath"]["bridges"][1]["state"], "waiting");
    }
}
