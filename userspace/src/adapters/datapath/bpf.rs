//! aya loader: loads, attaches and pins the eBPF programs and owns their maps.
//!
//! Pins live under `<bpffs>/berth/`: the maps by name, the links under
//! `links/<program>@<interface>`. A daemon that starts and finds them adopts
//! them: maps are reused as they are (flows and mappings survive), and each
//! pinned link gets the freshly loaded program swapped in atomically
//! (`bpf_link_update`), so traffic never sees a detached hook.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{links::CgroupAttachMode, CgroupSockAddr},
    Ebpf, EbpfLoader,
};
use berth_maps::{
    program, Backend, FlowKey, NatEntry, NatFwd, PortKey, ServiceKey, CONFIG_MAP,
    CONFIG_NETNS_COOKIE, CONFIG_WILDCARD_ONLY, COUNTERS_MAP, HOOKED_PORTS_MAP, HOST_ADDRS_MAP,
    LOCAL_NETS_MAP, NAT_FWD_MAP, NAT_MAP, NAT_NEW_MAP, PORTS_MAP, PORT_ADDRS_MAP, SERVICES_MAP,
};

use super::{
    attach::{attach_pinned, error_chain, ifindex, is_eperm, link_name, pin_link, prog_err},
    flows::{FlowMap, FlowTable},
    policy::PolicyMaps,
    ports::PortWatcher,
    AttachMode, DatapathError, FlowTimeouts,
};

/// The eBPF object built by build.rs, embedded (deflated) so the binary
/// needs nothing else at run time. Inflated into a fresh buffer on each
/// call: the daemon needs it once, while loading, and then frees it (see
/// build.rs for why it is not embedded as it is).
pub fn ebpf_object() -> Result<Vec<u8>, DatapathError> {
    const DEFLATED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth.deflate"));
    // Far above the object's size; a limit only so that a damaged binary
    // fails instead of inflating without end.
    const LIMIT: usize = 64 << 20;
    // A `Vec<u8>` comes from malloc, aligned for any ELF structure the
    // parser reads in place.
    miniz_oxide::inflate::decompress_to_vec_with_limit(DEFLATED, LIMIT)
        .map_err(|e| DatapathError::Other(format!("inflating the embedded eBPF object: {e}")))
}

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub uplinks: Vec<String>,
    /// `--bridge` (repeatable): the bridges whose containers berth serves.
    /// One that does not exist yet is attached when it appears.
    pub bridges: Vec<String>,
    /// bpffs mount point; berth pins under `<bpffs>/berth/`.
    pub bpffs: PathBuf,
    pub attach: AttachMode,
    /// Capacity of the security-group tracking table (`None`:
    /// `--max-flows`). A pinned table of another capacity is migrated to
    /// this one.
    pub ct_capacity: Option<u32>,
    /// Attach the cgroup socket hooks (bind guard, localhost and hairpin
    /// access); `--no-socket-hooks` turns them off.
    pub socket_hooks: bool,
    /// Capacity of the established published-port flow table and of its
    /// clash-remap table (`None`: `--max-flows`).
    pub nat_capacity: Option<u32>,
    /// Capacity of each table of not yet established flows (published
    /// ports and security groups; `None`: an eighth of `--max-flows`).
    pub embryonic_capacity: Option<u32>,
    /// `--max-flows`, `--max-mappings`.
    pub capacity: super::capacity::Capacity,
    /// `--flow-log`: a flow log will read the flow-log ring (without one
    /// the ring is one page and never mapped; see `rings`).
    pub flow_log: bool,
}

pub(super) struct Maps {
    pub(super) services: HashMap<MapData, ServiceKey, Backend>,
    /// Published IPv6 ports (`services6.rs`).
    pub(super) services6: HashMap<MapData, berth_maps::ServiceKey6, berth_maps::Backend6>,
    pub(super) ports: HashMap<MapData, PortKey, u32>,
    pub(super) host_addrs: HashMap<MapData, u32, u32>,
    /// The host's IPv6 addresses.
    pub(super) host_addrs6: HashMap<MapData, [u8; 16], u32>,
    pub(super) local_nets: Array<MapData, u64>,
    pub(super) nat_fwd: HashMap<MapData, FlowKey, NatFwd>,
    pub(super) config: Array<MapData, u64>,
    pub(super) counters: PerCpuArray<MapData, u64>,
    /// Per-binding counters, and which mapping counts in which slot.
    pub(super) binding_stats: PerCpuArray<MapData, berth_maps::BindingStats>,
    pub(super) slots: super::binding_stats::SlotBook,
    /// Mappings on a specific host address: while there are none,
    /// `CONFIG_WILDCARD_ONLY` lets the programs skip the exact-address probe.
    pub(super) exact: usize,
    /// Which ports have such a mapping, and `BERTH_EXACT_PORTS` to say so.
    pub(super) exact_ports: Array<MapData, u64>,
    pub(super) exact_book: super::exact_ports::ExactPorts,
}

impl Maps {
    /// Writes `CONFIG_WILDCARD_ONLY` from the count: call before publishing
    /// a mapping on a specific address (the flag must be off first) and
    /// after removing one.
    pub(super) fn write_wildcard_only(&mut self) -> Result<(), DatapathError> {
        self.config
            .set(CONFIG_WILDCARD_ONLY, u64::from(self.exact == 0), 0)
            .map_err(map_err(CONFIG_MAP))
    }

    /// Counts the mappings on a specific address from the map itself
    /// (pins kept across a restart hold mappings the daemon has not
    /// replayed yet) and writes the flag and the port bitmap.
    pub(super) fn recount_exact(&mut self) -> Result<(), DatapathError> {
        let keys = exact_keys(&self.services);
        self.exact = keys.len();
        let (book, writes) = super::exact_ports::ExactPorts::rebuild(keys);
        self.exact_book = book;
        for w in writes {
            self.write_exact_word(Some(w))?;
        }
        self.write_wildcard_only()
    }

    /// One mapping more on a specific address: its port's bit, before the
    /// mapping is inserted.
    pub(super) fn exact_added(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.exact += 1;
        let w = self
            .exact_book
            .add(key.proto, u16::from_be(key.host_port_be));
        self.write_exact_word(w)?;
        self.write_wildcard_only()
    }

    /// One fewer, after it was removed.
    pub(super) fn exact_removed(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.exact = self.exact.saturating_sub(1);
        let w = self
            .exact_book
            .remove(key.proto, u16::from_be(key.host_port_be));
        self.write_exact_word(w)?;
        self.write_wildcard_only()
    }

    fn write_exact_word(
        &mut self,
        w: Option<super::exact_ports::Write>,
    ) -> Result<(), DatapathError> {
        match w {
            Some((i, v)) => self
                .exact_ports
                .set(i, v, 0)
                .map_err(map_err(berth_maps::EXACT_PORTS_MAP)),
            None => Ok(()),
        }
    }
}

pub struct BpfDatapath {
    pub(super) maps: Mutex<Maps>,
    /// Outside the mutex: sweeping a full table takes a while, and batch
    /// syscalls on an fd need no lock.
    pub(super) flows: Vec<FlowMap<NatEntry>>,
    /// The policy tracking tables, likewise outside `policy`'s mutex.
    pub(super) ct_flows: Vec<FlowMap<berth_maps::CtEntry>>,
    /// The IPv6 policy tracking tables (`flows6.rs`).
    pub(super) ct6_flows: Vec<super::flows6::FlowMap6>,
    /// The IPv6 published-port flow tables (`flows6.rs`), outside the
    /// mutex as `flows`.
    pub(super) nat6_flows: Vec<super::flows6::FlowMap6<berth_maps::NatEntry6>>,
    /// The IPv6 clash remaps (`remap6.rs`), swept after `nat6_flows`.
    pub(super) nat6_fwd: super::flows6::FlowMap6<berth_maps::NatFwd6>,
    pub(super) policy: Mutex<PolicyMaps>,
    pub(super) timeouts: Mutex<FlowTimeouts>,
    /// `--max-mappings`, for the error when the tables are full.
    pub(super) max_mappings: u32,
    pub(super) status: super::status::StatusBase,
    /// The flow-log ring, until a flow log takes it (`flow_log_tap`);
    /// `None` from the start without `DatapathConfig::flow_log`.
    pub(super) flow_ring: Mutex<Option<RingBuf<MapData>>>,
    /// The flow-log ring without a flow log: never mapped, but its fd stays
    /// open, since programs loaded later (a bridge that appears after
    /// startup) are relocated against it.
    _flow_ring_unmapped: Option<aya::maps::Map>,
    /// What the sweeps deleted, while a flow log wants it.
    pub(super) departed: super::flowlog::DepartedSlot,
    /// aya-log's reader of the datapath log.
    pub(super) dp_logger: super::dplog::Logger,
    // Stops before the programs it attaches are dropped.
    _ports: PortWatcher,
    // Owns the programs; the links themselves are held by their pins.
    _ebpf: Arc<Mutex<Ebpf>>,
}

/// (program, interface) for every uplink attachment a mode needs; the
/// bridges' are the port watcher's (they may come and go).
fn attachments(config: &DatapathConfig) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for up in &config.uplinks {
        match config.attach {
            AttachMode::Tc => v.push((program::INGRESS, up.clone())),
            AttachMode::Xdp => {
                v.push((program::XDP, up.clone()));
                v.push((program::DELIVER, up.clone()));
            }
        }
    }
    v
}

pub(super) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        reason: e.to_string(),
    }
}

/// [`map_err`] for a write to a table sized by `--max-mappings`: a full
/// one says so, and how to make room.
pub(super) fn mappings_err(
    map: &'static str,
    capacity: u32,
) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| match &e {
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            DatapathError::MappingsFull(capacity)
        }
        _ => map_err(map)(e),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at `bpffs` if needed and creates berth's pin directory in
/// it; returns that directory.
pub fn prepare_pin_dir(bpffs: &Path) -> Result<PathBuf, DatapathError> {
    ensure_bpffs(bpffs)?;
    let dir = pin_dir(bpffs);
    fs::create_dir_all(&dir).map_err(|e| DatapathError::Bpffs {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(dir)
}

/// Mount bpffs at `path` unless one is there already.
fn ensure_bpffs(path: &Path) -> Result<(), DatapathError> {
    let err = |reason: String| DatapathError::Bpffs {
        path: path.display().to_string(),
        reason,
    };
    fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) } != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(err(format!(
            "cannot mount bpffs: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn kernel_release() -> String {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe {
        libc::uname(&raw mut u);
    }
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// tcx links (the only TC attachment that can be pinned) arrived in 6.6.
fn check_kernel() -> Result<(), DatapathError> {
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if (major, minor) < (6, 6) {
        return Err(DatapathError::KernelTooOld(format!(
            "Linux {release}; berth needs 6.6 or newer (tcx links)"
        )));
    }
    Ok(())
}

impl BpfDatapath {
    /// Load, attach and pin (or adopt what is pinned). Runs in the network
    /// namespace whose interfaces are named in `config`.
    pub fn open(config: &DatapathConfig) -> Result<Self, DatapathError> {
        for ifname in &config.uplinks {
            ifindex(ifname)?;
        }
        check_kernel()?;
        let dir = prepare_pin_dir(&config.bpffs)?;

        // Found before anything changes, so a refusal leaves all as it was.
        let hook_cgroup = if config.socket_hooks {
            let wanted = std::env::var_os("BERTH_CGROUP").map(PathBuf::from);
            Some(
                super::cgroup::open_hook_cgroup(wanted.as_deref())
                    .map_err(DatapathError::SocketHooks)?,
            )
        } else {
            None
        };
        // Capacities set by flags: the pinned maps are checked (and
        // migrated) against these, and the loader creates missing ones so.
        let overrides = config.capacity.per_map(
            config.nat_capacity,
            config.ct_capacity,
            config.embryonic_capacity,
        );
        let object = ebpf_object()?;
        let expected = super::pins::expected_shapes(&object, &overrides)?;
        let (pins, mut old_maps) = super::pins::check_and_migrate_keeping_old(&dir, &expected)?;
        if pins
            .found_layout
            .is_some_and(|v| v != super::pins::LAYOUT_VERSION)
        {
            tracing::info!(
                from = ?pins.found_layout,
                to = super::pins::LAYOUT_VERSION,
                migrated = ?pins.migrated,
                "pinned maps upgraded"
            );
        }

        let links_dir = dir.join("links");
        fs::create_dir_all(&links_dir).map_err(|e| DatapathError::Bpffs {
            path: links_dir.display().to_string(),
            reason: e.to_string(),
        })?;

        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&dir);
        for (name, n) in &overrides {
            loader.map_max_entries(name, *n);
        }
        for (name, bytes) in super::rings::ring_sizes(config.flow_log)? {
            loader.map_max_entries(name, bytes);
        }
        let mut ebpf = loader.load(&object).map_err(|e| {
            if is_eperm(&e) {
                DatapathError::NotPermitted
            } else {
                DatapathError::aya("loading eBPF programs")(e)
            }
        })?;
        // Parsed into `ebpf`: the inflated copy is not needed any more.
        drop(object);

        // Before any program loads: they refer to its map.
        let dp_logger = super::dplog::init(&mut ebpf)?;

        // Before any program is attached: a bitmap created just now (pins of
        // an earlier release) is all clear, and a clear bit skips the probe
        // of a mapping bound to an address that the pinned services hold.
        fill_exact_ports(&mut ebpf)?;
        // Before the programs that tail-call them are attached.
        super::tails::fill_tails(&mut ebpf)?;
        let wanted = attachments(config);
        // Everything this daemon attaches, now or when a bridge or a port
        // appears, loaded before anything is attached: then the loader's
        // copies of the instructions can go.
        let mut load: Vec<&str> = wanted.iter().map(|(p, _)| *p).collect();
        load.push(program::REPLY);
        load.extend(super::ports::PORT_PROGRAMS);
        super::shed::load_and_shed(&mut ebpf, &load)?;
        for (prog, ifname) in &wanted {
            attach_pinned(&mut ebpf, prog, ifname, &links_dir)?;
        }
        // The uplinks and the bridge run the new programs: catch up with
        // what the old ones tracked meanwhile now, again once the ports'
        // programs are swapped too (below).
        let mut carried = old_maps.carry_over();
        // Drop attachments of another mode or interface left by an earlier
        // run: unpinning the last reference detaches the program.
        let mut keep: HashSet<String> = wanted.iter().map(|(p, i)| link_name(p, i)).collect();
        // The served bridges' links are the watcher's to adopt (an atomic
        // program swap, no gap) or to drop when stale.
        keep.extend(config.bridges.iter().map(|b| link_name(program::REPLY, b)));
        // Per-port pins are the port watcher's to adopt or remove.
        let is_port_pin = |name: &str| {
            name.split_once('@')
                .is_some_and(|(p, _)| super::ports::PORT_PROGRAMS.contains(&p))
        };
        if hook_cgroup.is_some() {
            for prog in SOCKET_HOOKS {
                keep.insert(link_name(prog, CGROUP_LINK_SUFFIX));
                keep.insert(format!("{}_new", link_name(prog, CGROUP_LINK_SUFFIX)));
            }
        }
        if let Ok(entries) = fs::read_dir(&links_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) && !is_port_pin(&name) {
                    tracing::info!(link = %name, "removing stale attachment");
                    let _ = fs::remove_file(e.path());
                }
            }
        }

        let socket_hooks = match &hook_cgroup {
            Some(cg) => {
                for prog in SOCKET_HOOKS {
                    attach_cgroup_hook(&mut ebpf, prog, cg, &links_dir)?;
                }
                tracing::info!(
                    cgroup = %cg.info.cgroup,
                    private_mount = cg.info.private_mount,
                    "socket hooks attached"
                );
                super::SocketHooks {
                    enabled: true,
                    cgroup: Some(cg.info.clone()),
                    disabled_by: None,
                }
            }
            None => {
                tracing::warn!(
                    "--no-socket-hooks: host processes can bind published ports, \
                     and localhost/hairpin access to them does not work"
                );
                super::SocketHooks {
                    enabled: false,
                    cgroup: None,
                    disabled_by: Some("--no-socket-hooks".into()),
                }
            }
        };
        let mut config_map: Array<MapData, u64> = Array::try_from(
            ebpf.take_map(CONFIG_MAP)
                .ok_or_else(|| DatapathError::Other(format!("map {CONFIG_MAP} missing")))?,
        )
        .map_err(map_err(CONFIG_MAP))?;
        config_map
            .set(CONFIG_NETNS_COOKIE, netns_cookie()?, 0)
            .map_err(map_err(CONFIG_MAP))?;
        // Until a flow log of this daemon reads the new ring, refusals
        // write nothing (an earlier daemon's setting is not this one's).
        config_map
            .set(berth_maps::CONFIG_FLOW_LOG, 0, 0)
            .map_err(map_err(CONFIG_MAP))?;
        // Off until asked (`--datapath-log`, `berth log`), whatever an
        // earlier daemon left.
        config_map
            .set(berth_maps::CONFIG_DP_LOG, berth_maps::DP_LOG_OFF, 0)
            .map_err(map_err(CONFIG_MAP))?;
        let flow_ring_map = ebpf.take_map(berth_maps::FLOW_LOG_RING).ok_or_else(|| {
            DatapathError::Other(format!("map {} missing", berth_maps::FLOW_LOG_RING))
        })?;
        // Mapped only for a flow log: the reader maps the ring's pages.
        let (flow_ring, flow_ring_unmapped) = if config.flow_log {
            let ring =
                RingBuf::try_from(flow_ring_map).map_err(map_err(berth_maps::FLOW_LOG_RING))?;
            (Some(ring), None)
        } else {
            (None, Some(flow_ring_map))
        };

        let mut maps = Maps {
            services: take_map(&mut ebpf, SERVICES_MAP)?,
            services6: take_map(&mut ebpf, berth_maps::SERVICES6_MAP)?,
            ports: take_map(&mut ebpf, PORTS_MAP)?,
            host_addrs: take_map(&mut ebpf, HOST_ADDRS_MAP)?,
            host_addrs6: take_map(&mut ebpf, berth_maps::HOST_ADDRS6_MAP)?,
            local_nets: Array::try_from(
                ebpf.take_map(LOCAL_NETS_MAP)
                    .ok_or_else(|| DatapathError::Other(format!("map {LOCAL_NETS_MAP} missing")))?,
            )
            .map_err(map_err(LOCAL_NETS_MAP))?,
            nat_fwd: take_map(&mut ebpf, NAT_FWD_MAP)?,
            config: config_map,
            counters: PerCpuArray::try_from(
                ebpf.take_map(COUNTERS_MAP)
                    .ok_or_else(|| DatapathError::Other(format!("map {COUNTERS_MAP} missing")))?,
            )
            .map_err(map_err(COUNTERS_MAP))?,
            binding_stats: PerCpuArray::try_from(
                ebpf.take_map(berth_maps::BINDING_STATS_MAP)
                    .ok_or_else(|| {
                        DatapathError::Other(format!(
                            "map {} missing",
                            berth_maps::BINDING_STATS_MAP
                        ))
                    })?,
            )
            .map_err(map_err(berth_maps::BINDING_STATS_MAP))?,
            slots: super::binding_stats::SlotBook::default(),
            exact: 0,
            exact_ports: Array::try_from(ebpf.take_map(berth_maps::EXACT_PORTS_MAP).ok_or_else(
                || DatapathError::Other(format!("map {} missing", berth_maps::EXACT_PORTS_MAP)),
            )?)
            .map_err(map_err(berth_maps::EXACT_PORTS_MAP))?,
            exact_book: Default::default(),
        };
        let pinned6: Vec<_> = maps
            .services6
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (super::binding_stats::SlotOwner::V6(k), v.binding))
            .collect();
        maps.slots = super::binding_stats::SlotBook::adopt(
            config.capacity.max_mappings,
            maps.services
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (super::binding_stats::SlotOwner::V4(k), v.binding))
                .chain(pinned6),
        );
        maps.recount_exact()?;
        let policy = PolicyMaps {
            endpoints: take_map(&mut ebpf, berth_maps::ENDPOINTS_MAP)?,
            policy: take_map(&mut ebpf, berth_maps::POLICY_MAP)?,
            members: take_map(&mut ebpf, berth_maps::SG_MEMBERS_MAP)?,
            policy6: take_map(&mut ebpf, berth_maps::POLICY6_MAP)?,
            endpoints6: take_map(&mut ebpf, berth_maps::ENDPOINTS6_MAP)?,
            members6: take_map(&mut ebpf, berth_maps::SG_MEMBERS6_MAP)?,
        };
        let ct_flows = vec![
            FlowMap {
                name: berth_maps::CT_MAP,
                table: FlowTable::Established,
                map: take_map(&mut ebpf, berth_maps::CT_MAP)?,
            },
            FlowMap {
                name: berth_maps::CT_NEW_MAP,
                table: FlowTable::Embryonic,
                map: take_map(&mut ebpf, berth_maps::CT_NEW_MAP)?,
            },
        ];
        let ct6_flows = vec![
            super::flows6::FlowMap6 {
                name: berth_maps::CT6_MAP,
                table: FlowTable::Established,
                map: take_map(&mut ebpf, berth_maps::CT6_MAP)?,
            },
            super::flows6::FlowMap6 {
                name: berth_maps::CT6_NEW_MAP,
                table: FlowTable::Embryonic,
                map: take_map(&mut ebpf, berth_maps::CT6_NEW_MAP)?,
            },
        ];
        let nat6_flows = vec![
            super::flows6::FlowMap6 {
                name: berth_maps::NAT6_MAP,
                table: FlowTable::Established,
                map: take_map(&mut ebpf, berth_maps::NAT6_MAP)?,
            },
            super::flows6::FlowMap6 {
                name: berth_maps::NAT6_NEW_MAP,
                table: FlowTable::Embryonic,
                map: take_map(&mut ebpf, berth_maps::NAT6_NEW_MAP)?,
            },
        ];
        let nat6_fwd = super::remap6::fwd6_table(take_map(&mut ebpf, berth_maps::NAT6_FWD_MAP)?);
        // Every table keyed by the container-side tuple with a NatEntry:
        // forgetting a binding's flows and expiry cover each of them.
        let flows = vec![
            FlowMap {
                name: NAT_MAP,
                table: FlowTable::Established,
                map: take_map(&mut ebpf, NAT_MAP)?,
            },
            FlowMap {
                name: NAT_NEW_MAP,
                table: FlowTable::Embryonic,
                map: take_map(&mut ebpf, NAT_NEW_MAP)?,
            },
        ];
        let port_addrs = take_map(&mut ebpf, PORT_ADDRS_MAP)?;
        let port_addrs6 = take_map(&mut ebpf, berth_maps::PORT_ADDRS6_MAP)?;
        let port_list6 = take_map(&mut ebpf, berth_maps::PORT_LIST6_MAP)?;
        let ebpf = Arc::new(Mutex::new(ebpf));
        let hooked = take_map(
            &mut ebpf
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            HOOKED_PORTS_MAP,
        )?;
        let macs = take_map(
            &mut ebpf
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            berth_maps::BRIDGE_MACS_MAP,
        )?;
        let bridge_states = super::bridges::BridgeStates::default();
        let ports = super::ports::watch(super::ports::WatchSetup {
            ebpf: ebpf.clone(),
            addrs_map: port_addrs,
            addrs6_map: port_addrs6,
            list6_map: port_list6,
            bridges: config.bridges.clone(),
            links_dir,
            hooked,
            macs,
            states: bridge_states.clone(),
        })?;
        // Every program is the new one now: what the old ones tracked since
        // their maps were copied joins the new maps.
        carried += old_maps.carry_over();
        if carried > 0 {
            tracing::info!(
                entries = carried,
                "flows tracked by the old programs during the migration carried over"
            );
        }
        let status = super::status::StatusBase {
            attach: config.attach,
            pin_dir: dir,
            uplinks: config.uplinks.clone(),
            bridges: bridge_states,
            socket_hooks,
            migrated: pins.migrated,
            maps: expected.into_keys().collect(),
            host_addrs: Arc::new(super::host_addrs::Fill::new(config.capacity.max_host_addrs)),
        };
        // The object was parsed twice (shapes, loader) and those parses are
        // freed, but glibc keeps freed heap pages: give them back, or the
        // daemon's resident memory carries them for as long as it runs.
        // SAFETY: malloc_trim only releases free memory of glibc's heap.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(Self {
            maps: Mutex::new(maps),
            flows,
            ct_flows,
            ct6_flows,
            nat6_flows,
            nat6_fwd,
            policy: Mutex::new(policy),
            timeouts: Mutex::new(FlowTimeouts::default()),
            max_mappings: config.capacity.max_mappings,
            status,
            flow_ring: Mutex::new(flow_ring),
            _flow_ring_unmapped: flow_ring_unmapped,
            departed: Default::default(),
            dp_logger,
            _ports: ports,
            _ebpf: ebpf,
        })
    }

    /// Detach everything and remove every pin under `<bpffs>/berth`.
    pub fn teardown(bpffs: &Path) -> Result<(), DatapathError> {
        let dir = pin_dir(bpffs);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| DatapathError::Bpffs {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn policy(&self) -> std::sync::MutexGuard<'_, PolicyMaps> {
        self.policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// cgroup `sock_addr` hooks: the bind guard and socket-level translation for
/// host-local and hairpin access.
const SOCKET_HOOKS: [&str; program::SOCKET_HOOKS.len()] = program::SOCKET_HOOKS;
pub(super) const CGROUP_LINK_SUFFIX: &str = "cgroup";

/// The cookie of the daemon's network namespace (`SO_NETNS_COOKIE`, 5.14+).
fn netns_cookie() -> Result<u64, DatapathError> {
    let sock =
        std::net::UdpSocket::bind("127.0.0.1:0").map_err(DatapathError::io("netns cookie"))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(DatapathError::KernelTooOld(format!(
            "SO_NETNS_COOKIE: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(cookie)
}

/// Attach a cgroup hook. One pinned from an earlier run is replaced without
/// a gap: the new link is pinned under a temporary name and renamed over
/// the old pin, which detaches the old one.
/// (protocol, host port) of every mapping bound to an address.
fn exact_keys<T: std::borrow::Borrow<MapData>>(
    services: &HashMap<T, ServiceKey, Backend>,
) -> Vec<(u8, u16)> {
    services
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.host_addr_be != 0)
        .map(|k| (k.proto, u16::from_be(k.host_port_be)))
        .collect()
}

/// Writes `BERTH_EXACT_PORTS` from the services map of a loaded object.
fn fill_exact_ports(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let missing = |m: &str| DatapathError::Other(format!("map {m} missing"));
    let services: HashMap<&MapData, ServiceKey, Backend> = HashMap::try_from(
        ebpf.map(SERVICES_MAP)
            .ok_or_else(|| missing(SERVICES_MAP))?,
    )
    .map_err(map_err(SERVICES_MAP))?;
    let keys = exact_keys(&services);
    let name = berth_maps::EXACT_PORTS_MAP;
    let mut bits: Array<&mut MapData, u64> =
        Array::try_from(ebpf.map_mut(name).ok_or_else(|| missing(name))?).map_err(map_err(name))?;
    for (i, w) in super::exact_ports::ExactPorts::rebuild(keys).1 {
        bits.set(i, w, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn attach_cgroup_hook(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &super::cgroup::HookCgroup,
    links_dir: &Path,
) -> Result<(), DatapathError> {
    let what = format!("attaching {name} to cgroup {}", cgroup.info.cgroup);
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::Other(format!("program {name} missing")))?
        .try_into()
        .map_err(prog_err(what.clone()))?;
    prog.load().map_err(prog_err(what.clone()))?;
    let id = prog
        // bpf_link_create takes no flags for cgroups: links always stack.
        .attach(&cgroup.dir, CgroupAttachMode::Single)
        .map_err(|e| DatapathError::SocketHooks(format!("{what}: {}", error_chain(&e))))?;
    let pin = links_dir.join(link_name(name, CGROUP_LINK_SUFFIX));
    // bpffs refuses names with a dot.
    let tmp = links_dir.join(format!("{}_new", link_name(name, CGROUP_LINK_SUFFIX)));
    let _ = fs::remove_file(&tmp);
    pin_link(
        prog.take_link(id).map_err(prog_err(what.clone()))?,
        &tmp,
        &what,
    )?;
    fs::rename(&tmp, &pin).map_err(DatapathError::io(what))?;
    Ok(())
}

pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("berth")
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, DatapathError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| DatapathError::Other(format!("map {name} missing from the object")))?;
    HashMap::try_from(map).map_err(map_err(name))
}
