//! Address translation shared by the TC and XDP programs. The decisions
//! (which mapping, which flow entry) are made here; how bytes and checksums
//! are rewritten depends on the hook, behind [`Rewriter`].
use aya_ebpf::helpers::bpf_ktime_get_ns;
use berth_maps::{
    Backend, Counter, FlowKey, NatEntry, ServiceKey, NAT_F_CLOSING, NAT_F_REPLIED, PROTO_TCP,
};

use crate::{
    maps::{count, BERTH_HOST_ADDRS, BERTH_NAT, BERTH_SERVICES},
    parse::{Flow, IP_DST_OFF, IP_SRC_OFF, TCP_FLAG_FIN, TCP_FLAG_RST},
};

/// One side of a flow to rewrite: address at `addr_off`, port at `port_off`.
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub addr_off: usize,
    pub old_addr_be: u32,
    pub new_addr_be: u32,
    pub port_off: usize,
    pub old_port_be: u16,
    pub new_port_be: u16,
}

/// Byte and checksum rewriting for one hook (TC: skb helpers that know about
/// CHECKSUM_PARTIAL; XDP: direct writes and RFC 1624 arithmetic).
pub trait Rewriter {
    /// Rewrite address and port, fix the IPv4 and L4 checksums, decrement
    /// the TTL. `Err` means the packet could not be written.
    fn rewrite(&mut self, flow: &Flow, rw: &Rewrite) -> Result<(), ()>;
}

#[inline(always)]
pub fn ingress_rewrite(flow: &Flow, backend: &Backend) -> Rewrite {
    Rewrite {
        addr_off: IP_DST_OFF,
        old_addr_be: flow.dst_addr_be,
        new_addr_be: backend.addr_be,
        port_off: flow.l4_off + 2,
        old_port_be: flow.dst_port_be,
        new_port_be: backend.port_be,
    }
}

#[inline(always)]
pub fn reply_rewrite(flow: &Flow, entry: &NatEntry) -> Rewrite {
    Rewrite {
        addr_off: IP_SRC_OFF,
        old_addr_be: flow.src_addr_be,
        new_addr_be: entry.host_addr_be,
        port_off: flow.l4_off,
        old_port_be: flow.src_port_be,
        new_port_be: entry.host_port_be,
    }
}

/// The mapping for a packet arriving on an uplink: an exact host address
/// first, then the wildcard if the destination is one of the host's own.
#[inline(always)]
pub fn lb4_lookup_service(flow: &Flow) -> Option<Backend> {
    let mut key = ServiceKey {
        host_addr_be: flow.dst_addr_be,
        host_port_be: flow.dst_port_be,
        proto: flow.proto,
        _pad: 0,
    };
    if let Some(b) = unsafe { BERTH_SERVICES.get(&key) } {
        return Some(*b);
    }
    unsafe { BERTH_HOST_ADDRS.get(&flow.dst_addr_be) }?;
    key.host_addr_be = 0;
    unsafe { BERTH_SERVICES.get(&key) }.copied()
}

#[inline(always)]
fn closing(flow: &Flow) -> bool {
    flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
}

/// Make sure the reply direction of this new or ongoing flow is tracked.
/// A new flow must first pass the receiving task's security groups.
/// Never evicts: when the table is full a new flow is refused (`Err`).
#[inline(always)]
pub fn ct_track_ingress(flow: &Flow, backend: &Backend) -> Result<(), ()> {
    let key = FlowKey {
        src_addr_be: backend.addr_be,
        dst_addr_be: flow.src_addr_be,
        src_port_be: backend.port_be,
        dst_port_be: flow.src_port_be,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(e) = BERTH_NAT.get_ptr_mut(&key) {
        unsafe {
            (*e).last_seen_ns = now;
            if closing(flow) {
                (*e).flags |= NAT_F_CLOSING;
            }
        }
        return Ok(());
    }
    if !crate::policy::ingress_allows(
        flow.proto,
        flow.src_addr_be,
        backend.addr_be,
        backend.port_be,
        flow.src_port_be,
    ) {
        return Err(());
    }
    let entry = NatEntry {
        host_addr_be: flow.dst_addr_be,
        host_port_be: flow.dst_port_be,
        flags: if closing(flow) { NAT_F_CLOSING } else { 0 },
        _pad: 0,
        last_seen_ns: now,
    };
    // BPF_NOEXIST: a concurrent insert of the same flow on another CPU wins
    // harmlessly; a full table fails with E2BIG.
    match BERTH_NAT.insert(&key, &entry, 1) {
        Ok(()) => Ok(()),
        Err(e) if e == -17 => Ok(()),
        Err(_) => {
            count(Counter::NatTableFull);
            Err(())
        }
    }
}

/// The tracked flow a container's packet replies to, refreshed.
#[inline(always)]
pub fn ct_lookup_reply(flow: &Flow) -> Option<NatEntry> {
    let key = FlowKey {
        src_addr_be: flow.src_addr_be,
        dst_addr_be: flow.dst_addr_be,
        src_port_be: flow.src_port_be,
        dst_port_be: flow.dst_port_be,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let e = BERTH_NAT.get_ptr_mut(&key)?;
    unsafe {
        (*e).last_seen_ns = bpf_ktime_get_ns();
        (*e).flags |= NAT_F_REPLIED;
        if closing(flow) {
            (*e).flags |= NAT_F_CLOSING;
        }
        Some(*e)
    }
}
