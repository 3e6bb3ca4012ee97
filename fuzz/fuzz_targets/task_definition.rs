//! ECS task definitions (`berth task run`, `POST /v1/tasks`):
//! `TaskDefinition::from_json`, then every container's port mappings as
//! `-p` specs, which must survive their canonical form, and the pairing of
//! containers with IP addresses.
#![no_main]
use std::{collections::BTreeMap, net::Ipv4Addr, str::FromStr};

use berth::{ecs::TaskDefinition, spec::PortSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let def = match TaskDefinition::from_json(data) {
        Ok(def) => def,
        Err(e) => {
            let _ = e.to_string();
            assert!((400..600).contains(&e.http_status()), "{e}");
            return;
        }
    };
    assert!(!def.containers.is_empty());
    let mut ips = BTreeMap::new();
    for (i, c) in def.containers.iter().enumerate() {
        assert!(!c.name.is_empty());
        for spec in c.specs() {
            let text = spec.to_string();
            let again = PortSpec::from_str(&text)
                .unwrap_or_else(|e| panic!("{spec:?} -> {text:?} does not parse: {e}"));
            assert_eq!(again, spec, "{text:?}");
            let _ = spec.expand().count();
        }
        ips.insert(
            c.name.clone(),
            Ipv4Addr::new(172, 17, (i >> 8) as u8, i as u8 + 2),
        );
    }
    // Every container with its own address: pairs them all, unless no
    // container publishes anything.
    match def.container_ips(&ips) {
        Ok(paired) => assert_eq!(paired.len(), def.containers.len()),
        Err(e) => {
            assert!(
                def.containers.iter().all(|c| c.port_mappings.is_empty()),
                "{e}"
            );
        }
    }
    // Without addresses, a container with port mappings is refused.
    if def.containers.iter().any(|c| !c.port_mappings.is_empty()) {
        assert!(def.container_ips(&BTreeMap::new()).is_err());
    }
});
