//! A private network + mount namespace for `BPF_PROG_TEST_RUN`, so FIB lookups
//! and MAC addresses in the output frames are deterministic and nothing on
//! the machine changes. Everything lives on one thread; when it ends, the
//! namespaces go with it.
use std::{net::Ipv4Addr, process::Command};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{Program, ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use berth::{
    datapath::ebpf_object,
    model::{Binding, Protocol},
};
use berth_maps::{
    Backend, CtEntry, FlowKey, NatEntry, NatFwd, PortAddrs, ServiceKey, PORT_ADDRS_MAX,
};

pub const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const HOST2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
pub const C1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
pub const C2: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const BRIDGE_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x01];
pub const C1_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0, 0x02];

fn sh(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ns_id(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Run `f` on a thread of its own inside fresh network and mount
/// namespaces holding a host with an uplink (`up0`, a veth, 192.0.2.1/24 and
/// 192.0.2.100/24; neighbour 192.0.2.2) and a container network (`docker0`, a veth standing in for the bridge,
/// 172.17.0.1/16; neighbour 172.17.0.2, 172.17.0.3 unresolved), and the
/// same over IPv6 (`2001:db8::1/64`, neighbour `2001:db8::2`; `fd00::1/64`,
/// neighbour `fd00::2`).
pub fn in_fixture_ns<T: Send + 'static>(f: impl FnOnce(&mut Env) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let root = ns_id("/proc/1/ns/net");
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let me = ns_id("/proc/thread-self/ns/net");
        assert_ne!(me, root, "still in the root network namespace; refusing to configure it");
        // Keep our mounts from propagating back to the host.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "make / slave: {}", std::io::Error::last_os_error());
        sh("ip link set lo up");
        sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        sh("ip link add up0 address 02:00:00:00:00:01 type veth peer name up0p && ip link set up0p up && ip link set up0 up");
        sh("ip addr add 192.0.2.1/24 dev up0 && ip addr add 192.0.2.100/24 dev up0");
        sh("ip neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent");
        sh("ip link add docker0 address 02:42:00:00:00:01 type veth peer name docker0p && ip link set docker0p up && ip link set docker0 up");
        sh("ip addr add 172.17.0.1/16 dev docker0");
        sh("ip neigh add 172.17.0.2 lladdr 02:42:ac:11:00:02 dev docker0 nud permanent");
        // IPv6 beside it (NAT66): 2001:db8::1 on the uplink, neighbour
        // 2001:db8::2 (the client); fd00::1/64 on the bridge, neighbour
        // fd00::2 (the first container's MAC).
        sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        sh("ip -6 addr add 2001:db8::1/64 dev up0 nodad && ip -6 addr add fd00::1/64 dev docker0 nodad");
        sh("ip -6 neigh add 2001:db8::2 lladdr 02:00:00:00:00:02 dev up0 nud permanent");
        sh("ip -6 neigh add fd00::2 lladdr 02:42:ac:11:00:02 dev docker0 nud permanent");
        let mut env = load_env(&ebpf_object().expect("the embedded eBPF object inflates"));
        f(&mut env)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Loads an eBPF object (berth's, or another build of it, for the bench)
/// with a bpffs of its own, in the calling fixture thread's namespaces.
pub fn load_env(object: &[u8]) -> Env {
    let bpffs = tempdir();
    sh(&format!("mount -t bpf bpf {bpffs}"));
    // Room for the 65 000 mappings the bench publishes.
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&bpffs)
        .map_max_entries(berth_maps::SERVICES_MAP, 131_072)
        .map_max_entries(berth_maps::PORTS_MAP, 131_072)
        .load(object)
        .expect("load eBPF object");
    let mut env = Env { ebpf };
    load_all(&mut env.ebpf);
    // As the daemon does before attaching; an earlier build's object (the
    // bench's) may have no program array.
    if env.ebpf.map(berth_maps::TAILS_MAP).is_some() {
        berth::datapath::fill_tails(&mut env.ebpf).expect("fill BERTH_TAILS");
    }
    env
}

/// Loads (verifies) every program of the object, whatever its kind, so a
/// program the verifier rejects fails here with its name, and a newly added
/// program shows up in [`Env::verifier_budget`] without a change here.
fn load_all(ebpf: &mut Ebpf) {
    for (name, prog) in ebpf.programs_mut() {
        let r = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::SkLookup(p) => p.load(),
            Program::SkMsg(p) => p.load(),
            Program::SkSkb(p) => p.load(),
            Program::SocketFilter(p) => p.load(),
            other => panic!(
                "{name}: no loader for {:?} programs here",
                other.prog_type()
            ),
        };
        r.unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
    }
}

fn tempdir() -> String {
    let out = Command::new("mktemp").arg("-d").output().expect("mktemp");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct Env {
    pub ebpf: Ebpf,
}

/// A `BERTH_SERVICES` value before layout 3 (no counters slot), so the
/// bench can publish into an earlier build's object beside this one.
#[repr(C)]
#[derive(Clone, Copy)]
struct BackendV2 {
    addr_be: u32,
    port_be: u16,
    _pad: u16,
}
// SAFETY: repr(C), plain integers, no padding (4 + 2 + 2 bytes).
unsafe impl aya::Pod for BackendV2 {}

pub struct Verdict {
    pub code: u32,
    /// The frame as the program left it (XDP: any metadata in front).
    pub frame: Vec<u8>,
}

/// A `BPF_PROG_TEST_RUN` the kernel refused, with its errno.
#[derive(Debug)]
pub struct TestRunError {
    pub errno: Option<i32>,
    pub message: String,
}

impl std::fmt::Display for TestRunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl TestRunError {
    fn new(prog: &str, e: ProgramError) -> Self {
        let errno = match &e {
            ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
            _ => None,
        };
        Self {
            errno,
            message: format!("test_run {prog}: {e:?}"),
        }
    }
}

/// One loaded program as the kernel's verifier left it (`bpf_prog_info`).
#[derive(Clone, Debug)]
pub struct ProgramBudget {
    pub name: String,
    pub kind: String,
    /// Instructions the verifier walked (`verified_insns`, Linux 5.16+);
    /// the number its one-million limit applies to.
    pub verified_insns: Option<u32>,
    /// Size after the verifier's rewrites, in bytes (8 per instruction).
    pub xlated_bytes: Option<u32>,
    /// Size of the JIT-compiled machine code, in bytes.
    pub jited_bytes: u32,
}

pub fn binding(
    bind_ip: Ipv4Addr,
    host_port: u16,
    c: Ipv4Addr,
    container_port: u16,
    p: Protocol,
) -> Binding {
    Binding {
        task: "t".into(),
        container_ip: c.into(),
        bind_ip: bind_ip.into(),
        host_port,
        container_port,
        protocol: p,
        ecs: Default::default(),
        cni: None,
        docker_events: false,
    }
}

/// The ifindex of `name` in the calling thread's network namespace (0 if
/// there is none).
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn finish(
    prog: &str,
    r: Result<aya::programs::TestRunResult, ProgramError>,
    mut out: Vec<u8>,
) -> Result<(Verdict, u128), TestRunError> {
    let r = r.map_err(|e| TestRunError::new(prog, e))?;
    out.truncate(r.data_size_out as usize);
    Ok((
        Verdict {
            code: r.return_value,
            frame: out,
        },
        r.duration.as_nanos(),
    ))
}

impl Env {
    pub fn publish(&mut self, b: &Binding) {
        let key = berth::datapath::bpf_keys::service_key(b);
        let v = berth::datapath::bpf_keys::backend(b);
        // As the daemon does: the port's bit before the mapping. Unpublish
        // leaves it set, which only costs a probe.
        if key.host_addr_be != 0 {
            self.set_exact_port(b.protocol.ip_proto(), b.host_port, true);
        }
        let map = self.ebpf.map_mut("BERTH_SERVICES").unwrap();
        if let Ok(mut m) = HashMap::<_, ServiceKey, Backend>::try_from(&mut *map) {
            m.insert(key, v, 0).unwrap();
            return;
        }
        // An object from before layout 3 (the bench's earlier build).
        let mut m: HashMap<&mut MapData, ServiceKey, BackendV2> = HashMap::try_from(map).unwrap();
        let old = BackendV2 {
            addr_be: v.addr_be,
            port_be: v.port_be,
            _pad: 0,
        };
        m.insert(key, old, 0).unwrap();
    }

    /// Takes `b` out of `BERTH_SERVICES` (of this object or an earlier one).
    pub fn unpublish(&mut self, b: &Binding) {
        let key = berth::datapath::bpf_keys::service_key(b);
        let map = self.ebpf.map_mut("BERTH_SERVICES").unwrap();
        if let Ok(mut m) = HashMap::<_, ServiceKey, Backend>::try_from(&mut *map) {
            m.remove(&key).unwrap();
            return;
        }
        let mut m: HashMap<&mut MapData, ServiceKey, BackendV2> = HashMap::try_from(map).unwrap();
        m.remove(&key).unwrap();
    }

    /// Sets or clears the `BERTH_EXACT_PORTS` bit of (`proto`, `port`);
    /// nothing on an object from before that map (the bench's earlier
    /// build, which always probes).
    pub fn set_exact_port(&mut self, proto: u8, port: u16, on: bool) {
        let Some(map) = self.ebpf.map_mut(berth_maps::EXACT_PORTS_MAP) else {
            return;
        };
        let mut m: Array<&mut MapData, u64> = Array::try_from(map).unwrap();
        let (i, bit) = berth_maps::exact_ports_slot(proto, port);
        let w = m.get(&i, 0).unwrap();
        m.set(i, if on { w | bit } else { w & !bit }, 0).unwrap();
    }

    pub fn host_addr(&mut self, a: Ipv4Addr) {
        let mut m: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_HOST_ADDRS").unwrap()).unwrap();
        m.insert(u32::from_ne_bytes(a.octets()), 1, 0).unwrap();
    }

    /// An address the host no longer has, as the daemon's sync removes it
    /// (the daemon also ends its flows; a test does that itself).
    pub fn remove_host_addr(&mut self, a: Ipv4Addr) {
        let mut m: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_HOST_ADDRS").unwrap()).unwrap();
        m.remove(&u32::from_ne_bytes(a.octets())).unwrap();
    }

    /// One more bridge subnet (`addr` is its network address).
    pub fn bridge_subnet(&mut self, addr: Ipv4Addr, prefix_len: u8) {
        let mut m: Array<&mut MapData, u64> =
            Array::try_from(self.ebpf.map_mut("BERTH_LOCAL_NETS").unwrap()).unwrap();
        let n = (0..berth_maps::LOCAL_NETS_MAX)
            .find(|i| m.get(i, 0).unwrap() == 0)
            .expect("a free subnet slot");
        let net = berth_maps::local_net_encode(u32::from_ne_bytes(addr.octets()), prefix_len);
        m.set(n, net, 0).unwrap();
        if n > 0 {
            let prev = m.get(&(n - 1), 0).unwrap();
            m.set(n - 1, prev | berth_maps::LOCAL_NET_MORE, 0).unwrap();
        }
    }

    /// A new veth pair in the fixture namespace standing in for a bridge
    /// port (`name`, and `name`p); returns the port's ifindex.
    pub fn add_port(&mut self, name: &str) -> u32 {
        sh(&format!(
            "ip link add {name} type veth peer name {name}p && ip link set {name} up"
        ));
        ifindex(name)
    }

    /// What the daemon learned about bridge port `ifindex`: its addresses.
    pub fn port_addrs(&mut self, ifindex: u32, addrs: &[Ipv4Addr]) {
        assert!(addrs.len() <= PORT_ADDRS_MAX);
        let mut p = PortAddrs {
            len: addrs.len() as u32,
            ..Default::default()
        };
        for (slot, a) in p.addrs_be.iter_mut().zip(addrs) {
            *slot = u32::from_ne_bytes(a.octets());
        }
        let mut m: HashMap<&mut MapData, u32, PortAddrs> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_PORT_ADDRS").unwrap()).unwrap();
        m.insert(ifindex, p, 0).unwrap();
    }

    /// What the daemon learned about bridge port `ifindex`: more IPv6
    /// addresses (`BERTH_PORT_ADDRS6`, one entry each, and the port's list
    /// in `BERTH_PORT_LIST6`).
    pub fn port_addrs6(&mut self, ifindex: u32, addrs: &[std::net::Ipv6Addr]) {
        let mut m: HashMap<&mut MapData, berth_maps::PortAddr6, u32> =
            HashMap::try_from(self.ebpf.map_mut(berth_maps::PORT_ADDRS6_MAP).unwrap()).unwrap();
        for a in addrs {
            let key = berth_maps::PortAddr6 {
                ifindex,
                addr: a.octets(),
            };
            m.insert(key, 1, 0).unwrap();
        }
        let mut l: HashMap<&mut MapData, u32, berth_maps::PortAddrs6> =
            HashMap::try_from(self.ebpf.map_mut(berth_maps::PORT_LIST6_MAP).unwrap()).unwrap();
        let mut list = l.get(&ifindex, 0).unwrap_or_default();
        for a in addrs {
            let n = list.len as usize;
            assert!(n < PORT_ADDRS_MAX);
            list.addrs[n] = a.octets();
            list.len += 1;
        }
        l.insert(ifindex, list, 0).unwrap();
    }

    /// Empties slot `slot` of `BERTH_TAILS`: the tail call there falls
    /// through, as with a daemon whose build has no program for it.
    pub fn clear_tail(&mut self, slot: u32) {
        let mut m: aya::maps::ProgramArray<&mut MapData> =
            aya::maps::ProgramArray::try_from(self.ebpf.map_mut(berth_maps::TAILS_MAP).unwrap())
                .unwrap();
        m.clear_index(&slot).unwrap();
    }

    /// Makes `ip` an IPv6 endpoint of task `task_id`, with policy or without
    /// (no rules: with policy, nothing is let in).
    pub fn set_endpoint6(&mut self, ip: std::net::Ipv6Addr, task_id: u32, policy: bool) {
        let mut m: HashMap<&mut MapData, [u8; 16], berth_maps::Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(berth_maps::ENDPOINTS6_MAP).unwrap()).unwrap();
        let flags = if policy { berth_maps::EP_F_POLICY } else { 0 };
        m.insert(ip.octets(), berth_maps::Endpoint { task_id, flags }, 0)
            .unwrap();
    }

    /// Makes `a` one of the host's IPv6 addresses, as the daemon does.
    pub fn host_addr6(&mut self, a: std::net::Ipv6Addr) {
        let mut m: HashMap<&mut MapData, [u8; 16], u32> =
            HashMap::try_from(self.ebpf.map_mut(berth_maps::HOST_ADDRS6_MAP).unwrap()).unwrap();
        m.insert(a.octets(), 1, 0).unwrap();
    }

    /// A datapath counter, summed over CPUs.
    pub fn counter(&self, c: berth_maps::Counter) -> u64 {
        let m: aya::maps::PerCpuArray<&MapData, u64> =
            aya::maps::PerCpuArray::try_from(self.ebpf.map("BERTH_COUNTERS").unwrap()).unwrap();
        m.get(&(c as u32), 0).unwrap().iter().sum()
    }

    /// Every tracked published-port flow, established or not.
    pub fn nat_entries(&mut self) -> Vec<(FlowKey, NatEntry)> {
        let mut v = self.map_entries::<FlowKey, NatEntry>("BERTH_NAT");
        v.extend(self.map_entries::<FlowKey, NatEntry>("BERTH_NAT_NEW"));
        v
    }

    /// Every entry of the hash (or LRU hash) map `name`.
    pub fn map_entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Vec<(K, V)> {
        let m: HashMap<&MapData, K, V> = HashMap::try_from(self.ebpf.map(name).unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    /// The entry of `key` in the hash (or LRU hash) map `name`.
    pub fn map_get<K: aya::Pod, V: aya::Pod>(&self, name: &str, key: &K) -> Option<V> {
        let m: HashMap<&MapData, K, V> = HashMap::try_from(self.ebpf.map(name).unwrap()).unwrap();
        m.get(key, 0).ok()
    }

    /// Makes `ip` an endpoint of task `task_id`, with policy or without.
    pub fn set_endpoint(&mut self, ip: Ipv4Addr, task_id: u32, policy: bool) {
        let mut m: HashMap<&mut MapData, u32, berth_maps::Endpoint> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_ENDPOINTS").unwrap()).unwrap();
        let flags = if policy { berth_maps::EP_F_POLICY } else { 0 };
        m.insert(
            u32::from_ne_bytes(ip.octets()),
            berth_maps::Endpoint { task_id, flags },
            0,
        )
        .unwrap();
    }

    /// Task `task_id`'s IPv6 rules in direction `dir` (`berth_maps::DIR_*`).
    pub fn set_rules6(&mut self, task_id: u32, dir: u32, rules: &[berth::datapath::PolicyRule]) {
        use berth_maps::{Policy6, PolicyKey, Rule6, MAX_RULES};
        let mut p = Box::new(Policy6 {
            len: rules.len() as u32,
            _pad: 0,
            rules: [Rule6::default(); MAX_RULES],
        });
        for (slot, r) in p.rules.iter_mut().zip(rules) {
            *slot = berth::datapath::encode_rule6(r);
        }
        let mut m: HashMap<&mut MapData, PolicyKey, Policy6> =
            HashMap::try_from(self.ebpf.map_mut(berth_maps::POLICY6_MAP).unwrap()).unwrap();
        m.insert(PolicyKey { task_id, dir }, *p, 0).unwrap();
    }

    /// Task `task_id`'s rules in direction `dir` (`berth_maps::DIR_*`).
    pub fn set_rules(&mut self, task_id: u32, dir: u32, rules: &[berth::datapath::PolicyRule]) {
        use berth_maps::{Policy, PolicyKey, Rule, MAX_RULES};
        let mut p = Box::new(Policy {
            len: rules.len() as u32,
            _pad: 0,
            rules: [Rule::default(); MAX_RULES],
        });
        for (slot, r) in p.rules.iter_mut().zip(rules) {
            *slot = berth::datapath::encode_rule(r);
        }
        let mut m: HashMap<&mut MapData, PolicyKey, Policy> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_POLICY").unwrap()).unwrap();
        m.insert(PolicyKey { task_id, dir }, *p, 0).unwrap();
    }

    /// Forgets every tracked flow; returns how many there were.
    /// The tracked flow whose reply direction is `key`, established or not.
    pub fn nat_lookup(&self, key: &FlowKey) -> Option<NatEntry> {
        self.map_get("BERTH_NAT", key)
            .or_else(|| self.map_get("BERTH_NAT_NEW", key))
    }

    /// The client port a clash remapped, by the client-side tuple.
    pub fn nat_fwd_lookup(&self, wire: &FlowKey) -> Option<NatFwd> {
        self.map_get("BERTH_NAT_FWD", wire)
    }

    /// The policy-tracked flow of `key`: (established?, entry).
    pub fn ct_lookup(&self, key: &FlowKey) -> Option<(bool, CtEntry)> {
        self.map_get("BERTH_CT", key)
            .map(|e| (true, e))
            .or_else(|| self.map_get("BERTH_CT_NEW", key).map(|e| (false, e)))
    }

    /// Forgets every tracked flow and remap; returns how many flows there were.
    pub fn clear_nat(&mut self) -> usize {
        let mut n = 0;
        for name in ["BERTH_NAT", "BERTH_NAT_NEW"] {
            n += self.clear_map::<FlowKey, NatEntry>(name);
        }
        self.clear_map::<FlowKey, NatFwd>("BERTH_NAT_FWD");
        n
    }

    /// Whether the loaded object has a map called `name`.
    pub fn has_map(&self, name: &str) -> bool {
        self.ebpf.map(name).is_some()
    }

    /// Empties the hash (or LRU hash) map `name`; returns how many it held.
    pub fn clear_map<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> usize {
        let mut m: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.ebpf.map_mut(name).unwrap()).unwrap();
        let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
        for k in &keys {
            let _ = m.remove(k);
        }
        keys.len()
    }

    /// Each loaded program's verifier and JIT figures, by name.
    pub fn verifier_budget(&self) -> Vec<ProgramBudget> {
        let mut out: Vec<ProgramBudget> = self
            .ebpf
            .programs()
            .map(|(name, prog)| {
                let info = prog
                    .info()
                    .unwrap_or_else(|e| panic!("bpf_prog_info of {name}: {e:?}"));
                ProgramBudget {
                    name: name.to_string(),
                    kind: format!("{:?}", prog.prog_type()),
                    verified_insns: info.verified_instruction_count(),
                    xlated_bytes: info.size_translated(),
                    jited_bytes: info.size_jitted(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn try_tc_run(
        &self,
        prog: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, u128), TestRunError> {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        });
        finish(prog, r, out)
    }

    /// One run of a TC program as if the frame arrived on `ifindex`
    /// (`__sk_buff.ifindex`; the test run's default device is `lo`).
    pub fn try_tc_on(
        &self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<Verdict, TestRunError> {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff up to and including `ifindex` (offset 40).
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        });
        finish(prog, r, out).map(|r| r.0)
    }

    pub fn tc_on(&self, prog: &str, frame: &[u8], ifindex: u32) -> Verdict {
        self.try_tc_on(prog, frame, ifindex)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_xdp_run(
        &self,
        prog: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, u128), TestRunError> {
        let p: &Xdp = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        });
        finish(prog, r, out)
    }

    /// One run of a TC program; `Err` when the kernel refuses the frame.
    pub fn try_tc(&self, prog: &str, frame: &[u8]) -> Result<Verdict, TestRunError> {
        self.try_tc_run(prog, frame, 1).map(|r| r.0)
    }

    /// One run of an XDP program; `Err` when the kernel refuses the frame.
    pub fn try_xdp(&self, prog: &str, frame: &[u8]) -> Result<Verdict, TestRunError> {
        self.try_xdp_run(prog, frame, 1).map(|r| r.0)
    }

    /// One run of a TC program for a frame that entered the host by
    /// interface `ingress_ifindex` (`__sk_buff.ingress_ifindex`; 0, the
    /// default, is a frame the host itself sent).
    pub fn tc_from(&self, prog: &str, frame: &[u8], ingress_ifindex: u32) -> Verdict {
        // __sk_buff up to and including ingress_ifindex (offset 36).
        let mut ctx = [0u8; 40];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        });
        finish(prog, r, out)
            .map(|r| r.0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn tc(&self, prog: &str, frame: &[u8]) -> Verdict {
        self.try_tc(prog, frame).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn xdp(&self, prog: &str, frame: &[u8]) -> Verdict {
        self.try_xdp(prog, frame).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Nanoseconds per run of a TC program (the median of `runs` runs),
    /// each run on a fresh copy of `frame`. `BPF_PROG_TEST_RUN`'s `repeat`
    /// runs a program again on the buffer it left: a program that rewrites
    /// the frame (DNAT, SNAT) would be timed on its own output, a packet of
    /// no flow, from the second repeat on. Each figure includes the
    /// kernel's timer overhead, so compare it with an empty program's.
    pub fn tc_ns(&self, prog: &str, frame: &[u8], runs: u32) -> f64 {
        median_ns(runs, || {
            self.try_tc_run(prog, frame, 1)
                .unwrap_or_else(|e| panic!("{e}"))
                .1
        })
    }

    /// As [`Env::tc_ns`], for an XDP program.
    pub fn xdp_ns(&self, prog: &str, frame: &[u8], runs: u32) -> f64 {
        median_ns(runs, || {
            self.try_xdp_run(prog, frame, 1)
                .unwrap_or_else(|e| panic!("{e}"))
                .1
        })
    }
}

/// The median of `runs` (at least one) timings of `run`.
fn median_ns(runs: u32, mut run: impl FnMut() -> u128) -> f64 {
    let mut v: Vec<u128> = (0..runs.max(1)).map(|_| run()).collect();
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) as f64 / 2.0
    } else {
        v[mid] as f64
    }
}

/// A rule for `proto` (`None`: every protocol) on `ports`, from or to
/// `peer`, of no ICMP type.
pub fn rule(
    proto: Option<berth::datapath::RuleProto>,
    ports: (u16, u16),
    peer: berth::datapath::RulePeer,
) -> berth::datapath::PolicyRule {
    berth::datapath::PolicyRule {
        proto,
        ports,
        icmp_type: None,
        icmp_code: None,
        peer,
    }
}
