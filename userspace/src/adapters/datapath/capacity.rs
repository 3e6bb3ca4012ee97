//! Map capacities from `berth daemon --max-flows` and `--max-mappings`,
//! applied when the maps are created (or migrated, when pinned maps of
//! another capacity are found): a host pays for the tables it asked for,
//! not for the largest any host could need. IPv6 flows have tables of
//! their own, sized by `--max-flows6`: most hosts carry far fewer of them.
//! The host address tables follow `--max-host-addrs`.
use berth_maps::{
    frags_capacity, frags_deny_capacity, lru_capacity, CT_MAP, CT_NEW_MAP, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FLOWS6, DEFAULT_MAX_HOST_ADDRS, DEFAULT_MAX_MAPPINGS, HOST_ADDRS_MAP, MAX_CAPACITY,
    NAT_FWD_MAP, NAT_MAP, NAT_NEW_MAP, PORTS_MAP, SERVICES_MAP, SOCK_REV_MAP,
};

/// `berth daemon` flags sizing the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Capacity {
    /// IPv4 flows tracked at once in each IPv4 flow table (published
    /// ports; security groups); IPv6's are `--max-flows6`. When one is full, new flows are refused and
    /// counted (`nat_table_full`, `ct_table_full`); established ones are never
    /// evicted. An empty table costs 16 bytes per flow of capacity, a
    /// tracked flow about 110 more. The tables of not yet established
    /// flows and of socket translations, which are preallocated, get an
    /// eighth of it each; the table of fragmented datagrams in flight a
    /// sixteenth (at least 1024), the one of refused first fragments a
    /// sixty-fourth (at least 64).
    /// `--nat-max`, `--ct-max` and `--ct-embryonic-max` override single
    /// tables. Pinned tables of another size are resized at
    /// start, their flows kept.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_FLOWS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CAPACITY))
    )]
    pub max_flows: u32,
    /// Published ports the datapath holds, one per (protocol, host
    /// address, host port); a request that would publish more is refused.
    /// 16 bytes per mapping of capacity, about 140 more per mapping
    /// published, and 48 bytes per mapping of capacity per CPU for the
    /// per-binding counters (preallocated).
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_MAPPINGS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CAPACITY))
    )]
    pub max_mappings: u32,
    /// IPv6 flows tracked at once in each IPv6 flow table (published
    /// ports; security groups), as many as IPv4's by default (an empty
    /// table costs its bucket array, 16 bytes a slot; entries are
    /// allocated as flows come). When one is full, new IPv6 flows
    /// are refused and counted as IPv4's are. The IPv6 tables of not yet
    /// established flows, of socket translations and of fragments get an
    /// eighth of it.
    /// `--nat-max`, `--ct-max` and `--ct-embryonic-max` set IPv6's single
    /// tables too.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_FLOWS6,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CAPACITY))
    )]
    pub max_flows6: u32,
    /// Host addresses each host address table holds, IPv4's and IPv6's
    /// (a wildcard mapping answers on these; no client may claim one).
    /// Every container's host-side veth has an IPv6 link-local address,
    /// so the IPv6 table grows with the containers: the default holds
    /// about 4 000. 16 bytes per address of capacity, about 80 more per
    /// address held. When the host has more, the link-local addresses of
    /// bridge ports are left out first, then other links', then the
    /// bridges'; the
    /// daemon warns and `berth status` and the metrics count them. Pinned
    /// tables of another size are resized at start.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_HOST_ADDRS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CAPACITY))
    )]
    pub max_host_addrs: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_flows: DEFAULT_MAX_FLOWS,
            max_mappings: DEFAULT_MAX_MAPPINGS,
            max_flows6: DEFAULT_MAX_FLOWS6,
            max_host_addrs: DEFAULT_MAX_HOST_ADDRS,
        }
    }
}

impl Capacity {
    /// (map, capacity) for every map these flags size, the single-table
    /// overrides (`--nat-max`, `--ct-max`, `--ct-embryonic-max`) applied.
    pub fn per_map(
        &self,
        nat: Option<u32>,
        ct: Option<u32>,
        embryonic: Option<u32>,
    ) -> Vec<(&'static str, u32)> {
        let lru = lru_capacity(self.max_flows);
        let lru6 = lru_capacity(self.max_flows6);
        vec![
            (SERVICES_MAP, self.max_mappings),
            (berth_maps::SERVICES6_MAP, self.max_mappings),
            (PORTS_MAP, self.max_mappings),
            (
                berth_maps::BINDING_STATS_MAP,
                berth_maps::binding_stats_capacity(self.max_mappings),
            ),
            (NAT_MAP, nat.unwrap_or(self.max_flows)),
            (NAT_FWD_MAP, nat.unwrap_or(self.max_flows)),
            (CT_MAP, ct.unwrap_or(self.max_flows)),
            (NAT_NEW_MAP, embryonic.unwrap_or(lru)),
            (CT_NEW_MAP, embryonic.unwrap_or(lru)),
            (berth_maps::CT6_MAP, ct.unwrap_or(self.max_flows6)),
            (berth_maps::NAT6_MAP, nat.unwrap_or(self.max_flows6)),
            (berth_maps::NAT6_NEW_MAP, embryonic.unwrap_or(lru6)),
            (berth_maps::NAT6_FWD_MAP, nat.unwrap_or(self.max_flows6)),
            (berth_maps::CT6_NEW_MAP, embryonic.unwrap_or(lru6)),
            (SOCK_REV_MAP, lru),
            (berth_maps::SOCK_REV6_MAP, lru6),
            (HOST_ADDRS_MAP, self.max_host_addrs),
            (berth_maps::HOST_ADDRS6_MAP, self.max_host_addrs),
            (berth_maps::FRAGS_MAP, frags_capacity(self.max_flows)),
            (berth_maps::FRAGS6_MAP, frags_capacity(self.max_flows6)),
            (
                berth_maps::FRAGS_DENY_MAP,
                frags_deny_capacity(self.max_flows),
            ),
            (
                berth_maps::FRAGS6_DENY_MAP,
                frags_deny_capacity(self.max_flows6),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        capacity: Capacity,
    }

    fn parse(args: &[&str]) -> Result<Capacity, String> {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
            .map(|c| c.capacity)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_what_the_object_declares() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, Capacity::default());
        let object =
            super::super::pins::expected_shapes(&super::super::ebpf_object().unwrap(), &[])
                .unwrap();
        for (map, n) in c.per_map(None, None, None) {
            assert_eq!(object[map].max_entries, n, "{map}");
        }
    }

    #[test]
    fn flows_size_every_flow_table_and_single_tables_can_differ() {
        let c = parse(&["--max-flows", "4096", "--max-mappings", "100"]).unwrap();
        let per_map = |nat, ct, emb| {
            c.per_map(nat, ct, emb)
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let m = per_map(None, None, None);
        assert_eq!((m[SERVICES_MAP], m[PORTS_MAP]), (100, 100));
        assert_eq!(m[berth_maps::SERVICES6_MAP], 100);
        assert_eq!((m[NAT_MAP], m[NAT_FWD_MAP], m[CT_MAP]), (4096, 4096, 4096));
        assert_eq!(
            (m[NAT_NEW_MAP], m[CT_NEW_MAP], m[SOCK_REV_MAP]),
            (512, 512, 512)
        );
        // IPv6 flows have their own size (`--max-flows6`, 16 384 by
        // default), whatever IPv4's.
        assert_eq!(m[berth_maps::SOCK_REV6_MAP], 2048);
        assert_eq!(
            (m[berth_maps::NAT6_MAP], m[berth_maps::NAT6_NEW_MAP]),
            (16384, 2048)
        );
        assert_eq!(
            (m[berth_maps::CT6_MAP], m[berth_maps::CT6_NEW_MAP]),
            (16384, 2048)
        );
        let m = per_map(Some(8), Some(9), Some(10));
        assert_eq!(
            (m[berth_maps::NAT6_MAP], m[berth_maps::NAT6_NEW_MAP]),
            (8, 10)
        );
        assert_eq!((m[NAT_MAP], m[NAT_FWD_MAP], m[CT_MAP]), (8, 8, 9));
        assert_eq!(
            (m[NAT_NEW_MAP], m[CT_NEW_MAP], m[SOCK_REV_MAP]),
            (10, 10, 512)
        );
        assert_eq!(m[berth_maps::CT6_MAP], 9, "--ct-max sets IPv6's table too");

        // `--max-flows6` sizes every IPv6 flow table and nothing else.
        let c6 = parse(&["--max-flows6", "4096"]).unwrap();
        let six = c6
            .per_map(None, None, None)
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>();
        assert_eq!(
            (six[berth_maps::NAT6_MAP], six[berth_maps::CT6_MAP]),
            (4096, 4096)
        );
        assert_eq!(
            (
                six[berth_maps::NAT6_NEW_MAP],
                six[berth_maps::CT6_NEW_MAP],
                six[berth_maps::SOCK_REV6_MAP]
            ),
            (512, 512, 512)
        );
        let defaults = parse(&[]).unwrap().per_map(None, None, None);
        for &(map, n) in &defaults {
            if !map.contains('6') {
                assert_eq!(six[map], n, "{map} does not follow --max-flows6");
            }
        }

        // `--max-host-addrs` sizes both host address tables and nothing else.
        let hosts = parse(&["--max-host-addrs", "100000"])
            .unwrap()
            .per_map(None, None, None);
        for ((map, n), (_, default)) in hosts.iter().zip(&defaults) {
            if *map == HOST_ADDRS_MAP || *map == berth_maps::HOST_ADDRS6_MAP {
                assert_eq!(*n, 100_000, "{map}");
            } else {
                assert_eq!(n, default, "{map} does not follow --max-host-addrs");
            }
        }

        let tiny = parse(&["--max-flows", "1"])
            .unwrap()
            .per_map(None, None, None);
        assert!(tiny.contains(&(NAT_NEW_MAP, 64)), "{tiny:?}");
    }

    /// The fragment tables follow `--max-flows` (IPv4) and `--max-flows6`
    /// (IPv6), an eighth each, the allowed datagrams in flight at least
    /// 1024; the single-table overrides are for flow tables and leave them
    /// alone.
    #[test]
    fn fragment_tables_follow_max_flows_per_family() {
        let c = parse(&["--max-flows", "65536", "--max-flows6", "8192"]).unwrap();
        let m = c
            .per_map(Some(8), Some(9), Some(10))
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>();
        assert_eq!(
            (m[berth_maps::FRAGS_MAP], m[berth_maps::FRAGS_DENY_MAP]),
            (4096, 1024)
        );
        assert_eq!(
            (m[berth_maps::FRAGS6_MAP], m[berth_maps::FRAGS6_DENY_MAP]),
            (1024, 128)
        );
        let small = parse(&["--max-flows", "100"])
            .unwrap()
            .per_map(None, None, None);
        assert!(small.contains(&(berth_maps::FRAGS_MAP, 1024)), "{small:?}");
        assert!(
            small.contains(&(berth_maps::FRAGS_DENY_MAP, 64)),
            "{small:?}"
        );
    }

    #[test]
    fn zero_and_absurd_sizes_are_refused_in_one_line() {
        for flag in [
            "--max-flows",
            "--max-mappings",
            "--max-flows6",
            "--max-host-addrs",
        ] {
            for bad in ["0", "16777217", "-1", "many"] {
                let e = parse(&[&format!("{flag}={bad}")]).unwrap_err();
                let first = e.lines().next().unwrap();
                assert!(
                    first.starts_with(&format!("error: invalid value '{bad}' for '{flag} <N>'")),
                    "{first}"
                );
            }
        }
    }
}
