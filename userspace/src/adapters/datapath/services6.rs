//! Published IPv6 ports in `BERTH_SERVICES6` (issue 15, datapath
//! foundation). The kernel parses IPv6 at the uplinks and finds these
//! entries (counting `ipv6_untranslated`) but does not translate yet, and
//! no CLI or API call reaches this module yet: it is the adapter the
//! control plane will publish through, with the checks that keep a bad
//! entry out of the map.
use std::net::Ipv6Addr;

use berth_maps::{Backend6, ServiceKey6, SERVICES6_MAP};

use super::{
    bpf::{map_err, mappings_err, BpfDatapath},
    DatapathError,
};
use crate::domain::model::Protocol;

/// The map key of an IPv6 mapping: `host` `::` is the wildcard.
pub fn service_key6(host: Ipv6Addr, host_port: u16, proto: Protocol) -> ServiceKey6 {
    ServiceKey6 {
        host_addr: host.octets(),
        host_port_be: host_port.to_be(),
        proto: proto.ip_proto(),
        _pad: 0,
    }
}

/// The map value of an IPv6 mapping; `binding`: its per-binding counters
/// slot (0: none).
pub fn backend6(container: Ipv6Addr, port: u16, binding: u32) -> Backend6 {
    Backend6 {
        addr: container.octets(),
        port_be: port.to_be(),
        _pad: 0,
        binding,
    }
}

/// Why an IPv6 mapping cannot be published, if it cannot: addresses a
/// packet can never be sent to or from as unicast, and port 0.
pub fn check6(
    host: Ipv6Addr,
    host_port: u16,
    container: Ipv6Addr,
    port: u16,
) -> Result<(), DatapathError> {
    let bad = |what: String| Err(DatapathError::Other(what));
    if host_port == 0 || port == 0 {
        return bad("an IPv6 mapping needs non-zero host and container ports".into());
    }
    if host.is_multicast() || host.to_ipv4_mapped().is_some() {
        return bad(format!(
            "{host} cannot be an IPv6 host address (multicast or IPv4-mapped)"
        ));
    }
    if container.is_unspecified()
        || container.is_multicast()
        || container.is_loopback()
        || container.to_ipv4_mapped().is_some()
    {
        return bad(format!(
            "{container} cannot be a container's IPv6 address (unspecified, multicast, loopback or IPv4-mapped)"
        ));
    }
    Ok(())
}

impl BpfDatapath {
    /// Publish `host`:`host_port`/`proto` (`::`: every host address) to
    /// `container`:`port`. Refused with one error line, the map unchanged,
    /// for a mapping [`check6`] refuses or a full table.
    pub fn publish6(
        &self,
        host: Ipv6Addr,
        host_port: u16,
        proto: Protocol,
        container: Ipv6Addr,
        port: u16,
    ) -> Result<(), DatapathError> {
        check6(host, host_port, container, port)?;
        let mut m = self.lock();
        m.services6
            .insert(
                service_key6(host, host_port, proto),
                backend6(container, port, 0),
                0,
            )
            .map_err(mappings_err(SERVICES6_MAP, self.max_mappings))
    }

    /// Take an IPv6 mapping out; `false`: there was none.
    pub fn unpublish6(
        &self,
        host: Ipv6Addr,
        host_port: u16,
        proto: Protocol,
    ) -> Result<bool, DatapathError> {
        let key = service_key6(host, host_port, proto);
        let mut m = self.lock();
        match m.services6.remove(&key) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(map_err(SERVICES6_MAP)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const CTR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    #[test]
    fn keys_and_values_are_in_network_order_and_the_wildcard_is_all_zero() {
        let k = service_key6(HOST, 8080, Protocol::Tcp);
        assert_eq!(k.host_addr, HOST.octets());
        assert_eq!(k.host_port_be.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(k.proto, berth_maps::PROTO_TCP);
        let w = service_key6(Ipv6Addr::UNSPECIFIED, 53, Protocol::Udp);
        assert_eq!(w.host_addr, [0; 16]);
        assert_eq!(w.proto, berth_maps::PROTO_UDP);
        let v = backend6(CTR, 80, 7);
        assert_eq!(v.addr, CTR.octets());
        assert_eq!(v.port_be.to_ne_bytes(), [0, 80]);
        assert_eq!(v.binding, 7);
        assert_eq!(k._pad, 0, "padding zeroed: equal mappings hash alike");
    }

    #[test]
    fn check6_refuses_what_no_unicast_packet_can_carry() {
        check6(HOST, 8080, CTR, 80).unwrap();
        check6(Ipv6Addr::UNSPECIFIED, 8080, CTR, 80).unwrap();
        let mapped = std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped();
        for (host, hp, ctr, p) in [
            (HOST, 0, CTR, 80),
            (HOST, 8080, CTR, 0),
            ("ff02::1".parse().unwrap(), 8080, CTR, 80),
            (mapped, 8080, CTR, 80),
            (HOST, 8080, Ipv6Addr::UNSPECIFIED, 80),
            (HOST, 8080, Ipv6Addr::LOCALHOST, 80),
            (HOST, 8080, "ff02::2".parse().unwrap(), 80),
            (HOST, 8080, mapped, 80),
        ] {
            let e = check6(host, hp, ctr, p).unwrap_err().to_string();
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
