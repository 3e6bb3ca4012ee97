//! `berth status`: what is attached where, read back from the kernel (the
//! pinned links and maps), not from what the daemon meant to do.
use std::{fmt::Write as _, fs, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    bpf::AttachMode,
    cgroup::CgroupInfo,
    ports::PORT_PROGRAMS,
    sys::{self, MapShape},
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathStatus {
    pub attach: AttachMode,
    pub pin_dir: String,
    pub layout_version: u32,
    /// Maps migrated from another layout when this daemon started.
    pub migrated: Vec<String>,
    pub socket_hooks: SocketHooks,
    pub attachments: Vec<Attachment>,
    pub maps: Vec<MapStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketHooks {
    pub enabled: bool,
    /// Where they attach, when enabled.
    pub cgroup: Option<CgroupInfo>,
    /// Why not, when disabled.
    pub disabled_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// uplink, bridge, bridge port or cgroup.
    pub role: String,
    /// The interface, or the cgroup.
    pub target: String,
    pub program: String,
    pub hook: String,
    pub link_id: u32,
    pub program_id: u32,
    /// False when the link outlived its interface.
    pub attached: bool,
    pub pin: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub key_size: u32,
    pub value_size: u32,
    pub capacity: u32,
    /// Entries in use (hash maps); arrays are always full.
    pub entries: Option<u64>,
    pub pin: String,
}

/// What the daemon knows that the kernel does not.
#[derive(Clone, Debug)]
pub(super) struct StatusBase {
    pub attach: AttachMode,
    pub pin_dir: PathBuf,
    pub uplinks: Vec<String>,
    pub bridge: String,
    pub socket_hooks: SocketHooks,
    pub migrated: Vec<String>,
    pub maps: Vec<String>,
}

impl StatusBase {
    pub fn read(&self) -> DatapathStatus {
        DatapathStatus {
            attach: self.attach,
            pin_dir: self.pin_dir.display().to_string(),
            layout_version: super::pins::LAYOUT_VERSION,
            migrated: self.migrated.clone(),
            socket_hooks: self.socket_hooks.clone(),
            attachments: self.attachments(),
            maps: self.maps.iter().map(|m| self.map(m)).collect(),
        }
    }

    fn attachments(&self) -> Vec<Attachment> {
        let links = self.pin_dir.join("links");
        let names: Vec<String> = fs::read_dir(&links)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut all: Vec<Attachment> = names
            .into_iter()
            .filter_map(|name| {
                let (program, target) = name.split_once('@')?;
                if target.ends_with("_new") {
                    return None; // a cgroup link being replaced
                }
                let pin = links.join(&name);
                let info = sys::obj_get(&pin)
                    .and_then(|fd| sys::link_info(&fd))
                    .unwrap_or_default();
                let role = if target == super::bpf::CGROUP_LINK_SUFFIX {
                    "cgroup"
                } else if self.uplinks.iter().any(|u| u == target) {
                    "uplink"
                } else if target == self.bridge {
                    "bridge"
                } else if PORT_PROGRAMS.contains(&program) {
                    "bridge port"
                } else {
                    "other"
                };
                let target = match (&self.socket_hooks.cgroup, role) {
                    (Some(cg), "cgroup") => cg.cgroup.clone(),
                    _ => target.to_owned(),
                };
                Some(Attachment {
                    role: role.into(),
                    target,
                    program: program.into(),
                    hook: hook_of(program, info.link_type),
                    link_id: info.id,
                    program_id: info.prog_id,
                    attached: info.id != 0 && (info.target != 0),
                    pin: pin.display().to_string(),
                })
            })
            .collect();
        // Outside in: uplinks, the bridge, its ports, then the cgroup.
        let rank = |role: &str| match role {
            "uplink" => 0,
            "bridge" => 1,
            "bridge port" => 2,
            "cgroup" => 3,
            _ => 4,
        };
        all.sort_by(|a, b| {
            (rank(&a.role), &a.target, &a.program).cmp(&(rank(&b.role), &b.target, &b.program))
        });
        all
    }

    fn map(&self, name: &String) -> MapStatus {
        let pin = self.pin_dir.join(name);
        let read = sys::obj_get(&pin).and_then(|fd| {
            let shape = sys::map_shape(&fd)?;
            let entries = if shape.is_array() {
                None
            } else {
                Some(sys::map_count(&fd, shape.key_size as usize)?)
            };
            Ok((shape, entries))
        });
        let (shape, entries) = read.unwrap_or((
            MapShape {
                map_type: 0,
                key_size: 0,
                value_size: 0,
                max_entries: 0,
                flags: 0,
            },
            None,
        ));
        MapStatus {
            name: name.clone(),
            map_type: shape.type_name(),
            key_size: shape.key_size,
            value_size: shape.value_size,
            capacity: shape.max_entries,
            entries,
            pin: pin.display().to_string(),
        }
    }
}

fn hook_of(program: &str, link_type: u32) -> String {
    match (program, link_type) {
        (_, sys::BPF_LINK_TYPE_XDP) => "xdp".into(),
        (berth_maps::program::TO_CTR, _) => "tc egress (tcx)".into(),
        (_, sys::BPF_LINK_TYPE_TCX) => "tc ingress (tcx)".into(),
        (p, sys::BPF_LINK_TYPE_CGROUP) => {
            format!(
                "cgroup {}",
                p.trim_start_matches("berth_")
                    .replace("peername4", "getpeername4")
            )
        }
        _ => "not attached".into(),
    }
}

/// `GET /v1/status`: the daemon and its datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub socket: String,
    pub store: String,
    pub datapath: Option<DatapathStatus>,
}

/// The human form of [`StatusView`].
pub fn status_text(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "daemon     berth {} (pid {})", s.version, s.pid);
    let _ = writeln!(out, "socket     {}", s.socket);
    let _ = writeln!(out, "store      {}", s.store);
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
            }),
        }
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
}
