//! A private network + mount namespace for BPF_PROG_TEST_RUN, so FIB lookups
//! and MAC addresses in the output frames are deterministic and nothing on
//! the machine changes. Everything lives on one thread; when it ends, the
//! namespaces go with it.
use std::{net::Ipv4Addr, process::Command};

use aya::{
    maps::{HashMap, MapData},
    programs::{Program, ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use berth::{
    datapath::ebpf_object,
    model::{Binding, Protocol},
};
use berth_maps::{Backend, FlowKey, NatEntry, ServiceKey};

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
/// 172.17.0.1/16; neighbour 172.17.0.2, 172.17.0.3 unresolved).
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
        let bpffs = tempdir();
        sh(&format!("mount -t bpf bpf {bpffs}"));
        sh("ip link set lo up");
        sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        sh("ip link add up0 address 02:00:00:00:00:01 type veth peer name up0p && ip link set up0p up && ip link set up0 up");
        sh("ip addr add 192.0.2.1/24 dev up0 && ip addr add 192.0.2.100/24 dev up0");
        sh("ip neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent");
        sh("ip link add docker0 address 02:42:00:00:00:01 type veth peer name docker0p && ip link set docker0p up && ip link set docker0 up");
        sh("ip addr add 172.17.0.1/16 dev docker0");
        sh("ip neigh add 172.17.0.2 lladdr 02:42:ac:11:00:02 dev docker0 nud permanent");
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&bpffs)
            .load(ebpf_object())
            .expect("load eBPF object");
        let mut env = Env { ebpf };
        load_all(&mut env.ebpf);
        f(&mut env)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
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

pub struct Verdict {
    pub code: u32,
    /// The frame as the program left it (XDP: any metadata in front).
    pub frame: Vec<u8>,
}

/// A BPF_PROG_TEST_RUN the kernel refused, with its errno.
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
        TestRunError {
            errno,
            message: format!("test_run {prog}: {e:?}"),
        }
    }
}

/// One loaded program as the kernel's verifier left it (bpf_prog_info).
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
        container_ip: c,
        bind_ip,
        host_port,
        container_port,
        protocol: p,
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
        let mut m: HashMap<&mut MapData, ServiceKey, Backend> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_SERVICES").unwrap()).unwrap();
        m.insert(
            berth::datapath::bpf_keys::service_key(b),
            berth::datapath::bpf_keys::backend(b),
            0,
        )
        .unwrap();
    }

    pub fn host_addr(&mut self, a: Ipv4Addr) {
        let mut m: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_HOST_ADDRS").unwrap()).unwrap();
        m.insert(u32::from_ne_bytes(a.octets()), 1, 0).unwrap();
    }

    pub fn nat_entries(&mut self) -> Vec<(FlowKey, NatEntry)> {
        let m: HashMap<&mut MapData, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_NAT").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    /// The tracked flow whose reply direction is `key`, if any.
    pub fn nat_lookup(&self, key: &FlowKey) -> Option<NatEntry> {
        let m: HashMap<&MapData, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map("BERTH_NAT").unwrap()).unwrap();
        m.get(key, 0).ok()
    }

    /// Forgets every tracked flow; returns how many there were.
    pub fn clear_nat(&mut self) -> usize {
        let mut m: HashMap<&mut MapData, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map_mut("BERTH_NAT").unwrap()).unwrap();
        let keys: Vec<FlowKey> = m.keys().filter_map(Result::ok).collect();
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

    /// Mean nanoseconds per run over `repeat` runs (for benchmarks).
    pub fn tc_ns(&self, prog: &str, frame: &[u8], repeat: u32) -> u128 {
        self.try_tc_run(prog, frame, repeat)
            .unwrap_or_else(|e| panic!("{e}"))
            .1
    }

    pub fn xdp_ns(&self, prog: &str, frame: &[u8], repeat: u32) -> u128 {
        self.try_xdp_run(prog, frame, repeat)
            .unwrap_or_else(|e| panic!("{e}"))
            .1
    }
}
