//! IPv4 fragments. Only a datagram's first fragment carries the ports, so
//! it is judged and translated like any packet and what it decided is
//! remembered in `BERTH_FRAGS` per (source, destination, protocol, IP id);
//! the later fragments follow it:
//!
//! - DNAT at an uplink: (client, host address) -> the container address;
//!   later fragments get the new destination address (and the IPv4
//!   checksum; their payload has no L4 header, and the first fragment's
//!   incremental L4 checksum update covers the whole datagram).
//! - Reply SNAT at the container's veth (or the bridge, where no veth hook
//!   saw it): (container, client) -> the host address; later fragments get
//!   the new source address. Both hooks share the entry.
//! - Policy at a container's veth: the verdict, allow or deny, per veth
//!   and direction (`FragKey::ifindex`, `FRAG_K_POLICY(_OUT)`): a verdict
//!   one port's judge gave never lets another port's later fragments
//!   through, so a container cannot slip forged fragments into a datagram
//!   another port allowed.
//!
//! - A first fragment an uplink drops (refused by the security groups, a
//!   spoofed source, a full table, a TCP segment of no flow): deny under
//!   the DNAT key, so its later fragments are dropped there (counted
//!   `frag_denied`), not queued by the host's reassembly until they time
//!   out.
//!
//! Entries are overwritten by the next first fragment with the same key
//! (IP ids wrap) and count as absent after `FRAG_TIMEOUT_NS`.
//!
//! Refusals live apart: allowed and translated datagrams in `BERTH_FRAGS`,
//! refused ones in `BERTH_FRAGS_DENY` (same key and value). Anyone on the
//! LAN can send refused first fragments as fast as the link goes (random
//! IP ids, spoofed sources, ports the groups refuse); in one LRU table
//! they would evict every allowed datagram in flight, whose later
//! fragments would then be dropped at a veth (`frag_no_first`) or pass
//! untranslated at an uplink. Apart, such a flood only evicts other
//! refusals. What an evicted refusal costs, per key kind:
//!
//! - DNAT (uplink): a later fragment with no entry is left to the host
//!   (it may be its own), whose reassembly holds it until its own timeout
//!   and limits (`ipfrag_*`) drop it: that is why refusals are remembered
//!   there at all, and why a flood can at worst give the host's
//!   reassembly queue some of its own later fragments.
//! - Policy (veth): a later fragment with no entry is dropped anyway
//!   (`frag_no_first`); the refusal only counts it `frag_denied` instead,
//!   so an evicted one costs nothing but that counter's accuracy.
//! - SNAT: never refused here (nothing is remembered for a dropped reply).
//!
//! A refusal removes the allowed entry of an older datagram with the same
//! key (what one write did when both were one table), so its later
//! fragments never ride that verdict; a lookup asks the allowed table
//! first, which then holds the newest verdict when it holds one.
//!
//! Not bounded: allowed first fragments. A sender the groups admit (any
//! source, spoofed or not, on a port open to 0.0.0.0/0; a container's
//! egress, open by default, to destinations of its choosing) can still
//! write more allowed entries than `BERTH_FRAGS` holds while another
//! datagram's fragments are in flight. A quota per source is no bound
//! where sources are spoofed, and one per flow or per veth needs a count
//! the LRU table cannot keep; the table's size (`--max-flows`) is what the
//! sender has to outrun.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use berth_maps::{
    FragEntry, FragKey, FRAGS_DENY_CAPACITY, FRAG_K_POLICY, FRAG_K_POLICY_OUT, FRAG_TIMEOUT_NS,
    FRAG_V_ALLOW,
};

use crate::{
    csum,
    maps::BERTH_FRAGS,
    parse::{ptr_at, Flow, Frag, IP_CSUM_OFF, IP_TTL_OFF},
    sys::BPF_ANY,
};

/// The first fragments refused (`berth_maps::FRAGS_DENY_MAP`), apart from
/// the allowed ones in `BERTH_FRAGS`.
#[map]
pub(crate) static BERTH_FRAGS_DENY: LruHashMap<FragKey, FragEntry> =
    LruHashMap::pinned(FRAGS_DENY_CAPACITY, 0);

#[inline(always)]
pub(crate) fn frag_key(kind: u8, src_be: u32, dst_be: u32, proto: u8, id_be: u16) -> FragKey {
    FragKey {
        src_addr_be: src_be,
        dst_addr_be: dst_be,
        id_be,
        proto,
        kind,
        ifindex: 0,
    }
}

/// The key of a security-group verdict at veth `ifindex`, on what the
/// container sends (`from`) or receives.
#[inline(always)]
pub(crate) fn frag_policy_key(
    from: bool,
    ifindex: u32,
    src_be: u32,
    dst_be: u32,
    proto: u8,
    id_be: u16,
) -> FragKey {
    let kind = if from {
        FRAG_K_POLICY_OUT
    } else {
        FRAG_K_POLICY
    };
    FragKey {
        ifindex,
        ..frag_key(kind, src_be, dst_be, proto, id_be)
    }
}

#[inline(always)]
pub(crate) fn frag_key_of_flow(kind: u8, f: &Flow) -> FragKey {
    frag_key(kind, f.src_addr_be, f.dst_addr_be, f.proto, f.ip_id_be)
}

#[inline(always)]
pub(crate) fn frag_key_of_frag(kind: u8, f: &Frag) -> FragKey {
    frag_key(kind, f.src_addr_be, f.dst_addr_be, f.proto, f.ip_id_be)
}

/// Remember what a first fragment decided (replacing any older datagram's
/// entry with the same key): an allowed one in `BERTH_FRAGS`, a refused
/// one in `BERTH_FRAGS_DENY`. The maps are LRU: they never refuse.
#[inline(always)]
pub(crate) fn frag_remember(key: &FragKey, addr_be: u32, verdict: u8) {
    let e = FragEntry {
        addr_be,
        verdict,
        _pad: [0; 3],
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    if verdict == FRAG_V_ALLOW {
        let _ = BERTH_FRAGS.insert(key, &e, BPF_ANY);
    } else {
        let _ = BERTH_FRAGS.remove(key);
        let _ = BERTH_FRAGS_DENY.insert(key, &e, BPF_ANY);
    }
}

/// What the first fragment of this later fragment's datagram decided, if
/// it was seen recently: the allowed table first (a newer refusal removed
/// what it held), then the refused one.
#[inline(always)]
pub(crate) fn frag_lookup(key: &FragKey) -> Option<FragEntry> {
    let e = match unsafe { BERTH_FRAGS.get(key) } {
        Some(e) => *e,
        None => unsafe { BERTH_FRAGS_DENY.get(key) }.copied()?,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(e.created_ns) > FRAG_TIMEOUT_NS {
        return None;
    }
    Some(e)
}

/// Which address of a later fragment changes.
#[derive(Clone, Copy)]
pub(crate) struct FragRewrite {
    pub addr_off: usize,
    pub old_addr_be: u32,
    pub new_addr_be: u32,
}

/// Rewrite a later fragment's address, fix the IPv4 checksum, decrement
/// the TTL, with direct writes (XDP, and TC after the headers were
/// pulled: a fragment is never `CHECKSUM_PARTIAL`, and an IPv4 header that
/// still sums to its checksum leaves a `CHECKSUM_COMPLETE` value valid).
#[inline(always)]
pub(crate) fn frag_rewrite(
    data: usize,
    data_end: usize,
    f: &Frag,
    rw: &FragRewrite,
) -> Result<(), ()> {
    let ip_csum = ptr_at::<u16>(data, data_end, IP_CSUM_OFF).ok_or(())?;
    let ttl_word = ptr_at::<u16>(data, data_end, IP_TTL_OFF).ok_or(())?;
    let addr = ptr_at::<u32>(data, data_end, rw.addr_off).ok_or(())?;
    unsafe {
        let old_ttl = u16::from_ne_bytes([f.ttl, f.proto]);
        let new_ttl = u16::from_ne_bytes([f.ttl - 1, f.proto]);
        let mut c = csum::replace4(
            core::ptr::read_unaligned(ip_csum),
            rw.old_addr_be,
            rw.new_addr_be,
        );
        c = csum::replace2(c, old_ttl, new_ttl);
        core::ptr::write_unaligned(ip_csum, c);
        core::ptr::write_unaligned(ttl_word, new_ttl);
        core::ptr::write_unaligned(addr, rw.new_addr_be);
    }
    Ok(())
}
