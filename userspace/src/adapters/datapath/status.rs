//! What `berth status` shows of the datapath: what is attached where, read
//! back from the kernel (the pinned links and maps), not from what the
//! daemon meant to do. `cli::status` renders it.
use std::{fs, path::PathBuf};

use super::{
    ports::PORT_PROGRAMS,
    sys::{self, MapShape},
    AttachMode, Attachment, DatapathStatus, MapStatus, SocketHooks,
};

/// What the daemon knows that the kernel does not.
#[derive(Clone, Debug)]
pub(super) struct StatusBase {
    pub attach: AttachMode,
    pub pin_dir: PathBuf,
    pub uplinks: Vec<String>,
    /// Each `--bridge` as the port watcher last saw it.
    pub bridges: super::bridges::BridgeStates,
    pub socket_hooks: SocketHooks,
    pub migrated: Vec<String>,
    pub maps: Vec<String>,
    /// The host address tables' fill, which the pushes update.
    pub host_addrs: std::sync::Arc<super::host_addrs::Fill>,
}

impl StatusBase {
    pub(super) fn read(&self) -> DatapathStatus {
        DatapathStatus {
            attach: self.attach,
            pin_dir: self.pin_dir.display().to_string(),
            layout_version: super::pins::LAYOUT_VERSION,
            migrated: self.migrated.clone(),
            socket_hooks: self.socket_hooks.clone(),
            attachments: self.attachments(),
            maps: self.maps.iter().map(|m| self.map(m)).collect(),
            bridges: self.bridges(),
            host_addrs: self.host_addrs.read(),
        }
    }

    /// The watcher's view, with each attached bridge's subnets read now.
    fn bridges(&self) -> Vec<super::BridgeState> {
        let mut states = self
            .bridges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for b in states.iter_mut().filter(|b| b.ifindex != 0) {
            let mut nets: Vec<_> = crate::adapters::netif::interface_subnets(&b.name)
                .unwrap_or_default()
                .into_iter()
                .map(crate::domain::cidr::Ipv4Cidr::network)
                .collect();
            nets.sort();
            nets.dedup();
            b.subnets = nets.iter().map(ToString::to_string).collect();
            // Then its IPv6 networks (link-local ones left out), so `map
            // ls` can say which bridge an IPv6 binding's container is on.
            let mut nets6: Vec<_> = crate::adapters::netif::interface_subnets6(&b.name)
                .unwrap_or_default()
                .into_iter()
                .map(crate::domain::cidr::Ipv6Cidr::network)
                .collect();
            nets6.sort();
            nets6.dedup();
            b.subnets.extend(nets6.iter().map(ToString::to_string));
        }
        states
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
                } else if program == berth_maps::program::REPLY {
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
                    .replace("peername", "getpeername")
            )
        }
        _ => "not attached".into(),
    }
}
