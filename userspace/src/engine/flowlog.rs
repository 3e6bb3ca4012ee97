//! Flow-log aggregation: turns what the datapath holds into one capture
//! window's records. No I/O; the daemon feeds it.
//!
//! - An accepted flow is counted in its table entry (packets, bytes and
//!   TCP flags per direction, cumulative since the flow opened). At each
//!   window's end the daemon hands over every live entry, and the entries
//!   its sweeps deleted since the last window (expired, or their binding
//!   removed) with their final counts; the window's record is the
//!   difference from what the previous window saw, so a flow that lives
//!   across windows appears in each with that window's counts. A flow is
//!   the same flow while its opening time is (a tuple reused by a new flow
//!   starts from zero).
//! - A refused flow leaves no entry: each refused packet comes as a ring
//!   record ([`FlowEvent`], [`FlowEvent6`]), aggregated here per flow until
//!   the window ends.
//! - Both families alike: IPv4 and IPv6 table entries and ring records are
//!   read into [`TableFlow`] and [`Refusal`], which hold either.
//! - Each flow gives up to two records per window, as AWS logs the two
//!   directions of a connection: `ingress` (client -> host address:port,
//!   what the client sent) and `egress` (host address:port -> client, the
//!   container's replies), each only when it carried packets in the window.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use berth_maps::{FlowEvent, FlowEvent6, FlowKey, FlowKey6, NatEntry, NatEntry6, PROTO_TCP};

use crate::domain::{
    flowlog::{Action, Direction, FlowFields, LogStatus, Record},
    model::{Binding, EcsLabels},
};

/// Refused flows remembered per window; past this, refused packets of
/// other flows are dropped from the log and the window says SKIPDATA (a
/// flood of spoofed sources must not grow the daemon without bound).
pub const MAX_REJECT_FLOWS: usize = 65_536;

/// The two clocks at one instant: the datapath stamps `CLOCK_MONOTONIC`
/// (coarse), records carry Unix seconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub mono_ns: u64,
    pub unix_ns: u64,
}

impl Clock {
    /// Unix seconds of a datapath timestamp.
    pub fn unix_s(&self, ktime_ns: u64) -> u64 {
        let ago = self.mono_ns.saturating_sub(ktime_ns);
        self.unix_ns.saturating_sub(ago) / 1_000_000_000
    }

    pub fn now_s(&self) -> u64 {
        self.unix_ns / 1_000_000_000
    }
}

/// A flow-table entry's identity: its key, the reply tuple as the
/// container sends it. Fields in the order flows are logged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId {
    pub proto: u8,
    pub ctr: IpAddr,
    /// The client, as the container sees it.
    pub peer: IpAddr,
    pub ctr_port: u16,
    /// The client's port as the container sees it (remapped on a clash).
    pub peer_port: u16,
}

/// One published-port flow-table entry of either family, as the flow log
/// reads it (`BERTH_NAT*` and `BERTH_NAT6*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFlow {
    pub id: FlowId,
    /// The host address and port the client used.
    pub host: IpAddr,
    pub host_port: u16,
    /// The client's own source port.
    pub client_port: u16,
    pub last_seen_ns: u64,
    pub opened_ns: u64,
    /// Per direction: what the client sent, then the container's replies.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub tcp_flags: [u8; 2],
    /// The uplink it came in by.
    pub ifindex: u32,
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

impl TableFlow {
    pub fn v4(k: &FlowKey, e: &NatEntry) -> Self {
        Self {
            id: FlowId {
                proto: k.proto,
                ctr: addr(k.src_addr_be).into(),
                peer: addr(k.dst_addr_be).into(),
                ctr_port: u16::from_be(k.src_port_be),
                peer_port: u16::from_be(k.dst_port_be),
            },
            host: addr(e.host_addr_be).into(),
            host_port: u16::from_be(e.host_port_be),
            client_port: u16::from_be(e.client_port_be),
            last_seen_ns: e.last_seen_ns,
            opened_ns: e.opened_ns,
            packets: e.packets,
            bytes: e.bytes,
            tcp_flags: e.tcp_flags,
            ifindex: e.ifindex,
        }
    }

    pub fn v6(k: &FlowKey6, e: &NatEntry6) -> Self {
        Self {
            id: FlowId {
                proto: k.proto,
                ctr: Ipv6Addr::from(k.src_addr).into(),
                peer: Ipv6Addr::from(k.dst_addr).into(),
                ctr_port: u16::from_be(k.src_port_be),
                peer_port: u16::from_be(k.dst_port_be),
            },
            host: Ipv6Addr::from(e.host_addr).into(),
            host_port: u16::from_be(e.host_port_be),
            client_port: u16::from_be(e.client_port_be),
            last_seen_ns: e.last_seen_ns,
            opened_ns: e.opened_ns,
            packets: e.packets,
            bytes: e.bytes,
            tcp_flags: e.tcp_flags,
            ifindex: e.ifindex,
        }
    }
}

/// One refused packet of a new flow, of either family, as the client sent
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub ktime_ns: u64,
    pub proto: u8,
    pub client: IpAddr,
    pub client_port: u16,
    pub host: IpAddr,
    pub host_port: u16,
    /// The container the mapping points at.
    pub ctr: IpAddr,
    pub ctr_port: u16,
    pub ifindex: u32,
    /// The IP header and payload.
    pub ip_len: u16,
    pub tcp_flags: u8,
}

impl From<FlowEvent> for Refusal {
    fn from(ev: FlowEvent) -> Self {
        Self {
            ktime_ns: ev.ktime_ns,
            proto: ev.proto,
            client: addr(ev.src_addr_be).into(),
            client_port: u16::from_be(ev.src_port_be),
            host: addr(ev.dst_addr_be).into(),
            host_port: u16::from_be(ev.dst_port_be),
            ctr: addr(ev.ctr_addr_be).into(),
            ctr_port: u16::from_be(ev.ctr_port_be),
            ifindex: ev.ifindex,
            ip_len: ev.ip_len,
            tcp_flags: ev.tcp_flags,
        }
    }
}

impl From<FlowEvent6> for Refusal {
    fn from(ev: FlowEvent6) -> Self {
        Self {
            ktime_ns: ev.ktime_ns,
            proto: ev.proto,
            client: Ipv6Addr::from(ev.src_addr).into(),
            client_port: u16::from_be(ev.src_port_be),
            host: Ipv6Addr::from(ev.dst_addr).into(),
            host_port: u16::from_be(ev.dst_port_be),
            ctr: Ipv6Addr::from(ev.ctr_addr).into(),
            ctr_port: u16::from_be(ev.ctr_port_be),
            ifindex: ev.ifindex,
            ip_len: ev.ip_len,
            tcp_flags: ev.tcp_flags,
        }
    }
}

/// What the previous window saw of a flow.
#[derive(Clone, Copy, Debug)]
struct Seen {
    opened_ns: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    tcp_flags: [u8; 2],
}

impl Seen {
    fn of(e: &TableFlow) -> Self {
        Self {
            opened_ns: e.opened_ns,
            packets: e.packets,
            bytes: e.bytes,
            tcp_flags: e.tcp_flags,
        }
    }
}

/// A refused flow as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RejectKey {
    proto: u8,
    client: IpAddr,
    client_port: u16,
    host: IpAddr,
    host_port: u16,
    ctr: IpAddr,
    ctr_port: u16,
    ifindex: u32,
}

#[derive(Clone, Copy, Debug)]
struct RejectAgg {
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    first_s: u64,
    last_s: u64,
}

/// What one window's end hands over.
pub struct WindowInput<'a> {
    /// Every entry of the flow tables now.
    pub live: Vec<TableFlow>,
    /// Entries deleted since the last window, with their final counts.
    pub departed: Vec<TableFlow>,
    /// Records lost so far: the datapath's `flow_log_lost` and departed
    /// flows the daemon had no room for.
    pub lost_total: u64,
    /// The bindings now, for the ECS fields.
    pub bindings: &'a [Binding],
    pub clock: Clock,
}

pub struct Aggregator {
    account_id: Option<String>,
    /// Uplink ifindex -> name.
    uplinks: Vec<(u32, String)>,
    prev: HashMap<FlowId, Seen>,
    rejects: BTreeMap<RejectKey, RejectAgg>,
    rejects_skipped: u64,
    lost_seen: u64,
    window_start_s: u64,
}

impl Aggregator {
    /// Starts the first window now; losses before it are not this log's.
    pub fn new(
        account_id: Option<String>,
        uplinks: Vec<(u32, String)>,
        now_s: u64,
        lost_now: u64,
    ) -> Self {
        Self {
            account_id,
            uplinks,
            prev: HashMap::new(),
            rejects: BTreeMap::new(),
            rejects_skipped: 0,
            lost_seen: lost_now,
            window_start_s: now_s,
        }
    }

    /// What the tables hold when the log starts: counted already (by an
    /// earlier daemon's log, or before any log ran), so the first window
    /// logs only what comes after.
    pub fn seed(&mut self, live: &[TableFlow]) {
        self.prev = live.iter().map(|f| (f.id, Seen::of(f))).collect();
    }

    /// One refused packet from the ring.
    pub fn refused(&mut self, ev: &Refusal, clock: &Clock) {
        let key = RejectKey {
            proto: ev.proto,
            client: ev.client,
            client_port: ev.client_port,
            host: ev.host,
            host_port: ev.host_port,
            ctr: ev.ctr,
            ctr_port: ev.ctr_port,
            ifindex: ev.ifindex,
        };
        let at = clock.unix_s(ev.ktime_ns);
        if !self.rejects.contains_key(&key) && self.rejects.len() >= MAX_REJECT_FLOWS {
            self.rejects_skipped += 1;
            return;
        }
        let agg = self.rejects.entry(key).or_insert(RejectAgg {
            packets: 0,
            bytes: 0,
            tcp_flags: 0,
            first_s: at,
            last_s: at,
        });
        agg.packets += 1;
        agg.bytes += u64::from(ev.ip_len);
        agg.tcp_flags |= ev.tcp_flags & 0x07;
        agg.first_s = agg.first_s.min(at);
        agg.last_s = agg.last_s.max(at);
    }

    fn interface(&self, ifindex: u32) -> Option<String> {
        match self.uplinks.iter().find(|(i, _)| *i == ifindex) {
            Some((_, name)) => Some(name.clone()),
            None if ifindex != 0 => Some(ifindex.to_string()),
            None => None,
        }
    }

    /// Ends the window at `input.clock` and returns its records.
    pub fn close(&mut self, mut input: WindowInput<'_>) -> Vec<Record> {
        let now_s = input.clock.now_s();
        let start_s = self.window_start_s.min(now_s);
        let mut out = Vec::new();
        let mut departed = std::mem::take(&mut input.departed);
        departed.sort_by_key(|f| f.id);
        for f in &departed {
            let before = self.prev.remove(&f.id);
            self.flow_records(&mut out, f, before, start_s, &input);
        }
        // Mid-promotion a flow may sit in both tables: the fuller copy.
        let mut live: BTreeMap<FlowId, TableFlow> = BTreeMap::new();
        for f in &input.live {
            let total = |f: &TableFlow| f.packets[0] + f.packets[1];
            let slot = live.entry(f.id).or_insert(*f);
            if total(f) > total(slot) {
                *slot = *f;
            }
        }
        let mut next = HashMap::with_capacity(live.len());
        for f in live.values() {
            let before = self.prev.get(&f.id).copied();
            self.flow_records(&mut out, f, before, start_s, &input);
            next.insert(f.id, Seen::of(f));
        }
        self.prev = next;
        for (k, r) in std::mem::take(&mut self.rejects) {
            out.push(Record {
                account_id: self.account_id.clone(),
                interface: self.interface(k.ifindex),
                flow: Some(FlowFields {
                    src: k.client,
                    dst: k.host,
                    src_port: k.client_port,
                    dst_port: k.host_port,
                    protocol: k.proto,
                    packets: r.packets,
                    bytes: r.bytes,
                    action: Action::Reject,
                    pkt_src: k.client,
                    pkt_dst: k.ctr,
                    tcp_flags: (k.proto == PROTO_TCP).then_some(r.tcp_flags),
                    direction: Direction::Ingress,
                    ecs: ecs_of(input.bindings, k.proto, k.host_port, k.ctr, k.ctr_port),
                }),
                start: r.first_s.max(start_s),
                end: r.last_s.clamp(start_s, now_s),
                status: LogStatus::Ok,
            });
        }
        for (_, name) in &self.uplinks {
            if !out.iter().any(|r| r.interface.as_deref() == Some(name)) {
                out.push(self.bare(Some(name.clone()), start_s, now_s, LogStatus::NoData));
            }
        }
        let lost = input.lost_total.saturating_sub(self.lost_seen);
        if lost > 0 || self.rejects_skipped > 0 {
            out.push(self.bare(None, start_s, now_s, LogStatus::SkipData));
        }
        self.lost_seen = self.lost_seen.max(input.lost_total);
        self.rejects_skipped = 0;
        self.window_start_s = now_s;
        out
    }

    fn bare(&self, interface: Option<String>, start: u64, end: u64, s: LogStatus) -> Record {
        Record {
            account_id: self.account_id.clone(),
            interface,
            flow: None,
            start,
            end,
            status: s,
        }
    }

    /// The window's records of one flow: its counts minus `before`'s.
    fn flow_records(
        &self,
        out: &mut Vec<Record>,
        e: &TableFlow,
        before: Option<Seen>,
        start_s: u64,
        input: &WindowInput<'_>,
    ) {
        let now_s = input.clock.now_s();
        // Another flow on the same tuple, or counters that went back
        // (an entry re-created): everything it has is this window's.
        let before = before.filter(|b| {
            b.opened_ns == e.opened_ns
                && b.packets[0] <= e.packets[0]
                && b.packets[1] <= e.packets[1]
                && b.bytes[0] <= e.bytes[0]
                && b.bytes[1] <= e.bytes[1]
        });
        let start = match before {
            Some(_) => start_s,
            None if e.opened_ns != 0 => input.clock.unix_s(e.opened_ns).clamp(start_s, now_s),
            None => start_s,
        };
        let end = input.clock.unix_s(e.last_seen_ns).clamp(start, now_s);
        let k = &e.id;
        let (client, host, ctr) = (k.peer, e.host, k.ctr);
        let (client_port, host_port, ctr_port) = (e.client_port, e.host_port, k.ctr_port);
        let ecs = ecs_of(input.bindings, k.proto, host_port, ctr, ctr_port);
        for (d, direction) in [(0, Direction::Ingress), (1, Direction::Egress)] {
            let (p0, b0, f0) =
                before.map_or((0, 0, 0), |b| (b.packets[d], b.bytes[d], b.tcp_flags[d]));
            let packets = e.packets[d] - p0;
            if packets == 0 {
                continue;
            }
            // AWS reports an ACK only with a SYN: the container's SYN-ACK.
            let mut flags = e.tcp_flags[d] & !f0 & 0x07;
            if d == 1 && flags & 0x02 != 0 {
                flags |= 0x10;
            }
            let (src, dst, sport, dport, pkt_src, pkt_dst) = match direction {
                Direction::Ingress => (client, host, client_port, host_port, client, ctr),
                Direction::Egress => (host, client, host_port, client_port, ctr, client),
            };
            out.push(Record {
                account_id: self.account_id.clone(),
                interface: self.interface(e.ifindex),
                flow: Some(FlowFields {
                    src,
                    dst,
                    src_port: sport,
                    dst_port: dport,
                    protocol: k.proto,
                    packets,
                    bytes: e.bytes[d] - b0,
                    action: Action::Accept,
                    pkt_src,
                    pkt_dst,
                    tcp_flags: (k.proto == PROTO_TCP).then_some(flags),
                    direction,
                    ecs: ecs.clone(),
                }),
                start,
                end,
                status: LogStatus::Ok,
            });
        }
    }
}

/// The ECS labels of the binding a flow came in by.
fn ecs_of(
    bindings: &[Binding],
    proto: u8,
    host_port: u16,
    ctr: IpAddr,
    ctr_port: u16,
) -> EcsLabels {
    bindings
        .iter()
        .find(|b| {
            b.protocol.ip_proto() == proto
                && b.host_port == host_port
                && b.container_ip == ctr
                && b.container_port == ctr_port
        })
        .map(|b| b.ecs.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::flowlog::FlowLogFormat;

    const SEC: u64 = 1_000_000_000;
    const UNIX0: u64 = 1_700_000_000;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    /// The clock at `t` seconds after boot, boot being Unix `UNIX0`.
    fn clock(t: u64) -> Clock {
        Clock {
            mono_ns: t * SEC,
            unix_ns: (UNIX0 + t) * SEC,
        }
    }

    fn key(client_port: u16) -> FlowKey {
        FlowKey {
            src_addr_be: be([172, 17, 0, 2]),
            dst_addr_be: be([192, 0, 2, 2]),
            src_port_be: 80u16.to_be(),
            dst_port_be: client_port.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        }
    }

    fn entry(
        opened_s: u64,
        seen_s: u64,
        packets: [u64; 2],
        bytes: [u64; 2],
        flags: [u8; 2],
    ) -> NatEntry {
        NatEntry {
            host_addr_be: be([192, 0, 2, 1]),
            host_port_be: 8080u16.to_be(),
            last_seen_ns: seen_s * SEC,
            client_port_be: 40000u16.to_be(),
            packets,
            bytes,
            opened_ns: opened_s * SEC,
            ifindex: 7,
            tcp_flags: flags,
            ..Default::default()
        }
    }

    /// The IPv4 flow of client port `client_port` with this entry.
    fn flow(client_port: u16, e: NatEntry) -> TableFlow {
        TableFlow::v4(&key(client_port), &e)
    }

    fn binding() -> Binding {
        Binding {
            ecs: EcsLabels {
                task_arn: Some("arn:aws:ecs:r:1:task/c/t1".into()),
                container_name: None,
            },
            ..Binding::for_test("web", Ipv4Addr::new(172, 17, 0, 2), 8080)
        }
    }

    fn agg() -> Aggregator {
        Aggregator::new(
            None,
            vec![(7, "eth0".into()), (8, "eth1".into())],
            UNIX0 + 100,
            0,
        )
    }

    fn lines(records: &[Record], format: &str) -> Vec<String> {
        let f = FlowLogFormat::parse(format).unwrap();
        records.iter().map(|r| f.render(r)).collect()
    }

    const FMT: &str = "${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${packets} \
                       ${bytes} ${start} ${end} ${action} ${log-status} ${pkt-dstaddr} \
                       ${pkt-srcaddr} ${tcp-flags} ${flow-direction} ${ecs-task-id}";

    #[test]
    fn a_flow_gives_one_record_per_direction_with_that_windows_counts() {
        let mut a = agg();
        let b = [binding()];
        let first = a.close(WindowInput {
            live: vec![flow(40000, entry(105, 110, [3, 2], [180, 120], [2, 2]))],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(160),
        });
        assert_eq!(
            lines(&first, FMT),
            [
                "eth0 192.0.2.2 192.0.2.1 40000 8080 3 180 1700000105 1700000110 ACCEPT OK 172.17.0.2 192.0.2.2 2 ingress t1",
                "eth0 192.0.2.1 192.0.2.2 8080 40000 2 120 1700000105 1700000110 ACCEPT OK 192.0.2.2 172.17.0.2 18 egress t1",
                "eth1 - - - - - - 1700000100 1700000160 - NODATA - - - - -",
            ]
        );
        // Next window: only what came since, and no reply at all.
        let second = a.close(WindowInput {
            live: vec![flow(40000, entry(105, 200, [5, 2], [300, 120], [3, 2]))],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(220),
        });
        assert_eq!(
            lines(&second, FMT)[0],
            "eth0 192.0.2.2 192.0.2.1 40000 8080 2 120 1700000160 1700000200 ACCEPT OK 172.17.0.2 192.0.2.2 1 ingress t1"
        );
        assert_eq!(second.len(), 2, "one flow record and eth1's NODATA");
        // A quiet window: NODATA on each uplink.
        let third = a.close(WindowInput {
            live: vec![flow(40000, entry(105, 200, [5, 2], [300, 120], [3, 2]))],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(280),
        });
        assert!(
            third.iter().all(|r| r.status == LogStatus::NoData),
            "{third:?}"
        );
        assert_eq!(third.len(), 2);
    }

    #[test]
    fn flows_the_log_finds_at_its_start_count_from_then_on() {
        let mut a = agg();
        a.seed(&[flow(40000, entry(5, 90, [100, 90], [9000, 8000], [2, 2]))]);
        let out = a.close(WindowInput {
            live: vec![flow(40000, entry(5, 150, [103, 90], [9180, 8000], [3, 2]))],
            departed: vec![],
            lost_total: 0,
            bindings: &[],
            clock: clock(160),
        });
        assert_eq!(
            lines(
                &out,
                "${packets} ${bytes} ${tcp-flags} ${flow-direction} ${start}"
            ),
            ["3 180 1 ingress 1700000100", "- - - - 1700000100"]
        );
    }

    #[test]
    fn a_flow_deleted_between_windows_is_logged_with_its_final_counts() {
        let mut a = agg();
        let b = [binding()];
        a.close(WindowInput {
            live: vec![flow(40000, entry(105, 110, [3, 2], [180, 120], [2, 2]))],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(160),
        });
        let out = a.close(WindowInput {
            live: vec![],
            departed: vec![flow(40000, entry(105, 170, [4, 3], [220, 160], [3, 3]))],
            lost_total: 0,
            bindings: &b,
            clock: clock(220),
        });
        let l = lines(&out, "${packets} ${bytes} ${tcp-flags} ${flow-direction}");
        assert_eq!(l[..2], ["1 40 1 ingress", "1 40 1 egress"]);
        // A new flow reusing the tuple starts from zero.
        let out = a.close(WindowInput {
            live: vec![flow(40000, entry(230, 240, [1, 0], [60, 0], [2, 0]))],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(280),
        });
        assert_eq!(lines(&out, "${packets} ${start}")[0], "1 1700000230");
    }

    fn refused_event(sport: u16, at_s: u64) -> FlowEvent {
        FlowEvent {
            ktime_ns: at_s * SEC,
            src_addr_be: be([192, 0, 2, 3]),
            dst_addr_be: be([192, 0, 2, 1]),
            src_port_be: sport.to_be(),
            dst_port_be: 8080u16.to_be(),
            ctr_addr_be: be([172, 17, 0, 2]),
            ctr_port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            kind: berth_maps::FLOW_EV_REJECT_POLICY,
            ifindex: 8,
            ip_len: 60,
            tcp_flags: 0x02,
            ..Default::default()
        }
    }

    #[test]
    fn refused_packets_aggregate_per_flow_into_reject_records() {
        let mut a = agg();
        let c = clock(150);
        a.refused(&refused_event(41000, 110).into(), &c);
        a.refused(&refused_event(41000, 111).into(), &c);
        a.refused(&refused_event(41001, 112).into(), &c);
        let out = a.close(WindowInput {
            live: vec![],
            departed: vec![],
            lost_total: 0,
            bindings: &[binding()],
            clock: clock(160),
        });
        assert_eq!(
            lines(&out, FMT),
            [
                "eth1 192.0.2.3 192.0.2.1 41000 8080 2 120 1700000110 1700000111 REJECT OK 172.17.0.2 192.0.2.3 2 ingress t1",
                "eth1 192.0.2.3 192.0.2.1 41001 8080 1 60 1700000112 1700000112 REJECT OK 172.17.0.2 192.0.2.3 2 ingress t1",
                "eth0 - - - - - - 1700000100 1700000160 - NODATA - - - - -",
            ]
        );
    }

    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const CTR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);

    /// An IPv6 flow as `BERTH_NAT6` holds it: client port 40000 to
    /// `[2001:db8::1]:8080`, led to `[fd00:17::2]:80`.
    fn flow6(
        opened_s: u64,
        seen_s: u64,
        packets: [u64; 2],
        bytes: [u64; 2],
        flags: [u8; 2],
    ) -> TableFlow {
        let k = FlowKey6 {
            src_addr: CTR6.octets(),
            dst_addr: CLIENT6.octets(),
            src_port_be: 80u16.to_be(),
            dst_port_be: 40000u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let e = NatEntry6 {
            host_addr: HOST6.octets(),
            host_port_be: 8080u16.to_be(),
            last_seen_ns: seen_s * SEC,
            client_port_be: 40000u16.to_be(),
            packets,
            bytes,
            opened_ns: opened_s * SEC,
            ifindex: 7,
            tcp_flags: flags,
            ..Default::default()
        };
        TableFlow::v6(&k, &e)
    }

    fn binding6() -> Binding {
        Binding {
            container_ip: CTR6.into(),
            bind_ip: Ipv6Addr::UNSPECIFIED.into(),
            ..binding()
        }
    }

    #[test]
    fn ipv6_flows_are_logged_with_their_addresses_beside_ipv4_ones() {
        let mut a = agg();
        let b = [binding(), binding6()];
        let first = a.close(WindowInput {
            live: vec![
                flow6(105, 110, [3, 2], [240, 160], [2, 2]),
                flow(40000, entry(105, 110, [3, 2], [180, 120], [2, 2])),
            ],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(160),
        });
        let fmt = format!("${{type}} {FMT}");
        assert_eq!(
            lines(&first, &fmt),
            [
                "IPv4 eth0 192.0.2.2 192.0.2.1 40000 8080 3 180 1700000105 1700000110 ACCEPT OK 172.17.0.2 192.0.2.2 2 ingress t1",
                "IPv4 eth0 192.0.2.1 192.0.2.2 8080 40000 2 120 1700000105 1700000110 ACCEPT OK 192.0.2.2 172.17.0.2 18 egress t1",
                "IPv6 eth0 2001:db8::2 2001:db8::1 40000 8080 3 240 1700000105 1700000110 ACCEPT OK fd00:17::2 2001:db8::2 2 ingress t1",
                "IPv6 eth0 2001:db8::1 2001:db8::2 8080 40000 2 160 1700000105 1700000110 ACCEPT OK 2001:db8::2 fd00:17::2 18 egress t1",
                "- eth1 - - - - - - 1700000100 1700000160 - NODATA - - - - -",
            ]
        );
        // The next window: the IPv6 flow's difference, then its final
        // counts when a sweep deletes it.
        let second = a.close(WindowInput {
            live: vec![flow6(105, 200, [5, 2], [400, 160], [3, 2])],
            departed: vec![],
            lost_total: 0,
            bindings: &b,
            clock: clock(220),
        });
        assert_eq!(
            lines(
                &second,
                "${srcaddr} ${packets} ${bytes} ${tcp-flags} ${flow-direction}"
            )[0],
            "2001:db8::2 2 160 1 ingress"
        );
        let third = a.close(WindowInput {
            live: vec![],
            departed: vec![flow6(105, 230, [6, 3], [480, 240], [3, 3])],
            lost_total: 0,
            bindings: &b,
            clock: clock(280),
        });
        assert_eq!(
            lines(
                &third,
                "${srcaddr} ${packets} ${bytes} ${tcp-flags} ${flow-direction}"
            )[..2],
            ["2001:db8::2 1 80 0 ingress", "2001:db8::1 1 80 1 egress"]
        );
    }

    #[test]
    fn refused_ipv6_packets_aggregate_per_flow_into_reject_records() {
        let mut a = agg();
        let c = clock(150);
        let ev = |sport: u16, at_s: u64| FlowEvent6 {
            ktime_ns: at_s * SEC,
            src_addr: CLIENT6.octets(),
            dst_addr: HOST6.octets(),
            ctr_addr: CTR6.octets(),
            src_port_be: sport.to_be(),
            dst_port_be: 8080u16.to_be(),
            ctr_port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            kind: berth_maps::FLOW_EV_REJECT_POLICY,
            ifindex: 8,
            ip_len: 80,
            tcp_flags: 0x02,
            _pad: 0,
        };
        a.refused(&ev(41000, 110).into(), &c);
        a.refused(&ev(41000, 111).into(), &c);
        // An IPv4 refusal of the same ports stays a flow of its own.
        a.refused(&refused_event(41000, 112).into(), &c);
        let out = a.close(WindowInput {
            live: vec![],
            departed: vec![],
            lost_total: 0,
            bindings: &[binding6()],
            clock: clock(160),
        });
        assert_eq!(
            lines(&out, &format!("${{type}} {FMT}")),
            [
                "IPv4 eth1 192.0.2.3 192.0.2.1 41000 8080 1 60 1700000112 1700000112 REJECT OK 172.17.0.2 192.0.2.3 2 ingress -",
                "IPv6 eth1 2001:db8::2 2001:db8::1 41000 8080 2 160 1700000110 1700000111 REJECT OK fd00:17::2 2001:db8::2 2 ingress t1",
                "- eth0 - - - - - - 1700000100 1700000160 - NODATA - - - - -",
            ]
        );
    }

    #[test]
    fn losses_mark_their_window_skipdata_once() {
        let mut a = Aggregator::new(Some("123456789012".into()), vec![], UNIX0 + 100, 5);
        let input = |lost| WindowInput {
            live: vec![],
            departed: vec![],
            lost_total: lost,
            bindings: &[],
            clock: clock(160),
        };
        assert!(
            a.close(input(5)).is_empty(),
            "losses before the log started"
        );
        let out = a.close(input(9));
        assert_eq!(
            lines(&out, "${account-id} ${interface-id} ${log-status}"),
            ["123456789012 - SKIPDATA"]
        );
        assert!(a.close(input(9)).is_empty());
    }

    #[test]
    fn a_flood_of_refused_flows_is_bounded_and_reported_as_skipdata() {
        let mut a = Aggregator::new(None, vec![], UNIX0, 0);
        let c = clock(10);
        for i in 0..(MAX_REJECT_FLOWS as u32 + 10) {
            let mut ev = refused_event(1024, 5);
            ev.src_addr_be = i;
            a.refused(&ev.into(), &c);
        }
        let out = a.close(WindowInput {
            live: vec![],
            departed: vec![],
            lost_total: 0,
            bindings: &[],
            clock: c,
        });
        assert_eq!(out.len(), MAX_REJECT_FLOWS + 1);
        assert_eq!(out.last().unwrap().status, LogStatus::SkipData);
    }
}
