//! With a default security group, IPv4 from a bridge port whose hooks are
//! not attached yet is refused, so a new container cannot talk in the few
//! milliseconds between joining the bridge and being hooked.
//!
//! The bridge device and the other ports' egress cannot see which port a
//! frame came in by, so `berth_from_ctr` (on every hooked port) records
//! source MAC -> its port; `berth_reply` (bridge ingress) and `berth_to_ctr`
//! (port egress) accept a frame only if its source MAC was last seen on a
//! port the daemon lists as hooked. `berth_from_ctr` runs before the bridge
//! handles the same frame, so a hooked port's traffic is always learned in
//! time; a MAC left over from a removed container points at a port that is
//! no longer listed. Frames the host itself sends carry a bridge's MAC: any
//! served bridge's (`BERTH_BRIDGE_MACS`), as a host routing between two
//! bridges sends with the outgoing one's.
use berth_maps::{Counter, CONFIG_PORT_GATE};

use crate::{
    maps::{count, BERTH_BRIDGE_MACS, BERTH_CONFIG, BERTH_HOOKED_PORTS, BERTH_PORT_MACS},
    parse::{ptr_at, ETH_P_IP_BE},
    sys::BPF_ANY,
};

const ETH_SRC_OFF: usize = 6;
/// For [`gate_refuses`] where the ingress interface is the bridge itself.
pub(crate) const FROM_A_PORT: u32 = u32::MAX;
const ETH_TYPE_OFF: usize = 12;

#[inline(always)]
fn gate_on() -> bool {
    BERTH_CONFIG.get(CONFIG_PORT_GATE).is_some_and(|v| *v != 0)
}

/// The source MAC in the low 48 bits.
#[inline(always)]
fn eth_src(data: usize, data_end: usize) -> Option<u64> {
    let p: *const [u8; 6] = ptr_at(data, data_end, ETH_SRC_OFF)?;
    let m = unsafe { *p };
    Some(u64::from_be_bytes([
        0, 0, m[0], m[1], m[2], m[3], m[4], m[5],
    ]))
}

/// On a hooked port's ingress: frames from this MAC come in by `ifindex`.
#[inline(always)]
pub(crate) fn gate_learn(data: usize, data_end: usize, ifindex: u32) {
    if !gate_on() {
        return;
    }
    let Some(mac) = eth_src(data, data_end) else {
        return;
    };
    if unsafe { BERTH_PORT_MACS.get(&mac) }.copied() != Some(ifindex) {
        // LRU: an evicted MAC is learned again by its next frame, here,
        // before the bridge sees that frame.
        let _ = BERTH_PORT_MACS.insert(&mac, &ifindex, BPF_ANY);
    }
}

/// Whether an IPv4 frame on the bridge came in by a port that is not
/// hooked (yet). `ingress_ifindex` 0 means the host sent it. Counted as
/// `unhooked_port`.
#[inline(always)]
pub(crate) fn gate_refuses(data: usize, data_end: usize, ingress_ifindex: u32) -> bool {
    if !gate_on() || ingress_ifindex == 0 {
        return false;
    }
    let Some(ty) = ptr_at::<u16>(data, data_end, ETH_TYPE_OFF) else {
        return false;
    };
    if unsafe { *ty } != ETH_P_IP_BE {
        return false;
    }
    let Some(mac) = eth_src(data, data_end) else {
        return false;
    };
    if unsafe { BERTH_BRIDGE_MACS.get(&mac) }.is_some() {
        return false; // sent or translated by the host
    }
    let hooked = unsafe { BERTH_PORT_MACS.get(&mac) }
        .is_some_and(|port| unsafe { BERTH_HOOKED_PORTS.get(port) }.is_some());
    if !hooked {
        count(Counter::UnhookedPort);
    }
    !hooked
}
