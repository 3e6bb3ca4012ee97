//! `-p` publish specs: `PortSpec::from_str`, then what a parsed spec
//! promises: its canonical form parses back to itself, and it expands to
//! one mapping per port, host port i to container port i, within its
//! ranges, never port 0; a host range for one container port is a pool
//! that expands to nothing until a port of it is picked.
#![no_main]
use std::{net::Ipv4Addr, str::FromStr};

use berth::spec::PortSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match PortSpec::from_str(text) {
        Ok(spec) => spec,
        Err(e) => {
            // The message a user sees must render.
            let _ = e.to_string();
            return;
        }
    };
    let canonical = spec.to_string();
    let again = PortSpec::from_str(&canonical)
        .unwrap_or_else(|e| panic!("{text:?} -> {canonical:?} does not parse: {e}"));
    assert_eq!(again, spec, "{text:?} -> {canonical:?}");

    let c = spec.container;
    assert!(
        c.start >= 1 && c.start <= c.end,
        "{text:?}: container range {c:?}"
    );
    let count = spec.expand().count();
    if let Some(pool) = spec.host_pool() {
        // `9000-9009:80`: one container port, a longer host range to pick from.
        assert!(pool.start >= 1 && pool.start < pool.end, "{text:?}: pool {pool:?}");
        assert_eq!(c.port_count(), 1, "{text:?}: a pool serves one container port");
        assert_eq!(count, 0, "{text:?}: a pool expands to nothing until placed");
        let placed = spec.with_host_start(pool.end);
        assert_eq!(placed.host_pool(), None, "{text:?}");
        assert_eq!(placed.expand().count(), 1, "{text:?}");
        return;
    }
    match spec.fixed_host() {
        None => assert_eq!(count, 0, "{text:?}: a dynamic spec expands to nothing"),
        Some(h) => {
            assert!(
                h.start >= 1 && h.start <= h.end,
                "{text:?}: host range {h:?}"
            );
            assert_eq!(h.port_count(), c.port_count(), "{text:?}");
            assert_eq!(count as u32, c.port_count(), "{text:?}");
            for (i, m) in spec.expand().enumerate() {
                assert_eq!(u32::from(m.host_port), u32::from(h.start) + i as u32);
                assert_eq!(u32::from(m.container_port), u32::from(c.start) + i as u32);
                // No host IP: IPv4's wildcard for an IPv4-only container.
                let bind_ip = spec.bind_ip.unwrap_or(Ipv4Addr::UNSPECIFIED.into());
                assert_eq!((m.bind_ip, m.protocol), (bind_ip, spec.protocol));
                // A mapping's own spec form parses to a one-port spec.
                let one = PortSpec::from_str(&m.to_string()).expect("mapping form parses");
                assert_eq!(one.expand().next(), Some(m));
            }
        }
    }
    // A dynamic spec placed where it fits becomes a full one of the same shape.
    if spec.host.is_none() {
        let start = (65535 - (c.port_count() - 1)) as u16;
        let placed = spec.with_host_start(start);
        let h = placed.host.expect("placed");
        assert_eq!((h.start, h.end), (start, 65535), "{text:?}");
        assert_eq!(placed.expand().count() as u32, c.port_count());
    }
});
