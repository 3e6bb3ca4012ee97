//! The IPv6 clash remaps (`BERTH_NAT6_FWD`, kernel side `ebpf/src/remap6.rs`):
//! a new NAT66 flow whose reply tuple another flow held got another client
//! port towards the container, remembered under its client-side tuple.
//! The datapath never removes the remap of a flow that ends, so the
//! daemon forgets each remap whose flow is gone, whenever it has swept
//! the IPv6 flow tables, as IPv4's (`ops.rs`, `forget_orphan_remaps`).
use berth_maps::{FlowKey6, NatEntry6, NatFwd6};

use super::{
    bpf::BpfDatapath,
    flows::FlowTable,
    flows6::{sweep6, FlowMap6},
};

/// The reply-tuple key of the flow a remap entry belongs to.
pub(super) fn fwd6_flow_key(wire: &FlowKey6, f: &NatFwd6) -> FlowKey6 {
    FlowKey6 {
        src_addr: f.backend_addr,
        dst_addr: wire.src_addr,
        src_port_be: f.backend_port_be,
        dst_port_be: f.remap_port_be,
        proto: wire.proto,
        _pad: [0; 3],
    }
}

/// Whether `e` (found under [`fwd6_flow_key`]) is the flow of remap entry
/// `wire`: the same host address and port and client port. Another
/// client's flow may hold the key once the remapped one ended.
pub(super) fn fwd6_owns(wire: &FlowKey6, e: &NatEntry6) -> bool {
    e.host_addr == wire.dst_addr
        && e.host_port_be == wire.dst_port_be
        && e.client_port_be == wire.src_port_be
}

/// Whether remap `(wire, f)` has no flow left in `flows`.
fn orphan(flows: &[FlowMap6<NatEntry6>], wire: &FlowKey6, f: &NatFwd6) -> bool {
    let key = fwd6_flow_key(wire, f);
    let e = flows.iter().find_map(|t| t.map.get(&key, 0).ok());
    !e.is_some_and(|e| fwd6_owns(wire, &e))
}

/// `BERTH_NAT6_FWD` as a table [`sweep6`] walks.
pub(super) fn fwd6_table(
    map: aya::maps::HashMap<aya::maps::MapData, FlowKey6, NatFwd6>,
) -> FlowMap6<NatFwd6> {
    FlowMap6 {
        name: berth_maps::NAT6_FWD_MAP,
        table: FlowTable::Established,
        map,
    }
}

impl BpfDatapath {
    /// Forgets the IPv6 remaps whose flow no longer exists (expired,
    /// forgotten with its binding, ended with its address); an existing
    /// flow's remap is never touched. A failure is logged and retried at
    /// the next sweep: a leftover remap is only looked up, never trusted
    /// without its flow.
    pub(super) fn forget_orphan_remaps6(&self) {
        let fwd = std::slice::from_ref(&self.nat6_fwd);
        match sweep6(fwd, |wire, f, _| orphan(&self.nat6_flows, wire, f)) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(remaps = n, "forgot IPv6 clash remaps of ended flows"),
            Err(e) => tracing::warn!(error = %e, "could not forget IPv6 clash remaps"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> [u8; 16] {
        let mut x = [0u8; 16];
        (x[0], x[1], x[15]) = (0xfd, 0, last);
        x
    }

    #[test]
    fn a_remap_names_its_flow_by_the_remapped_reply_tuple() {
        let wire = FlowKey6 {
            src_addr: a(9),
            dst_addr: a(1),
            src_port_be: 40000u16.to_be(),
            dst_port_be: 8081u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let f = NatFwd6 {
            backend_addr: a(2),
            backend_port_be: 80u16.to_be(),
            remap_port_be: 51000u16.to_be(),
        };
        let k = fwd6_flow_key(&wire, &f);
        assert_eq!((k.src_addr, k.dst_addr), (a(2), a(9)));
        assert_eq!(
            (u16::from_be(k.src_port_be), u16::from_be(k.dst_port_be)),
            (80, 51000)
        );
        assert_eq!(k.proto, 6);
        let mut e = NatEntry6 {
            host_addr: a(1),
            host_port_be: 8081u16.to_be(),
            client_port_be: 40000u16.to_be(),
            ..NatEntry6::default()
        };
        assert!(fwd6_owns(&wire, &e));
        e.host_port_be = 8080u16.to_be();
        assert!(!fwd6_owns(&wire, &e), "another host port's flow");
        e.host_port_be = 8081u16.to_be();
        e.client_port_be = 51000u16.to_be();
        assert!(!fwd6_owns(&wire, &e), "a client whose own port it is");
        e.client_port_be = 40000u16.to_be();
        e.host_addr = a(3);
        assert!(!fwd6_owns(&wire, &e), "another host address");
    }
}
