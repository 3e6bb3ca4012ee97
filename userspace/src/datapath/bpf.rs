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
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::{CgroupAttachMode, FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
        xdp::XdpLink,
        CgroupSockAddr, SchedClassifier, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use berth_maps::{
    local_net_encode, program, Backend, FlowKey, NatEntry, NatFwd, PortKey, ServiceKey, CONFIG_MAP,
    CONFIG_NETNS_COOKIE, CONFIG_PORT_GATE, CONFIG_WILDCARD_ONLY, COUNTERS_MAP, COUNTER_NAMES,
    HOOKED_PORTS_MAP, HOST_ADDRS_MAP, LOCAL_NETS_MAP, LOCAL_NETS_MAX, LOCAL_NET_MORE, NAT_FWD_MAP,
    NAT_F_CLOSING, NAT_F_REPLIED, NAT_MAP, NAT_NEW_MAP, PORTS_MAP, PORT_ADDRS_MAP, PROTO_TCP,
    SERVICES_MAP,
};

use super::{
    flows::{owned_by, owned_by_none_of, sweep, touching, FlowMap},
    policy::PolicyMaps,
    ports::PortWatcher,
    Datapath, DatapathError, FlowTimeouts, PolicyRule,
};
use crate::{model::Binding, netif::Ipv4Cidr};

/// The eBPF object built by build.rs, embedded so the binary needs nothing
/// else at run time.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/berth"))
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Xdp,
    #[default]
    Tc,
}

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub uplinks: Vec<String>,
    pub bridge: String,
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
}

struct Maps {
    services: HashMap<MapData, ServiceKey, Backend>,
    ports: HashMap<MapData, PortKey, u32>,
    host_addrs: HashMap<MapData, u32, u32>,
    local_nets: Array<MapData, u64>,
    nat_fwd: HashMap<MapData, FlowKey, NatFwd>,
    config: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    /// Mappings on a specific host address: while there are none,
    /// CONFIG_WILDCARD_ONLY lets the programs skip the exact-address probe.
    exact: usize,
}

impl Maps {
    /// Writes CONFIG_WILDCARD_ONLY from the count: call before publishing
    /// a mapping on a specific address (the flag must be off first) and
    /// after removing one.
    fn write_wildcard_only(&mut self) -> Result<(), DatapathError> {
        self.config
            .set(CONFIG_WILDCARD_ONLY, u64::from(self.exact == 0), 0)
            .map_err(map_err(CONFIG_MAP))
    }

    /// Counts the mappings on a specific address from the map itself
    /// (pins kept across a restart hold mappings the daemon has not
    /// replayed yet) and writes the flag.
    fn recount_exact(&mut self) -> Result<(), DatapathError> {
        self.exact = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.host_addr_be != 0)
            .count();
        self.write_wildcard_only()
    }
}

pub struct BpfDatapath {
    maps: Mutex<Maps>,
    /// Outside the mutex: sweeping a full table takes a while, and batch
    /// syscalls on an fd need no lock.
    flows: Vec<FlowMap<NatEntry>>,
    /// The policy tracking tables, likewise outside `policy`'s mutex.
    ct_flows: Vec<FlowMap<berth_maps::CtEntry>>,
    policy: Mutex<PolicyMaps>,
    timeouts: Mutex<FlowTimeouts>,
    /// `--max-mappings`, for the error when the tables are full.
    max_mappings: u32,
    status: super::status::StatusBase,
    // Stops before the programs it attaches are dropped.
    _ports: PortWatcher,
    // Owns the programs; the links themselves are held by their pins.
    _ebpf: Arc<Mutex<Ebpf>>,
}

/// (program, interface, hook) for every attachment a mode needs.
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
    v.push((program::REPLY, config.bridge.clone()));
    v
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        reason: e.to_string(),
    }
}

/// [`map_err`] for a write to a table sized by `--max-mappings`: a full
/// one says so, and how to make room.
fn mappings_err(map: &'static str, capacity: u32) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| match &e {
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            DatapathError::MappingsFull(capacity)
        }
        _ => map_err(map)(e),
    }
}

fn prog_err(what: String) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |e| {
        if is_eperm(&e) {
            DatapathError::NotPermitted
        } else {
            DatapathError::Other(format!("{what}: {}", error_chain(&e)))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = err.source();
    }
    false
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
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
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
    unsafe { libc::uname(&mut u) };
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

pub(super) fn ifindex(name: &str) -> Result<u32, DatapathError> {
    let c =
        std::ffi::CString::new(name).map_err(|_| DatapathError::NoSuchInterface(name.into()))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DatapathError::NoSuchInterface(name.into())),
        i => Ok(i),
    }
}

impl BpfDatapath {
    /// Load, attach and pin (or adopt what is pinned). Runs in the network
    /// namespace whose interfaces are named in `config`.
    pub fn open(config: &DatapathConfig) -> Result<Self, DatapathError> {
        for ifname in config.uplinks.iter().chain([&config.bridge]) {
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
        let expected = super::pins::expected_shapes(ebpf_object(), &overrides)?;
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
        let mut ebpf = loader.load(ebpf_object()).map_err(|e| {
            if is_eperm(&e) {
                DatapathError::NotPermitted
            } else {
                DatapathError::Other(format!("loading eBPF programs: {}", error_chain(&e)))
            }
        })?;

        let wanted = attachments(config);
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
                super::status::SocketHooks {
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
                super::status::SocketHooks {
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

        let mut maps = Maps {
            services: take_map(&mut ebpf, SERVICES_MAP)?,
            ports: take_map(&mut ebpf, PORTS_MAP)?,
            host_addrs: take_map(&mut ebpf, HOST_ADDRS_MAP)?,
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
            exact: 0,
        };
        maps.recount_exact()?;
        let policy = PolicyMaps {
            endpoints: take_map(&mut ebpf, berth_maps::ENDPOINTS_MAP)?,
            policy: take_map(&mut ebpf, berth_maps::POLICY_MAP)?,
            members: take_map(&mut ebpf, berth_maps::SG_MEMBERS_MAP)?,
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
        let ebpf = Arc::new(Mutex::new(ebpf));
        let hooked = take_map(
            &mut ebpf.lock().unwrap_or_else(|p| p.into_inner()),
            HOOKED_PORTS_MAP,
        )?;
        // The watcher keeps the bridge's address current in its own handle.
        let config_pin = dir.join(CONFIG_MAP);
        let watcher_config = MapData::from_pin(&config_pin)
            .map_err(map_err(CONFIG_MAP))
            .and_then(|m| Array::try_from(aya::maps::Map::Array(m)).map_err(map_err(CONFIG_MAP)))?;
        let ports = super::ports::watch(
            ebpf.clone(),
            port_addrs,
            config.bridge.clone(),
            links_dir,
            hooked,
            watcher_config,
        )?;
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
            bridge: config.bridge.clone(),
            socket_hooks,
            migrated: pins.migrated,
            maps: expected.into_keys().collect(),
        };
        // The object was parsed twice (shapes, loader) and those parses are
        // freed, but glibc keeps freed heap pages: give them back, or the
        // daemon's resident memory carries them for as long as it runs.
        // SAFETY: malloc_trim only releases free memory of glibc's heap.
        unsafe { libc::malloc_trim(0) };
        Ok(Self {
            maps: Mutex::new(maps),
            flows,
            ct_flows,
            policy: Mutex::new(policy),
            timeouts: Mutex::new(FlowTimeouts::default()),
            max_mappings: config.capacity.max_mappings,
            status,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, PolicyMaps> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// cgroup sock_addr hooks: the bind guard and socket-level translation for
/// host-local and hairpin access.
const SOCKET_HOOKS: [&str; 6] = program::SOCKET_HOOKS;
pub(super) const CGROUP_LINK_SUFFIX: &str = "cgroup";

/// The bridge's MAC in the low 48 bits, as the gate compares it.
pub(super) fn bridge_mac(bridge: &str) -> Result<u64, DatapathError> {
    let path = format!("/sys/class/net/{bridge}/address");
    let text = fs::read_to_string(&path)
        .map_err(|e| DatapathError::Other(format!("reading {path}: {e}")))?;
    parse_mac(text.trim())
        .ok_or_else(|| DatapathError::Other(format!("{path}: not a MAC address: {}", text.trim())))
}

fn parse_mac(s: &str) -> Option<u64> {
    let mut v = 0u64;
    let mut n = 0;
    for part in s.split(':') {
        v = (v << 8) | u64::from(u8::from_str_radix(part, 16).ok()?);
        n += 1;
    }
    (n == 6).then_some(v)
}

/// The cookie of the daemon's network namespace (SO_NETNS_COOKIE, 5.14+).
fn netns_cookie() -> Result<u64, DatapathError> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| DatapathError::Other(format!("netns cookie: {e}")))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
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
    fs::rename(&tmp, &pin).map_err(|e| DatapathError::Other(format!("{what}: {e}")))?;
    Ok(())
}

fn port_key(b: &Binding) -> PortKey {
    PortKey {
        port_be: b.host_port.to_be(),
        proto: b.protocol.ip_proto(),
        _pad: 0,
    }
}

pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("berth")
}

fn link_name(prog: &str, ifname: &str) -> String {
    format!("{prog}@{ifname}")
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

/// Attach `prog` to `ifname`, reusing a pinned link (atomic program swap)
/// when there is one, and pin new links.
pub(super) fn attach_pinned(
    ebpf: &mut Ebpf,
    prog_name: &str,
    ifname: &str,
    links_dir: &Path,
) -> Result<(), DatapathError> {
    let pin = links_dir.join(link_name(prog_name, ifname));
    let what = format!("attaching {prog_name} to {ifname}");
    let prog = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| DatapathError::Other(format!("program {prog_name} missing")))?;
    if prog_name == program::XDP {
        let p: &mut Xdp = prog.try_into().map_err(prog_err(what.clone()))?;
        load_once(p.load()).map_err(prog_err(what.clone()))?;
        let adopted = adopt_link(&pin).map(|link| {
            XdpLink::try_from(link)
                .map_err(|e| e.to_string())
                .and_then(|l| p.attach_to_link(l).map(drop).map_err(|e| error_chain(&e)))
        });
        if !keep_adopted(&pin, adopted) {
            let id = p
                .attach(ifname, XdpMode::default())
                .map_err(prog_err(what.clone()))?;
            pin_link(
                p.take_link(id).map_err(prog_err(what.clone()))?,
                &pin,
                &what,
            )?;
        }
        return Ok(());
    }
    let p: &mut SchedClassifier = prog.try_into().map_err(prog_err(what.clone()))?;
    load_once(p.load()).map_err(prog_err(what.clone()))?;
    let adopted = adopt_link(&pin).map(|link| {
        SchedClassifierLink::try_from(link)
            .map_err(|e| e.to_string())
            .and_then(|l| p.attach_to_link(l).map(drop).map_err(|e| error_chain(&e)))
    });
    if !keep_adopted(&pin, adopted) {
        let attach_type = if prog_name == program::TO_CTR {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let id = p
            .attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(prog_err(what.clone()))?;
        pin_link(
            p.take_link(id).map_err(prog_err(what.clone()))?,
            &pin,
            &what,
        )?;
    }
    Ok(())
}

/// Whether a pinned link took the new program. One that could not is
/// unpinned (detaching it), so the caller attaches anew.
fn keep_adopted(pin: &Path, adopted: Option<Result<(), String>>) -> bool {
    match adopted {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(pin = %pin.display(), error = %e, "pinned link unusable; attaching anew");
            let _ = fs::remove_file(pin);
            false
        }
        None => false,
    }
}

/// Pin a new link so it outlives the daemon.
fn pin_link<L>(link: L, pin: &Path, what: &str) -> Result<(), DatapathError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let fd: FdLink = link
        .try_into()
        .map_err(|e| DatapathError::Other(format!("{what}: {e}")))?;
    fd.pin(pin)
        .map_err(|e| DatapathError::Other(format!("{what}: pinning: {}", error_chain(&e))))?;
    Ok(())
}

/// A program attached to several interfaces is loaded once.
fn load_once(
    r: Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    match r {
        Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        other => other,
    }
}

/// The pinned link at `pin`, if any. The pin stays: it is what keeps the
/// link (and so the attachment) alive while no daemon runs.
fn adopt_link(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(p) => {
            // `unpin` would delete the pin file; keep it and take an fd.
            let fd: FdLink = p.into();
            Some(fd)
        }
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "cannot open pinned link");
            None
        }
    }
}

/// The subnets a BERTH_LOCAL_NETS array holds, in slot order.
fn local_nets_listed(slots: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for slot in slots {
        if *slot == 0 {
            break;
        }
        out.push(slot & !LOCAL_NET_MORE);
        if slot & LOCAL_NET_MORE == 0 {
            break;
        }
    }
    out
}

/// The slot writes, in order, that turn BERTH_LOCAL_NETS from `slots` into
/// the subnets `want`. Each write is one 8-byte slot, ordered so that a
/// packet racing the update sees the old list, the new one, or the old one
/// plus new subnets (write a slot, then link it from the one before; copy
/// the last over a stale one, then unlink the last): a re-addressed bridge
/// is never unguarded.
fn local_net_writes(slots: &[u64], want: &[u64]) -> Vec<(u32, u64)> {
    let mut have = local_nets_listed(slots);
    let mut writes = Vec::new();
    for net in want {
        if !have.contains(net) {
            have.push(*net);
            let n = have.len();
            writes.push((n as u32 - 1, *net));
            if n > 1 {
                writes.push((n as u32 - 2, have[n - 2] | LOCAL_NET_MORE));
            }
        }
    }
    while let Some(i) = have.iter().position(|n| !want.contains(n)) {
        let n = have.len();
        if i + 1 < n {
            writes.push((i as u32, have[n - 1] | LOCAL_NET_MORE));
        }
        have.swap_remove(i);
        match have.len() {
            0 => writes.push((0, 0)),
            n => {
                writes.push((n as u32 - 1, have[n - 1]));
                writes.push((n as u32, 0));
            }
        }
    }
    writes
}

pub fn service_key(b: &Binding) -> ServiceKey {
    ServiceKey {
        host_addr_be: u32::from_ne_bytes(b.bind_ip.octets()),
        host_port_be: b.host_port.to_be(),
        proto: b.protocol.ip_proto(),
        _pad: 0,
    }
}

pub fn backend(b: &Binding) -> Backend {
    Backend {
        addr_be: u32::from_ne_bytes(b.container_ip.octets()),
        port_be: b.container_port.to_be(),
        _pad: 0,
    }
}

fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Which flow table an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowTable {
    /// BERTH_NAT / BERTH_CT.
    Established,
    /// BERTH_NAT_NEW / BERTH_CT_NEW: the handshake (TCP) or the first
    /// reply (UDP, ICMP echo) has not happened yet.
    Embryonic,
}

/// The idle timeout, in seconds, of a tracked flow of protocol `proto`
/// with flags `flags` (the NAT_F_* and CT_F_* bits agree) in `table`.
pub fn flow_timeout(proto: u8, flags: u8, table: FlowTable, t: &FlowTimeouts) -> u64 {
    let closing = flags & NAT_F_CLOSING != 0;
    match (proto, table) {
        (PROTO_TCP, FlowTable::Embryonic) if closing => t.tcp_syn.min(t.tcp_closing),
        (PROTO_TCP, FlowTable::Embryonic) => t.tcp_syn,
        (PROTO_TCP, FlowTable::Established) if closing => t.tcp_closing,
        (PROTO_TCP, FlowTable::Established) => t.tcp_established,
        (berth_maps::PROTO_UDP, FlowTable::Embryonic) => t.udp_single,
        (berth_maps::PROTO_UDP, _) if flags & NAT_F_REPLIED != 0 => t.udp_stream,
        (berth_maps::PROTO_UDP, _) => t.udp_single,
        _ => t.icmp,
    }
}

/// Whether a tracked published-port flow has been idle past its timeout.
pub fn flow_expired(
    key: &FlowKey,
    e: &NatEntry,
    table: FlowTable,
    now_ns: u64,
    t: &FlowTimeouts,
) -> bool {
    let timeout_s = flow_timeout(key.proto, e.flags, table, t);
    now_ns.saturating_sub(e.last_seen_ns) > timeout_s * 1_000_000_000
}

/// The reply-tuple key of the flow a clash-remap entry belongs to.
pub fn fwd_flow_key(wire: &FlowKey, f: &NatFwd) -> FlowKey {
    FlowKey {
        src_addr_be: f.backend_addr_be,
        dst_addr_be: wire.src_addr_be,
        src_port_be: f.backend_port_be,
        dst_port_be: f.remap_port_be,
        proto: wire.proto,
        _pad: [0; 3],
    }
}

/// Whether `e` (found under [`fwd_flow_key`]) is the flow of the remap
/// entry `wire`: the same host address and port and client port.
pub fn fwd_owns(wire: &FlowKey, e: &NatEntry) -> bool {
    e.host_addr_be == wire.dst_addr_be
        && e.host_port_be == wire.dst_port_be
        && e.client_port_be == wire.src_port_be
}

impl BpfDatapath {
    /// Forget the clash-remap entries whose flow no longer exists (expired
    /// or forgotten); an established flow's remap is never touched.
    fn forget_orphan_remaps(&self) {
        let mut m = self.lock();
        let orphans: Vec<FlowKey> = m
            .nat_fwd
            .iter()
            .filter_map(Result::ok)
            .filter(|(wire, f)| {
                let key = fwd_flow_key(wire, f);
                let e = self.flows.iter().find_map(|t| t.map.get(&key, 0).ok());
                !e.is_some_and(|e| fwd_owns(wire, &e))
            })
            .map(|(k, _)| k)
            .collect();
        for k in &orphans {
            let _ = m.nat_fwd.remove(k);
        }
    }
}

impl Datapath for BpfDatapath {
    fn insert(&self, b: &Binding) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let key = service_key(b);
        let new = m.services.get(&key, 0).is_err();
        let pk = port_key(b);
        let guarded = m.ports.get(&pk, 0).unwrap_or(0);
        if new {
            // Guard the port first: a host process must not slip in between.
            m.ports
                .insert(pk, guarded + 1, 0)
                .map_err(mappings_err(PORTS_MAP, self.max_mappings))?;
            if key.host_addr_be != 0 {
                m.exact += 1;
                m.write_wildcard_only()?;
            }
        }
        let inserted = m
            .services
            .insert(key, backend(b), 0)
            .map_err(mappings_err(SERVICES_MAP, self.max_mappings));
        if inserted.is_err() && new {
            // A full table: the port is not published, so not guarded.
            let _ = match guarded {
                0 => m.ports.remove(&pk),
                n => m.ports.insert(pk, n, 0),
            };
            if key.host_addr_be != 0 {
                m.exact -= 1;
                m.write_wildcard_only()?;
            }
        }
        inserted
    }

    fn remove(&self, b: &Binding) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let key = service_key(b);
        match m.services.remove(&key) {
            Ok(()) => {
                if key.host_addr_be != 0 {
                    m.exact = m.exact.saturating_sub(1);
                    m.write_wildcard_only()?;
                }
                let pk = port_key(b);
                match m.ports.get(&pk, 0) {
                    Ok(n) if n > 1 => m.ports.insert(pk, n - 1, 0).map_err(map_err(PORTS_MAP))?,
                    _ => {
                        let _ = m.ports.remove(&pk);
                    }
                }
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(SERVICES_MAP)(e)),
        }
        Ok(())
    }

    fn forget_flows(&self, gone: &[Binding]) -> Result<usize, DatapathError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let n = sweep(&self.flows, owned_by(gone))?;
        self.forget_orphan_remaps();
        Ok(n)
    }

    fn forget_endpoint_flows(&self, addrs: &[Ipv4Addr]) -> Result<usize, DatapathError> {
        if addrs.is_empty() {
            return Ok(0);
        }
        sweep(&self.ct_flows, touching(addrs))
    }

    fn retain(&self, keep: &[Binding]) -> Result<usize, DatapathError> {
        let keep_bindings = keep;
        let keep: HashSet<(ServiceKey, (u32, u16))> = keep
            .iter()
            .map(|b| {
                let be = backend(b);
                (service_key(b), (be.addr_be, be.port_be))
            })
            .collect();
        let mut m = self.lock();
        let stale: Vec<ServiceKey> = m
            .services
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| !keep.contains(&(*k, (v.addr_be, v.port_be))))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            match m.services.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(SERVICES_MAP)(e)),
            }
        }
        // Rebuild the guarded ports from what is published: counts kept
        // across a crash may be off.
        let mut want: std::collections::HashMap<PortKey, u32> = std::collections::HashMap::new();
        for (k, _) in m.services.iter().filter_map(Result::ok) {
            let pk = PortKey {
                port_be: k.host_port_be,
                proto: k.proto,
                _pad: 0,
            };
            *want.entry(pk).or_default() += 1;
        }
        let have: Vec<PortKey> = m.ports.keys().filter_map(Result::ok).collect();
        for pk in have {
            if !want.contains_key(&pk) {
                let _ = m.ports.remove(&pk);
            }
        }
        for (pk, n) in want {
            m.ports.insert(pk, n, 0).map_err(map_err(PORTS_MAP))?;
        }
        m.recount_exact()?;
        drop(m);
        let forgotten = sweep(&self.flows, owned_by_none_of(keep_bindings))?;
        if forgotten > 0 {
            self.forget_orphan_remaps();
            tracing::info!(
                flows = forgotten,
                "forgot tracked flows of bindings the store does not have"
            );
        }
        Ok(stale.len())
    }

    fn set_host_addrs(&self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let want: HashSet<u32> = addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        let have: HashSet<u32> = m.host_addrs.keys().filter_map(Result::ok).collect();
        for a in have.difference(&want) {
            let _ = m.host_addrs.remove(a);
        }
        for a in want.difference(&have) {
            m.host_addrs
                .insert(*a, 1, 0)
                .map_err(map_err(HOST_ADDRS_MAP))?;
        }
        Ok(())
    }

    fn set_bridge_subnets(&self, subnets: &[Ipv4Cidr]) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let want: Vec<u64> = subnets
            .iter()
            .map(|c| {
                let n = c.network();
                local_net_encode(u32::from_ne_bytes(n.addr.octets()), n.prefix_len)
            })
            .collect();
        if want.len() > LOCAL_NETS_MAX as usize {
            return Err(DatapathError::Other(format!(
                "the bridge has {} IPv4 subnets; berth guards at most {LOCAL_NETS_MAX}",
                want.len()
            )));
        }
        let err = map_err(LOCAL_NETS_MAP);
        let mut slots = Vec::with_capacity(LOCAL_NETS_MAX as usize);
        for i in 0..LOCAL_NETS_MAX {
            slots.push(m.local_nets.get(&i, 0).map_err(&err)?);
        }
        for (i, v) in local_net_writes(&slots, &want) {
            m.local_nets.set(i, v, 0).map_err(&err)?;
        }
        Ok(())
    }

    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let m = self.lock();
        COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v = m
                    .counters
                    .get(&(i as u32), 0)
                    .map_err(map_err(COUNTERS_MAP))?;
                Ok((*name, v.iter().sum()))
            })
            .collect()
    }

    fn expire_flows(&self) -> Result<usize, DatapathError> {
        let t = *self.timeouts.lock().unwrap_or_else(|p| p.into_inner());
        let now = monotonic_ns();
        let from_policy = sweep(&self.ct_flows, |k, v, table| {
            let timeout = flow_timeout(k.proto, v.flags, table, &t);
            now.saturating_sub(v.last_seen_ns) > timeout * 1_000_000_000
        })?;
        let expired = sweep(&self.flows, |k, v, table| {
            flow_expired(k, v, table, now, &t)
        })?;
        self.forget_orphan_remaps();
        Ok(expired + from_policy)
    }

    fn set_endpoint(&self, ip: Ipv4Addr, task_id: u32, policy: bool) -> Result<(), DatapathError> {
        self.policy().set_endpoint(ip, task_id, policy)
    }

    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        self.policy().remove_endpoint(ip)
    }

    fn set_policy(
        &self,
        task_id: u32,
        ingress: &[PolicyRule],
        egress: &[PolicyRule],
    ) -> Result<(), DatapathError> {
        self.policy().set_policy(task_id, ingress, egress)
    }

    fn remove_policy(&self, task_id: u32) -> Result<(), DatapathError> {
        self.policy().remove_policy(task_id)
    }

    fn set_group_members(&self, sg_id: u32, members: &[Ipv4Addr]) -> Result<(), DatapathError> {
        self.policy().set_group_members(sg_id, members)
    }

    fn retain_policy(
        &self,
        endpoints: &[Ipv4Addr],
        policies: &[u32],
        groups: &[u32],
    ) -> Result<usize, DatapathError> {
        let (n, gone) = self.policy().retain(endpoints, policies, groups);
        let forgotten = self.forget_endpoint_flows(&gone)?;
        if forgotten > 0 {
            tracing::info!(
                flows = forgotten,
                "forgot policy-tracked flows of tasks the store does not have"
            );
        }
        Ok(n)
    }

    fn set_port_gate(&self, on: bool) -> Result<(), DatapathError> {
        self.lock()
            .config
            .set(CONFIG_PORT_GATE, u64::from(on), 0)
            .map_err(map_err(CONFIG_MAP))
    }

    fn set_no_policy(&self, none: bool) -> Result<(), DatapathError> {
        self.lock()
            .config
            .set(berth_maps::CONFIG_NO_POLICY, u64::from(none), 0)
            .map_err(map_err(CONFIG_MAP))
    }

    fn set_flow_timeouts(&self, timeouts: FlowTimeouts) {
        *self.timeouts.lock().unwrap_or_else(|p| p.into_inner()) = timeouts;
    }

    fn status(&self) -> Result<Option<super::DatapathStatus>, DatapathError> {
        Ok(Some(self.status.read()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(third: u8, len: u8) -> u64 {
        local_net_encode(u32::from_ne_bytes([172, 17, third, 0]), len)
    }

    /// Applies the writes one by one, as packets would see them.
    fn replay(from: &[u64], want: &[u64]) {
        let mut slots = vec![0u64; LOCAL_NETS_MAX as usize];
        for (i, v) in local_net_writes(&slots.clone(), from) {
            slots[i as usize] = v;
        }
        assert_eq!(local_nets_listed(&slots), from);
        let kept: Vec<u64> = from.iter().filter(|n| want.contains(n)).copied().collect();
        for (i, v) in local_net_writes(&slots.clone(), want) {
            slots[i as usize] = v;
            let seen = local_nets_listed(&slots);
            for k in &kept {
                assert!(seen.contains(k), "{k:#x} unguarded mid-update: {seen:x?}");
            }
            assert!(seen.iter().all(|n| from.contains(n) || want.contains(n)));
        }
        let mut got = local_nets_listed(&slots);
        got.sort();
        let mut w = want.to_vec();
        w.sort();
        assert_eq!(got, w);
    }

    #[test]
    fn bridge_subnets_are_rewritten_without_a_gap() {
        let (a, b, c, d) = (net(0, 16), net(1, 24), net(2, 24), net(3, 24));
        replay(&[], &[a]);
        replay(&[a], &[]);
        replay(&[a], &[b]);
        replay(&[a, b, c], &[c]);
        replay(&[a, b, c], &[a]);
        replay(&[a, b, c], &[b, d]);
        replay(&[a, b], &[a, b]);
    }
}
