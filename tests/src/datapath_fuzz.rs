//! The datapath's randomized run: mutated frames through every packet
//! program with `BPF_PROG_TEST_RUN`, in one private namespace (see
//! [`crate::testrun`]), checked against invariants instead of expected
//! bytes:
//!
//! - a frame passed or dropped untranslated is byte-identical;
//! - a translated frame differs from its input only in the fields a NAT
//!   may change (MACs, TTL - 1, IPv4 checksum, the one rewritten address,
//!   the one rewritten port, the L4 checksum; for an ICMP error the outer
//!   address, the quoted address and port and the checksums covering them;
//!   the client's port only as `BERTH_NAT_FWD` / the flow's entry say, when a
//!   clash remapped it),
//! - a TCP packet other than a SYN (no ACK, RST, FIN) never opens a flow,
//!   goes where the mappings (ingress) or the tracked flow (reply) say, and
//!   each checksum changes by exactly what the translation changed in what
//!   it covers (so it verifies when the input's did, and a wrong one stays
//!   wrong by the same amount);
//! - IPv6 to and from published IPv6 ports (NAT66) by the same rules, as
//!   `v6.rs` says, with a clash-remapped flow among the seeds' flows;
//! - only well-formed IPv4 with TTL > 1 is translated; of a fragmented
//!   datagram, the first fragment (MF, offset 0) like any packet, a later
//!   fragment only after the run saw its datagram's first fragment (same
//!   source, destination, protocol and IP id) translated in that direction,
//!   and then only its address, to the one the first fragment got (plus
//!   TTL and IPv4 checksum);
//! - the security-group hooks (`berth_from_ctr`, `berth_to_ctr`, with one
//!   endpoint under policy) let a later fragment through, where an end has
//!   policy, only after the run saw its datagram's first fragment let
//!   through; they change a frame only to translate a fragmented reply;
//! - nothing on an uplink with a loopback source or destination, or with a
//!   source that is the host's own or in the bridge subnet, is translated;
//! - `berth_ingress` (TC) and `berth_xdp` agree on every frame both accept;
//! - no test run fails except the kernel's refusal of frames shorter than
//!   it accepts.
//!
//! [`Config::from_env`] reads `BERTH_FUZZ_SEED` and `BERTH_FUZZ_FRAMES`.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use berth::{
    datapath::{PolicyRule, RulePeer, RuleProto},
    model::Protocol,
};
use berth_maps::{FlowKey, DIR_EGRESS, DIR_INGRESS, XDP_HANDOFF_MAGIC, XDP_HANDOFF_MAGIC_NEIGH};

use crate::{
    mutate::{be16, l4_segment, pseudo, Dictionary, Mutator, Rng},
    pkt::{self, Ipv6Packet, Packet, ETH_LEN},
    testrun::{
        binding, ifindex, in_fixture_ns, Env, BRIDGE_IP, BRIDGE_MAC, C1, C1_MAC, C2, CLIENT, HOST,
        HOST2, OTHER,
    },
};

mod v6;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const EINVAL: i32 = 22;
const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The seed CI uses unless `BERTH_FUZZ_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0xbe27_5eed;
/// Tracked flows are forgotten (and the seeds' flows set up again) this
/// often, so the table never fills and new flows keep being created.
const NAT_RESET_EVERY: u64 = 20_000;
/// Examples kept per kind of failure.
const EXAMPLES_PER_KIND: usize = 3;

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// Frames per program.
    pub frames: u64,
}

impl Config {
    /// `BERTH_FUZZ_SEED` (decimal or 0x-hex; default [`DEFAULT_SEED`], so CI
    /// is repeatable) and `BERTH_FUZZ_FRAMES` (default `default_frames`).
    pub fn from_env(default_frames: u64) -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|s| parse_u64(&s).unwrap_or_else(|| panic!("{name}={s:?} is not a number")))
        };
        Self {
            seed: var("BERTH_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
            frames: var("BERTH_FUZZ_FRAMES").unwrap_or(default_frames),
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim().replace('_', "");
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What happened to a frame in one program.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Class {
    Pass,
    Drop,
    /// Translated; the frame as it leaves (XDP: without the metadata).
    Nat(Vec<u8>),
    /// The kernel refused the frame as too short for the hook.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Dir {
    /// On an uplink: DNAT towards a container.
    Ingress,
    /// On the bridge: SNAT back to the host port.
    Reply,
}

/// Per-program tallies.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub frames: u64,
    pub passed: u64,
    pub dropped: u64,
    pub translated: u64,
    pub refused: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    pub elapsed: Duration,
    pub programs: BTreeMap<&'static str, Tally>,
    /// Known datapath bugs seen (kind -> count); not failures.
    pub tolerated: BTreeMap<String, u64>,
    /// Failure kind -> (count, examples).
    pub failures: BTreeMap<String, (u64, Vec<String>)>,
    /// Mutated IPv6 frames `berth_ingress` dropped or translated: only a
    /// frame the IPv6 parse found a published IPv6 port in gets either, so
    /// the walk was reached, not just refused.
    pub ipv6_parsed: u64,
    /// IPv6 frames NAT66 translated and the run judged, per direction
    /// (uplink, bridge).
    pub ipv6_translated: [u64; 2],
}

impl Report {
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// A summary for the log, with every failure kind and its examples.
    pub fn render(&self) -> String {
        let mut s = format!(
            "datapath mutation run: seed {:#x}, {} frames per program, {:.1} s\n",
            self.seed,
            self.frames,
            self.elapsed.as_secs_f64()
        );
        for (p, t) in &self.programs {
            let _ = writeln!(
                s,
                "  {p:14} {:>9} frames: {:>9} passed {:>9} dropped {:>9} translated {:>7} refused",
                t.frames, t.passed, t.dropped, t.translated, t.refused
            );
        }
        let _ = writeln!(
            s,
            "  IPv6 translated and judged: {} at the uplink, {} at the bridge",
            self.ipv6_translated[0], self.ipv6_translated[1]
        );
        for (k, n) in &self.tolerated {
            let _ = writeln!(s, "  tolerated (known datapath bug): {k}: {n} frames");
        }
        for (k, (n, examples)) in &self.failures {
            let _ = writeln!(s, "FAILURE {k}: {n} frames");
            for e in examples {
                let _ = writeln!(s, "{e}");
            }
        }
        if self.failed() {
            let _ = writeln!(
                s,
                "reproduce: BERTH_FUZZ_SEED={:#x} BERTH_FUZZ_FRAMES={} cargo test -p berth-integration --test datapath_mutation -- --nocapture",
                self.seed, self.frames
            );
        }
        s
    }
}

/// One published port of the run's model.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    bind: Ipv4Addr,
    port: u16,
    proto: u8,
    to: Ipv4Addr,
    to_port: u16,
}

const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

fn mappings() -> Vec<Mapping> {
    let m = |bind, port, proto, to, to_port| Mapping {
        bind,
        port,
        proto,
        to,
        to_port,
    };
    vec![
        m(ANY, 8080, pkt::TCP, C1, 80),
        m(ANY, 8081, pkt::TCP, C1, 80),
        m(HOST, 8082, pkt::TCP, C1, 80),
        m(HOST2, 8083, pkt::TCP, C2, 83),
        m(ANY, 8083, pkt::TCP, C1, 83),
        m(ANY, 8090, pkt::TCP, C2, 90),
        m(ANY, 1, pkt::TCP, C1, 65535),
        m(ANY, 65535, pkt::TCP, C1, 1),
        m(ANY, 5201, pkt::TCP, C1, 5201),
        m(ANY, 8053, pkt::UDP, C1, 53),
        m(HOST, 8054, pkt::UDP, C1, 54),
        m(ANY, 5201, pkt::UDP, C1, 5201),
        m(Ipv4Addr::LOCALHOST, 9000, pkt::TCP, C1, 9000),
    ]
}

/// The bridge subnet of the run (docker0's in the fixture namespace).
const BRIDGE_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 17, 0, 0), 16);

struct Model {
    mappings: Vec<Mapping>,
    host_addrs: Vec<Ipv4Addr>,
    /// Endpoints under policy (the others have none).
    policy: Vec<Ipv4Addr>,
}

/// A datagram as its fragments name it: source, destination, protocol, IP
/// id.
type Datagram = ([u8; 4], [u8; 4], u8, u16);

/// The datagram of the IPv4 packet at `l3` in `f` (`None` if the header is
/// not all there), and its offset and MF bit.
fn datagram_of(f: &[u8], l3: usize) -> Option<(Datagram, u16, bool)> {
    if f.len() < l3 + 20 {
        return None;
    }
    let frag = be16(f, l3 + 6)?;
    let d = (
        f[l3 + 12..l3 + 16].try_into().ok()?,
        f[l3 + 16..l3 + 20].try_into().ok()?,
        f[l3 + 9],
        be16(f, l3 + 4)?,
    );
    Some((d, frag & 0x1fff, frag & 0x2000 != 0))
}

impl Model {
    /// A source no packet arriving on an uplink can truly have: loopback,
    /// the host's own addresses, the bridge subnet.
    fn local_source(&self, src: Ipv4Addr) -> bool {
        let (net, len) = BRIDGE_NET;
        let mask = u32::MAX << (32 - len);
        src.is_loopback()
            || self.host_addrs.contains(&src)
            || u32::from(src) & mask == u32::from(net)
    }

    /// The mapping a packet to `dst:port` uses: one bound to `dst`, else a
    /// wildcard one if `dst` is the host's.
    fn lookup(&self, proto: u8, dst: Ipv4Addr, port: u16) -> Option<Mapping> {
        let find = |bind: Ipv4Addr| {
            self.mappings
                .iter()
                .find(|m| m.proto == proto && m.port == port && m.bind == bind)
                .copied()
        };
        if dst != ANY {
            if let Some(m) = find(dst) {
                return Some(m);
            }
        }
        if self.host_addrs.contains(&dst) {
            return find(ANY);
        }
        None
    }
}

fn ip(f: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[off], f[off + 1], f[off + 2], f[off + 3])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
}

/// A violated invariant: a kind (for grouping) and the details.
struct Violation {
    kind: String,
    detail: String,
}

fn bad(kind: impl Into<String>) -> Violation {
    Violation {
        kind: kind.into(),
        detail: String::new(),
    }
}

/// The one's-complement sum of a checksummed region, folded: 0xffff (or 0)
/// when it verifies.
fn residual(data: &[u8], initial: u32) -> u16 {
    pkt::fold(pkt::sum16(data, initial))
}

/// Checks a checksum across a translation: one that verified still does,
/// and one that did not is off by exactly as much as before (an
/// incremental update carries the error along; RFC 1624). `what` names it.
fn csum_kept(what: &str, before: (&[u8], u32), after: (&[u8], u32)) -> Result<(), Violation> {
    // 0x0000 and 0xffff are the same number in one's complement.
    let norm = |r: u16| if r == 0 { 0xffff } else { r };
    let (a, b) = (
        norm(residual(before.0, before.1)),
        norm(residual(after.0, after.1)),
    );
    if a == b {
        return Ok(());
    }
    Err(Violation {
        kind: if a == 0xffff {
            format!("{what} checksum broken by the translation")
        } else {
            format!("{what} checksum off by another amount after the translation")
        },
        detail: format!("residual {a:#06x} -> {b:#06x}"),
    })
}

struct Run<'a> {
    model: &'a Model,
    docker0: u32,
    report: Report,
    /// First fragments seen translated: the address their datagram's later
    /// fragments must get.
    frags: HashMap<(Dir, Datagram), Ipv4Addr>,
    /// First fragments the security-group hooks judged: let through or not
    /// (`None`: unknown, dropped after the verdict for another reason).
    policy_frags: HashMap<Datagram, Option<bool>>,
    /// First IPv6 fragments seen translated (`v6.rs`).
    frags6: HashMap<v6::Datagram6, [u8; 16]>,
}

impl Run<'_> {
    fn violation(
        &mut self,
        prog: &str,
        v: Violation,
        input: &[u8],
        out: &[u8],
        iter: u64,
        how: &[&str],
    ) {
        let kind = format!("[{prog}] {}", v.kind);
        let e = self.report.failures.entry(kind).or_default();
        e.0 += 1;
        if e.1.len() < EXAMPLES_PER_KIND {
            let detail = if v.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", v.detail)
            };
            e.1.push(format!(
                "  frame #{iter} ({}){detail}\n    in  {}\n    out {}",
                how.join(", "),
                hex(input),
                hex(out)
            ));
        }
    }

    /// For an ingress frame to a mapping: the flow it would open (its
    /// reply-tuple key, client-side tuple) and whether it may open one.
    fn opened_flow(&self, _env: &Env, prog: &str, f: &[u8]) -> Option<(FlowKey, FlowKey, bool)> {
        if prog != "berth_xdp" && prog != "berth_ingress" {
            return None;
        }
        if be16(f, 12) != Some(pkt::ETH_P_IP) || f.len() < ETH_LEN + 20 {
            return None;
        }
        let l3 = ETH_LEN;
        let l4 = l3 + (f[l3] & 0x0f) as usize * 4;
        let proto = f[l3 + 9];
        if !matches!(proto, pkt::TCP | pkt::UDP) || f.len() < l4 + 14 {
            return None;
        }
        let (src, dst) = (ip(f, l3 + 12), ip(f, l3 + 16));
        let (sport, dport) = (be16(f, l4).unwrap(), be16(f, l4 + 2).unwrap());
        let m = self.model.lookup(proto, dst, dport)?;
        let may_open = proto == pkt::UDP || f[l4 + 13] & 0x17 == pkt::SYN;
        Some((
            flow_key(m.to, src, m.to_port, sport, proto),
            flow_key(src, dst, sport, dport, proto),
            may_open,
        ))
    }

    fn tally(&mut self, prog: &'static str, c: &Class) {
        let t = self.report.programs.entry(prog).or_default();
        t.frames += 1;
        match c {
            Class::Pass => t.passed += 1,
            Class::Drop => t.dropped += 1,
            Class::Nat(_) => t.translated += 1,
            Class::Refused => t.refused += 1,
        }
    }

    /// Runs `f` through `prog` and checks it; `None` when it broke a rule.
    fn one(
        &mut self,
        env: &Env,
        prog: &'static str,
        f: &[u8],
        iter: u64,
        how: &[&str],
    ) -> Option<Class> {
        let xdp = prog == "berth_xdp";
        let opens = self.opened_flow(env, prog, f);
        let had_flow = opens.as_ref().map(|(k, w, _)| has_flow(env, k, w));
        let r = if xdp {
            env.try_xdp(prog, f)
        } else if prog == "berth_from_ctr" {
            env.try_tc_on(prog, f, sender_port(f))
        } else {
            env.try_tc(prog, f)
        };
        if let (Some((k, w, may_open)), Some(false)) = (&opens, had_flow) {
            if !may_open && has_flow(env, k, w) {
                self.violation(
                    prog,
                    bad("a TCP packet other than a SYN opened a flow"),
                    f,
                    &[],
                    iter,
                    how,
                );
                return None;
            }
        }
        let judged = match r {
            Err(e) if e.errno == Some(EINVAL) && too_short(f, xdp) => Ok(Class::Refused),
            Err(e) => Err((
                Violation {
                    kind: "test run failed".into(),
                    detail: e.to_string(),
                },
                Vec::new(),
            )),
            Ok(v) => self
                .judge(env, prog, f, v.code, &v.frame)
                .map_err(|e| (e, v.frame)),
        };
        match judged {
            Ok(class) => {
                self.tally(prog, &class);
                if matches!(class, Class::Nat(_)) && be16(f, 12) == Some(pkt::ETH_P_IPV6) {
                    self.report.ipv6_translated[usize::from(prog == "berth_reply")] += 1;
                }
                Some(class)
            }
            Err((v, out)) => {
                self.violation(prog, v, f, &out, iter, how);
                None
            }
        }
    }

    fn judge(
        &mut self,
        env: &Env,
        prog: &str,
        f: &[u8],
        code: u32,
        out: &[u8],
    ) -> Result<Class, Violation> {
        let dir = if prog == "berth_reply" {
            Dir::Reply
        } else {
            Dir::Ingress
        };
        let unchanged = |class: Class| {
            if out == f {
                Ok(class)
            } else {
                Err(bad("frame changed without a translation"))
            }
        };
        if prog == "berth_from_ctr" || prog == "berth_to_ctr" {
            let class = self.judge_policy(env, prog, f, code, out)?;
            self.check_policy_frag(prog, f, out, &class)?;
            return Ok(class);
        }
        // IPv6 goes to NAT66 (`berth_ingress6`, tail-called by
        // `berth_deliver` as by `berth_ingress`): judged as TC ingress.
        if prog == "berth_deliver" && be16(f, 12) != Some(pkt::ETH_P_IPV6) {
            return match code {
                TC_ACT_OK => unchanged(Class::Pass),
                c => Err(bad(format!("verdict {c} without hand-off metadata"))),
            };
        }
        if prog == "berth_xdp" {
            return match code {
                XDP_PASS if out.len() == f.len() + 8 => {
                    let magic = u32::from_ne_bytes(out[..4].try_into().unwrap());
                    let ifindex = u32::from_ne_bytes(out[4..8].try_into().unwrap());
                    let known = matches!(magic, XDP_HANDOFF_MAGIC | XDP_HANDOFF_MAGIC_NEIGH);
                    if !known || ifindex != self.docker0 {
                        return Err(bad(format!(
                            "hand-off metadata {magic:#x} ifindex {ifindex}"
                        )));
                    }
                    self.check_nat(env, dir, f, &out[8..])?;
                    Ok(Class::Nat(out[8..].to_vec()))
                }
                XDP_PASS => unchanged(Class::Pass),
                XDP_DROP => self.dropped(env, dir, f, out),
                c => Err(bad(format!("unexpected verdict {c}"))),
            };
        }
        match code {
            TC_ACT_OK => unchanged(Class::Pass),
            TC_ACT_SHOT => self.dropped(env, dir, f, out),
            TC_ACT_REDIRECT => {
                self.check_nat(env, dir, f, out)?;
                Ok(Class::Nat(out.to_vec()))
            }
            c => Err(bad(format!("unexpected verdict {c}"))),
        }
    }

    /// A security-group hook passes or drops a frame untouched; only
    /// `berth_from_ctr` translates, and only fragments of a tracked reply.
    fn judge_policy(
        &mut self,
        env: &Env,
        prog: &str,
        f: &[u8],
        code: u32,
        out: &[u8],
    ) -> Result<Class, Violation> {
        let from = prog == "berth_from_ctr";
        let fragment = be16(f, 12) == Some(pkt::ETH_P_IP)
            && datagram_of(f, ETH_LEN).is_some_and(|(_, off, mf)| off != 0 || mf)
            || be16(f, 12) == Some(pkt::ETH_P_IPV6) && v6::is_fragment(f);
        match code {
            TC_ACT_OK if out == f => Ok(Class::Pass),
            TC_ACT_SHOT if out == f => Ok(Class::Drop),
            TC_ACT_SHOT | TC_ACT_REDIRECT if from && fragment => {
                self.check_nat(env, Dir::Reply, f, out)?;
                Ok(if code == TC_ACT_SHOT {
                    Class::Drop
                } else {
                    Class::Nat(out.to_vec())
                })
            }
            TC_ACT_OK | TC_ACT_SHOT => Err(bad("frame changed without a translation")),
            c => Err(bad(format!("unexpected verdict {c}"))),
        }
    }

    /// Later fragments follow their datagram's first fragment through the
    /// security-group hooks.
    fn check_policy_frag(
        &mut self,
        prog: &str,
        f: &[u8],
        out: &[u8],
        class: &Class,
    ) -> Result<(), Violation> {
        if be16(f, 12) != Some(pkt::ETH_P_IP) || f[ETH_LEN] >> 4 != 4 || f[ETH_LEN] & 0x0f < 5 {
            return Ok(());
        }
        let Some((d, off, mf)) = datagram_of(f, ETH_LEN) else {
            return Ok(());
        };
        let under_policy = |a: [u8; 4]| self.model.policy.contains(&Ipv4Addr::from(a));
        let from = prog == "berth_from_ctr";
        if !(under_policy(d.1) || from && under_policy(d.0)) {
            return Ok(());
        }
        let through = matches!(class, Class::Pass | Class::Nat(_));
        if off != 0 {
            return match self.policy_frags.get(&d) {
                _ if !through => Ok(()),
                Some(Some(true) | None) => Ok(()),
                Some(Some(false)) => Err(bad(
                    "security groups let a later fragment through after refusing its first",
                )),
                None => Err(bad(
                    "security groups let a later fragment through without its first fragment",
                )),
            };
        }
        if mf {
            let verdict = match class {
                Class::Pass | Class::Nat(_) => Some(true),
                Class::Drop if out != f => Some(true),
                // A tracked reply with TTL <= 1: allowed, then dropped.
                Class::Drop if from && f[ETH_LEN + 8] <= 1 => None,
                Class::Drop => Some(false),
                Class::Refused => return Ok(()),
            };
            self.policy_frags.insert(d, verdict);
        }
        Ok(())
    }

    /// A dropped frame is untouched, or was translated and then refused
    /// (no route, MTU): the same rules hold for what it changed.
    fn dropped(&mut self, env: &Env, dir: Dir, f: &[u8], out: &[u8]) -> Result<Class, Violation> {
        if out != f {
            self.check_nat(env, dir, f, out)?;
        }
        Ok(Class::Drop)
    }

    /// The translation rules; `out` is the frame as it leaves.
    fn check_nat(&mut self, env: &Env, dir: Dir, f: &[u8], out: &[u8]) -> Result<(), Violation> {
        if out.len() != f.len() {
            return Err(bad("translation changed the frame's length"));
        }
        if be16(f, 12) == Some(pkt::ETH_P_IPV6) {
            return self.check_nat6(env, dir, f, out);
        }
        if be16(f, 12) != Some(pkt::ETH_P_IP) || f.len() < ETH_LEN + 20 {
            return Err(bad("translated a frame that is not untagged IPv4"));
        }
        let l3 = ETH_LEN;
        let ihl = (f[l3] & 0x0f) as usize * 4;
        if f[l3] >> 4 != 4 || ihl < 20 || l3 + ihl > f.len() {
            return Err(bad("translated an IPv4 header with a bad version or IHL"));
        }
        let (datagram, offset, first_frag) = datagram_of(f, l3).unwrap();
        let ttl = f[l3 + 8];
        if ttl <= 1 {
            return Err(bad("translated a packet with TTL <= 1"));
        }
        if out[l3 + 8] != ttl - 1 {
            return Err(bad("TTL not decremented by one"));
        }
        if dir == Dir::Ingress
            && (self.model.local_source(ip(f, l3 + 12)) || ip(f, l3 + 16).is_loopback())
        {
            return Err(Violation {
                kind: "translated a loopback or spoofed-local source on an uplink".into(),
                detail: format!("{} -> {}", ip(f, l3 + 12), ip(f, l3 + 16)),
            });
        }
        csum_kept(
            "IPv4 header",
            (&f[l3..l3 + ihl], 0),
            (&out[l3..l3 + ihl], 0),
        )?;
        let l4 = l3 + ihl;
        let mut allowed: Vec<std::ops::Range<usize>> =
            vec![0..12, l3 + 8..l3 + 9, l3 + 10..l3 + 12];
        let addr_off = match dir {
            Dir::Ingress => l3 + 16,
            Dir::Reply => l3 + 12,
        };
        if offset != 0 {
            // A later fragment: no ports, only the address its first
            // fragment got.
            let Some(&want) = self.frags.get(&(dir, datagram)) else {
                return Err(bad(
                    "translated a later fragment whose datagram's first fragment was not",
                ));
            };
            allowed.push(addr_off..addr_off + 4);
            if ip(out, addr_off) != want {
                return Err(Violation {
                    kind: "later fragment translated to another address than its first".into(),
                    detail: format!("{}, want {want}", ip(out, addr_off)),
                });
            }
        } else {
            match f[l3 + 9] {
                pkt::TCP | pkt::UDP => {
                    self.check_l4(env, dir, f, out, l4, first_frag, &mut allowed)?
                }
                pkt::ICMP if first_frag => {
                    return Err(bad("translated a fragment of an ICMP message"))
                }
                pkt::ICMP => self.check_icmp(env, dir, f, out, l4, &mut allowed)?,
                p => return Err(bad(format!("translated IP protocol {p}"))),
            }
            if first_frag {
                self.frags.insert((dir, datagram), ip(out, addr_off));
            }
        }
        for (i, (a, b)) in f.iter().zip(out).enumerate() {
            if a != b && !allowed.iter().any(|r| r.contains(&i)) {
                return Err(Violation {
                    kind: "translation changed a byte a NAT may not".into(),
                    detail: format!("byte {i}: {a:#04x} -> {b:#04x}"),
                });
            }
        }
        Ok(())
    }

    #[expect(clippy::too_many_arguments)]
    fn check_l4(
        &mut self,
        env: &Env,
        dir: Dir,
        f: &[u8],
        out: &[u8],
        l4: usize,
        first_frag: bool,
        allowed: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(), Violation> {
        let l3 = ETH_LEN;
        let proto = f[l3 + 9];
        let hdr = if proto == pkt::TCP { 20 } else { 8 };
        if l4 + hdr > f.len() {
            return Err(bad("translated a truncated L4 header"));
        }
        let tot = be16(f, l3 + 2).unwrap() as usize;
        let min = if proto == pkt::TCP {
            let doff = (f[l4 + 12] >> 4) as usize * 4;
            if doff < 20 {
                return Err(bad("translated TCP with data offset < 5"));
            }
            l4 - l3 + doff
        } else {
            l4 - l3 + 8
        };
        if tot < min {
            return Err(bad(
                "translated a packet whose total length is shorter than its headers",
            ));
        }
        if l3 + tot > f.len() {
            return Err(bad(
                "translated a packet whose total length is past the frame's end",
            ));
        }
        let ulen = be16(f, l4 + 4).unwrap() as usize;
        // A first fragment carries only part of the datagram its UDP
        // length counts.
        if proto == pkt::UDP && (ulen < 8 || !first_frag && ulen > tot - (l4 - l3)) {
            return Err(bad(
                "translated a UDP datagram whose length is < 8 or past the IPv4 payload",
            ));
        }
        let csum_off = l4 + if proto == pkt::TCP { 16 } else { 6 };
        allowed.push(csum_off..csum_off + 2);
        let (addr_off, port_off) = match dir {
            Dir::Ingress => (l3 + 16, l4 + 2),
            Dir::Reply => (l3 + 12, l4),
        };
        allowed.push(addr_off..addr_off + 4);
        allowed.push(port_off..port_off + 2);
        let new_addr = ip(out, addr_off);
        let new_port = be16(out, port_off).unwrap();
        let (src, dst) = (ip(f, l3 + 12), ip(f, l3 + 16));
        let (sport, dport) = (be16(f, l4).unwrap(), be16(f, l4 + 2).unwrap());
        // The client's port: remapped towards the container only as the
        // remap table says, restored on replies to the flow's own.
        let (client_off, want_client) = match dir {
            Dir::Ingress => {
                let wire = flow_key(src, dst, sport, dport, proto);
                let remap = env
                    .nat_fwd_lookup(&wire)
                    .map(|r| u16::from_be(r.remap_port_be));
                (l4, remap.unwrap_or(sport))
            }
            Dir::Reply => {
                let e = env.nat_lookup(&flow_key(src, dst, sport, dport, proto));
                (l4 + 2, e.map_or(dport, |e| u16::from_be(e.client_port_be)))
            }
        };
        let got_client = be16(out, client_off).unwrap();
        if got_client != want_client {
            return Err(Violation {
                kind: "client port changed other than by the flow's remap".into(),
                detail: format!("{got_client}, want {want_client}"),
            });
        }
        allowed.push(client_off..client_off + 2);
        let want = match dir {
            Dir::Ingress => match self.model.lookup(proto, dst, dport) {
                Some(m) => (m.to, m.to_port),
                None => return Err(bad("translated a packet that matches no mapping")),
            },
            Dir::Reply => match env.nat_lookup(&flow_key(src, dst, sport, dport, proto)) {
                Some(e) => (
                    Ipv4Addr::from(u32::from_be(e.host_addr_be)),
                    u16::from_be(e.host_port_be),
                ),
                None => return Err(bad("translated a reply of no tracked flow")),
            },
        };
        if (new_addr, new_port) != want {
            return Err(Violation {
                kind: "translated to the wrong address or port".into(),
                detail: format!("{new_addr}:{new_port}, want {}:{}", want.0, want.1),
            });
        }
        // The L4 checksum: over the UDP length (when sane) or the segment.
        let Some((start, end)) = l4_segment(f, l3) else {
            return Ok(()); // total length past the frame: nothing to verify over
        };
        // A first fragment's checksum covers bytes that are not here; the
        // incremental update still keeps the sum over what is.
        let end = if proto == pkt::UDP && !first_frag {
            let ulen = be16(f, l4 + 4).unwrap() as usize;
            if ulen < 8 || start + ulen > end {
                return Ok(());
            }
            start + ulen
        } else {
            end
        };
        let p_in = pseudo(
            f[l3 + 12..l3 + 16].try_into().unwrap(),
            f[l3 + 16..l3 + 20].try_into().unwrap(),
            proto,
            end - start,
        );
        let p_out = pseudo(
            out[l3 + 12..l3 + 16].try_into().unwrap(),
            out[l3 + 16..l3 + 20].try_into().unwrap(),
            proto,
            end - start,
        );
        let c_in = be16(f, csum_off).unwrap();
        let c_out = be16(out, csum_off).unwrap();
        if proto == pkt::UDP && c_in == 0 {
            return if c_out == 0 {
                Ok(())
            } else {
                Err(bad("UDP without checksum got one"))
            };
        }
        if proto == pkt::UDP && c_out == 0 {
            return Err(bad("UDP checksum became 0 (\"none\")"));
        }
        let what = if proto == pkt::TCP { "TCP" } else { "UDP" };
        csum_kept(what, (&f[start..end], p_in), (&out[start..end], p_out))?;
        Ok(())
    }

    fn check_icmp(
        &mut self,
        env: &Env,
        dir: Dir,
        f: &[u8],
        out: &[u8],
        l4: usize,
        allowed: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(), Violation> {
        let l3 = ETH_LEN;
        let q = l4 + 8;
        if q + 20 > f.len() || !matches!(f[l4], 3 | 11 | 12) {
            return Err(bad(
                "translated an ICMP message that is not an error quoting a packet",
            ));
        }
        let qihl = (f[q] & 0x0f) as usize * 4;
        let qproto = f[q + 9];
        let ql4 = q + qihl;
        if f[q] >> 4 != 4
            || qihl < 20
            || !matches!(qproto, pkt::TCP | pkt::UDP)
            || ql4 + 8 > f.len()
        {
            return Err(bad("translated an ICMP error that quotes no TCP/UDP ports"));
        }
        let (outer, quoted, port, client_port) = match dir {
            Dir::Ingress => (l3 + 16, q + 12, ql4, ql4 + 2),
            Dir::Reply => (l3 + 12, q + 16, ql4 + 2, ql4),
        };
        let qcsum = ql4 + if qproto == pkt::TCP { 16 } else { 6 };
        allowed.extend([
            outer..outer + 4,
            l4 + 2..l4 + 4,
            q + 10..q + 12,
            quoted..quoted + 4,
            port..port + 2,
            qcsum..qcsum + 2,
        ]);
        if be16(f, client_port) != be16(out, client_port) {
            allowed.push(client_port..client_port + 2);
        }
        if be16(f, q + 6).unwrap() & 0x3fff != 0 {
            return Err(bad(
                "translated an ICMP error quoting a fragment (no trustworthy ports)",
            ));
        }
        let (qsrc, qdst) = (ip(f, q + 12), ip(f, q + 16));
        let (qsport, qdport) = (be16(f, ql4).unwrap(), be16(f, ql4 + 2).unwrap());
        let want = match dir {
            Dir::Ingress => match self.model.lookup(qproto, qsrc, qsport) {
                Some(m) => (m.to, m.to_port),
                None => return Err(bad("translated an ICMP error about no mapping")),
            },
            Dir::Reply => match env.nat_lookup(&flow_key(qdst, qsrc, qdport, qsport, qproto)) {
                Some(e) => (
                    Ipv4Addr::from(u32::from_be(e.host_addr_be)),
                    u16::from_be(e.host_port_be),
                ),
                None => return Err(bad("translated an ICMP error about no tracked flow")),
            },
        };
        // The quoted client port, as the flow knows it on each side.
        let want_client = match dir {
            Dir::Ingress => env
                .nat_fwd_lookup(&flow_key(qdst, qsrc, qdport, qsport, qproto))
                .map_or(qdport, |r| u16::from_be(r.remap_port_be)),
            Dir::Reply => env
                .nat_lookup(&flow_key(qdst, qsrc, qdport, qsport, qproto))
                .map_or(qsport, |e| u16::from_be(e.client_port_be)),
        };
        let got_client = be16(out, client_port).unwrap();
        if got_client != want_client {
            return Err(Violation {
                kind: "ICMP error's quoted client port changed other than by the flow's remap"
                    .into(),
                detail: format!("{got_client}, want {want_client}"),
            });
        }
        let got = (ip(out, outer), ip(out, quoted), be16(out, port).unwrap());
        if got != (want.0, want.0, want.1) {
            return Err(Violation {
                kind: "ICMP error translated to the wrong address or port".into(),
                detail: format!(
                    "outer {} quoted {}:{}, want {}:{}",
                    got.0, got.1, got.2, want.0, want.1
                ),
            });
        }
        csum_kept(
            "quoted IPv4 header",
            (&f[q..q + qihl], 0),
            (&out[q..q + qihl], 0),
        )?;
        let Some((start, end)) = l4_segment(f, l3) else {
            return Ok(());
        };
        if (end..f.len()).any(|i| f[i] != out[i]) {
            return Err(bad("changed bytes past the ICMP error's IPv4 total length"));
        }
        csum_kept("ICMP", (&f[start..end], 0), (&out[start..end], 0))?;
        Ok(())
    }
}

/// Whether the flow of reply key `k` (or, remapped, of client tuple `wire`)
/// is tracked.
fn has_flow(env: &Env, k: &FlowKey, wire: &FlowKey) -> bool {
    env.nat_lookup(k).is_some() || env.nat_fwd_lookup(wire).is_some()
}

fn flow_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr_be: u32::from_ne_bytes(src.octets()),
        dst_addr_be: u32::from_ne_bytes(dst.octets()),
        src_port_be: sport.to_be(),
        dst_port_be: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// Whether the kernel refuses `f` for this hook as too short: every hook
/// below an Ethernet header; skb hooks below the IPv4 or IPv6 header their
/// ethertype announces.
fn too_short(f: &[u8], xdp: bool) -> bool {
    if f.len() < ETH_LEN {
        return true;
    }
    if xdp {
        return false;
    }
    match be16(f, 12) {
        Some(pkt::ETH_P_IP) => f.len() < ETH_LEN + 20,
        Some(pkt::ETH_P_IPV6) => f.len() < ETH_LEN + 40,
        _ => false,
    }
}

fn dictionary() -> Dictionary {
    let addrs = [
        HOST,
        HOST2,
        OTHER,
        CLIENT,
        C1,
        C2,
        ROUTER,
        ANY,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::LOCALHOST,
    ]
    .iter()
    .map(Ipv4Addr::octets)
    .collect();
    let mut ports: Vec<u16> = mappings()
        .iter()
        .flat_map(|m| [m.port, m.to_port])
        .collect();
    ports.extend([40000, 40001, 5000, 9999, 0, 443]);
    ports.sort_unstable();
    ports.dedup();
    Dictionary { addrs, ports }
}

/// Client packets that set up flows the seeds (and their mutants) refer to.
fn flows() -> Vec<Packet> {
    vec![
        Packet::tcp(CLIENT, 40000, HOST, 8080),
        Packet::tcp(CLIENT, 40001, HOST, 8090),
        Packet::tcp(CLIENT, 40000, HOST2, 8083),
        Packet::udp(CLIENT, 5000, HOST, 8053),
        Packet::udp(CLIENT, 5000, HOST, 8054),
    ]
}

fn ingress_seeds() -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    let mut tcp = |dst, dport, f: &dyn Fn(&mut Packet)| {
        let mut p = Packet::tcp(CLIENT, 40000, dst, dport);
        f(&mut p);
        s.push(p.frame());
    };
    tcp(HOST, 8080, &|_| {});
    tcp(HOST, 8080, &|p| {
        p.tcp_flags = pkt::PSH | pkt::ACK;
        p.payload = vec![0x61; 100];
    });
    tcp(HOST, 8080, &|p| p.tcp_flags = pkt::FIN | pkt::ACK);
    tcp(HOST, 8080, &|p| {
        p.ip_options = vec![1, 1, 1, 0, 0x94, 4, 0, 0]
    });
    tcp(HOST, 8080, &|p| {
        p.tcp_options = vec![2, 4, 5, 0xb4, 1, 3, 3, 7]
    });
    tcp(HOST2, 8080, &|_| {});
    tcp(HOST, 8082, &|_| {});
    tcp(HOST2, 8083, &|_| {});
    tcp(HOST, 8090, &|_| {});
    tcp(HOST, 1, &|_| {});
    tcp(HOST, 65535, &|_| {});
    tcp(HOST, 5201, &|_| {});
    tcp(HOST, 9999, &|_| {});
    tcp(OTHER, 8080, &|_| {});
    // Loopback and local sources: never translated (mutations of these
    // and of the others' addresses reach every combination).
    tcp(Ipv4Addr::LOCALHOST, 9000, &|_| {});
    tcp(Ipv4Addr::LOCALHOST, 8080, &|_| {});
    tcp(HOST, 8080, &|p| p.src = C1);
    tcp(HOST, 8080, &|p| p.src = HOST2);
    tcp(HOST, 8080, &|p| p.src = Ipv4Addr::LOCALHOST);
    let udp = |dport, f: &dyn Fn(&mut Packet)| {
        let mut p = Packet::udp(CLIENT, 5000, HOST, dport);
        f(&mut p);
        p.frame()
    };
    s.push(udp(8053, &|_| {}));
    s.push(udp(8053, &|p| p.udp_no_csum = true));
    s.push(udp(8053, &|p| p.payload.clear()));
    s.push(udp(8054, &|_| {}));
    s.push(udp(5201, &|p| p.payload = vec![7; 33]));
    s.push(udp(9999, &|_| {}));
    // ICMP errors from outside about replies of tracked flows.
    let mut left = Packet::tcp(HOST, 8080, CLIENT, 40000);
    left.ttl = 63;
    s.push(Packet::icmp_error(ROUTER, HOST, 3, 4, [0, 0, 5, 0x78], &left, 28).frame());
    let left = Packet::udp(HOST, 8053, CLIENT, 5000);
    s.push(Packet::icmp_error(CLIENT, HOST, 3, 3, [0; 4], &left, 36).frame());
    s.push(Packet::icmp(CLIENT, HOST, 8, 0, [0, 1, 0, 1]).frame());
    s.extend(fragment_pair(Packet::udp(CLIENT, 5000, HOST, 8053), 0x7101));
    s.extend(fragment_pair(
        Packet::tcp(CLIENT, 40000, HOST, 8080),
        0x7102,
    ));
    s.push(fragment_pair(Packet::udp(CLIENT, 5000, HOST, 8053), 0x71ff)[1].clone());
    s.push(pkt::arp_request(CLIENT, HOST));
    s.push(Ipv6Packet::new(pkt::TCP, 8080).frame());
    // IPv6 behind extension-header chains, to ports published over IPv6
    // ([`setup`]): the parser's walk is mutated, and what NAT66
    // translates is judged (`v6.rs`).
    {
        use pkt::V6Ext::{DestOpts, Fragment, HopByHop, Routing};
        let first = Fragment {
            offset: 0,
            more: true,
        };
        let later = Fragment {
            offset: 32,
            more: false,
        };
        s.push(
            Ipv6Packet::new(pkt::TCP, 8080)
                .with_ext(&[HopByHop, Routing, DestOpts, first])
                .frame(),
        );
        let mut u = Ipv6Packet::new(pkt::UDP, 8053).with_ext(&[DestOpts]);
        u.payload = b"ping".to_vec();
        s.push(u.frame());
        s.push(Ipv6Packet::new(pkt::UDP, 8053).with_ext(&[later]).frame());
        s.push(Ipv6Packet::icmpv6(135, 0).frame());
    }
    s.extend(v6::ingress_seeds6());
    s.push(pkt::vlan_tagged(
        &Packet::tcp(CLIENT, 40000, HOST, 8080).frame(),
        10,
    ));
    s
}

/// `p` with a 600-byte payload and IP id `id`, as its first fragment and
/// a later one (offsets 0 and 256).
fn fragment_pair(p: Packet, id: u16) -> [Vec<u8>; 2] {
    let mut p = p.with_payload_len(600);
    p.ip_id = id;
    p.frag = 0;
    [
        pkt::fragment(&p, 0, 256, true),
        pkt::fragment(&p, 256, 256, true),
    ]
}

fn from_c1(p: Packet) -> Packet {
    Packet {
        eth_dst: BRIDGE_MAC,
        eth_src: C1_MAC,
        ..p
    }
}

/// What containers send and receive, for the security-group hooks: C1
/// has policy, C2 none.
fn policy_seeds() -> Vec<Vec<u8>> {
    let mut s = reply_seeds();
    let udp = Packet::udp;
    for p in [
        udp(CLIENT, 5000, C1, 53),
        Packet::tcp(CLIENT, 40000, C1, 80),
        udp(C2, 7000, C1, 53),
        udp(C2, 7000, C1, 9999),
        udp(C1, 5500, OTHER, 5500),
        udp(C1, 7000, OTHER, 9999),
        Packet::tcp(C1, 40000, OTHER, 443),
        Packet::icmp(OTHER, C1, 8, 0, [0, 1, 0, 1]),
        Packet::icmp(C1, OTHER, 13, 0, [0, 1, 0, 1]),
    ] {
        s.push(from_c1(p).frame());
    }
    let out = Packet::tcp(C1, 40000, OTHER, 443);
    s.push(Packet::icmp_error(ROUTER, C1, 3, 4, [0, 0, 5, 0x78], &out, 28).frame());
    for (i, p) in [
        udp(C1, 5500, OTHER, 5500),
        udp(C1, 7000, OTHER, 9999),
        udp(C2, 7000, C1, 53),
        udp(C2, 7000, C1, 9999),
        from_c1(udp(C1, 53, CLIENT, 5000)),
        udp(CLIENT, 5000, C1, 53),
        Packet::icmp(OTHER, C1, 8, 0, [0, 1, 0, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        s.extend(fragment_pair(p, 0x7001 + i as u16));
    }
    // A later fragment whose first never comes.
    s.push(fragment_pair(udp(C2, 7000, C1, 53), 0x70ff)[1].clone());
    s
}

fn reply_seeds() -> Vec<Vec<u8>> {
    let from = |src, sport, dst, dport, proto, f: &dyn Fn(&mut Packet)| {
        let mut p = if proto == pkt::TCP {
            Packet::tcp(src, sport, dst, dport)
        } else {
            Packet::udp(src, sport, dst, dport)
        };
        p.eth_dst = BRIDGE_MAC;
        p.eth_src = C1_MAC;
        p.tcp_flags = pkt::SYN | pkt::ACK;
        f(&mut p);
        p.frame()
    };
    let mut s = vec![
        from(C1, 80, CLIENT, 40000, pkt::TCP, &|_| {}),
        from(C1, 80, CLIENT, 40000, pkt::TCP, &|p| {
            p.tcp_flags = pkt::PSH | pkt::ACK;
            p.payload = vec![0x62; 200];
        }),
        from(C1, 80, CLIENT, 40000, pkt::TCP, &|p| {
            p.tcp_flags = pkt::FIN | pkt::ACK
        }),
        from(C1, 80, CLIENT, 40000, pkt::TCP, &|p| {
            p.ip_options = vec![1, 1, 1, 0]
        }),
        from(C2, 90, CLIENT, 40001, pkt::TCP, &|_| {}),
        from(C2, 83, CLIENT, 40000, pkt::TCP, &|_| {}),
        from(C1, 53, CLIENT, 5000, pkt::UDP, &|_| {}),
        from(C1, 53, CLIENT, 5000, pkt::UDP, &|p| p.udp_no_csum = true),
        from(C1, 54, CLIENT, 5000, pkt::UDP, &|_| {}),
        from(C1, 80, CLIENT, 40999, pkt::TCP, &|_| {}),
        from(C1, 43210, OTHER, 443, pkt::TCP, &|_| {}),
    ];
    // The container's ICMP errors about what the client sent it.
    let mut got = Packet::udp(CLIENT, 5000, C1, 53);
    got.ttl = 63;
    let mut e = Packet::icmp_error(C1, CLIENT, 3, 3, [0; 4], &got, 36);
    e.eth_dst = BRIDGE_MAC;
    e.eth_src = C1_MAC;
    s.push(e.frame());
    let got = Packet::tcp(CLIENT, 40000, C1, 80);
    let mut e = Packet::icmp_error(C1, CLIENT, 3, 3, [0; 4], &got, 48);
    e.eth_dst = BRIDGE_MAC;
    e.eth_src = C1_MAC;
    s.push(e.frame());
    s.push(pkt::arp_request(C1, BRIDGE_IP));
    s.extend(fragment_pair(
        from_c1(Packet::udp(C1, 53, CLIENT, 5000)),
        0x7201,
    ));
    s.extend(fragment_pair(
        from_c1(Packet::tcp(C1, 80, CLIENT, 40000)),
        0x7202,
    ));
    s.extend(v6::reply_seeds6());
    s
}

/// C1's task: its published ports and echo in; udp 5000-6000 and tcp 443
/// out. C2 is an endpoint without policy.
fn setup_policy(env: &mut Env) {
    let any = RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0);
    let rule = |proto, lo, hi| PolicyRule {
        proto: Some(proto),
        ports: (lo, hi),
        icmp_type: if proto == RuleProto::Icmp {
            Some(8)
        } else {
            None
        },
        icmp_code: None,
        peer: any,
    };
    env.set_endpoint(C1, 1, true);
    env.set_endpoint(C2, 2, false);
    env.set_rules(
        1,
        DIR_INGRESS,
        &[
            rule(RuleProto::Udp, 53, 54),
            rule(RuleProto::Tcp, 80, 83),
            rule(RuleProto::Tcp, 5201, 5201),
            rule(RuleProto::Udp, 5201, 5201),
            rule(RuleProto::Tcp, 1, 1),
            rule(RuleProto::Tcp, 65535, 65535),
            rule(RuleProto::Icmp, 0, 0),
        ],
    );
    env.set_rules(
        1,
        DIR_EGRESS,
        &[
            rule(RuleProto::Udp, 5000, 6000),
            rule(RuleProto::Tcp, 443, 443),
        ],
    );
}

/// Bridge ports of the run's containers, with the addresses the daemon
/// would have learned for them.
const SENDER_PORTS: [(&str, Ipv4Addr); 2] = [("fz1", C1), ("fz2", C2)];

/// The port a frame is sent on in `berth_from_ctr`: its claimed source's
/// own port, or C1's (which owns no other address) for anything else.
fn sender_port(f: &[u8]) -> u32 {
    let src = f
        .get(26..30)
        .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        .unwrap_or(C1);
    let name = SENDER_PORTS
        .iter()
        .find(|(_, a)| *a == src)
        .map_or(SENDER_PORTS[0].0, |(n, _)| *n);
    ifindex(name)
}

fn setup(env: &mut Env, model: &Model) {
    setup_policy(env);
    for (name, addr) in SENDER_PORTS {
        let port = env.add_port(name);
        env.port_addrs(port, &[addr]);
    }
    for a in &model.host_addrs {
        env.host_addr(*a);
    }
    env.bridge_subnet(BRIDGE_NET.0, BRIDGE_NET.1);
    for m in &model.mappings {
        let proto = if m.proto == pkt::TCP {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        env.publish(&binding(m.bind, m.port, m.to, m.to_port, proto));
    }
    publish6(env);
}

/// The IPv6 seeds' ports ([`v6::MAPPINGS6`]), published as the daemon's
/// adapter encodes them; `2001:db8::1` is the host's. The container has
/// no policy, so NAT66 opens flows and its output is judged.
fn publish6(env: &mut Env) {
    use berth::datapath::bpf_keys::{backend6, service_key6};
    let mut m: aya::maps::HashMap<
        &mut aya::maps::MapData,
        berth_maps::ServiceKey6,
        berth_maps::Backend6,
    > = aya::maps::HashMap::try_from(env.ebpf.map_mut(berth_maps::SERVICES6_MAP).unwrap()).unwrap();
    for (host, port, proto, to) in v6::MAPPINGS6 {
        let proto = if proto == pkt::TCP {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        m.insert(
            service_key6(host, port, proto),
            backend6(v6::CTR6, to, 0),
            0,
        )
        .unwrap();
    }
    env.host_addr6(pkt::HOST6);
}

/// Forgets all flows and sets up the seeds' flows again.
fn reset_flows(env: &mut Env) {
    env.clear_nat();
    for p in flows() {
        let v = env.tc("berth_ingress", &p.frame());
        assert_eq!(v.code, TC_ACT_REDIRECT, "setting up {p:?}");
    }
    v6::reset_flows6(env);
}

/// Judges one test run of `prog` on `input` by the run's rules, against
/// the run's mappings (see [`publish_model`]): `Ok` with the outcome's
/// name, or the broken rule. For checking the checker.
pub fn judge(
    env: &Env,
    prog: &str,
    input: &[u8],
    code: u32,
    out: &[u8],
) -> Result<&'static str, String> {
    let model = model();
    let mut run = Run {
        model: &model,
        docker0: ifindex("docker0"),
        report: Report::default(),
        frags: HashMap::new(),
        policy_frags: HashMap::new(),
        frags6: HashMap::new(),
    };
    match run.judge(env, prog, input, code, out) {
        Ok(Class::Pass) => Ok("pass"),
        Ok(Class::Drop) => Ok("drop"),
        Ok(Class::Nat(_)) => Ok("translated"),
        Ok(Class::Refused) => Ok("refused"),
        Err(v) => Err(format!("{} {}", v.kind, v.detail)),
    }
}

fn model() -> Model {
    Model {
        mappings: mappings(),
        // As the daemon fills them: loopback is one of the host's.
        host_addrs: vec![HOST, HOST2, Ipv4Addr::LOCALHOST],
        policy: vec![C1],
    }
}

/// Publishes the run's mappings and host addresses in `env`.
pub fn publish_model(env: &mut Env) {
    setup(env, &model());
}

/// Runs `cfg.frames` mutated frames through each packet program
/// (`berth_ingress` and `berth_xdp` get the same frames and must agree).
pub fn run(cfg: &Config) -> Report {
    let cfg = cfg.clone();
    in_fixture_ns(move |env| {
        let start = Instant::now();
        let model = model();
        setup(env, &model);
        let mutator = Mutator { dict: dictionary() };
        let docker0 = ifindex("docker0");
        let ingress = ingress_seeds();
        let reply = reply_seeds();
        let policy = policy_seeds();
        let all: Vec<Vec<u8>> = ingress.iter().chain(&reply).cloned().collect();
        let mut run = Run {
            model: &model,
            docker0,
            report: Report {
                seed: cfg.seed,
                frames: cfg.frames,
                ..Default::default()
            },
            frags: HashMap::new(),
            policy_frags: HashMap::new(),
            frags6: HashMap::new(),
        };
        // One stream per program, so a program's frames do not depend on
        // how many others ran.
        for (i, prog) in [
            "berth_ingress",
            "berth_reply",
            "berth_deliver",
            "berth_from_ctr",
        ]
        .iter()
        .enumerate()
        {
            let mut rng = Rng::new(cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            reset_flows(env);
            let seeds = match *prog {
                "berth_ingress" => &ingress,
                "berth_reply" => &reply,
                "berth_from_ctr" => &policy,
                _ => &all,
            };
            for n in 0..cfg.frames {
                let seed = &seeds[rng.below(seeds.len())];
                let (f, how) = mutator.mutate(&mut rng, seed);
                if *prog == "berth_ingress" {
                    let x = run.one(env, "berth_xdp", &f, n, &how);
                    let t = run.one(env, "berth_ingress", &f, n, &how);
                    let v6 = be16(&f, 12) == Some(pkt::ETH_P_IPV6);
                    if v6 && matches!(t, Some(Class::Drop | Class::Nat(_))) {
                        run.report.ipv6_parsed += 1;
                    }
                    if let (Some(x), Some(t)) = (x, t) {
                        // XDP hands IPv6 to the TC program beside it.
                        if v6 && x != Class::Pass {
                            let v = Violation {
                                kind: "XDP did not pass IPv6 on".into(),
                                detail: format!("xdp {x:?}"),
                            };
                            run.violation("berth_xdp", v, &f, &[], n, &how);
                        } else if !v6 && x != t && t != Class::Refused {
                            let v = Violation {
                                kind: "TC and XDP disagree".into(),
                                detail: format!("tc {t:?} xdp {x:?}"),
                            };
                            run.violation("berth_ingress", v, &f, &[], n, &how);
                        }
                    }
                } else if *prog == "berth_from_ctr" {
                    // Both security-group hooks, which share what they
                    // remember about fragments.
                    run.one(env, "berth_from_ctr", &f, n, &how);
                    run.one(env, "berth_to_ctr", &f, n, &how);
                } else {
                    run.one(env, prog, &f, n, &how);
                }
                if (n + 1) % NAT_RESET_EVERY == 0 {
                    reset_flows(env);
                }
            }
        }
        run.report.elapsed = start.elapsed();
        run.report
    })
}
