//! What the flow log reads from the datapath: the ring of refused flows
//! (`BERTH_FLOW_LOG`, IPv4 and IPv6 records told apart by length), the
//! published-port flow tables of both families with their counters, the
//! flows the daemon's own sweeps deleted since the last read, and the
//! `flow_log_lost` counter. [`BpfDatapath::flow_log_tap`]
//! turns recording on (`CONFIG_FLOW_LOG`); dropping the tap turns it off.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use berth_maps::{
    Counter, FlowEvent, FlowEvent6, FlowKey, FlowKey6, NatEntry, NatEntry6, CONFIG_FLOW_LOG,
    CONFIG_MAP, COUNTERS_MAP, NAT6_MAP, NAT6_NEW_MAP, NAT_MAP, NAT_NEW_MAP,
};

use super::{
    bpf::map_err,
    flows::{batch_scan, batch_scan_keyed},
    BpfDatapath, DatapathError,
};
use crate::engine::flowlog::{Refusal, TableFlow};

/// Deleted flows remembered between two reads; past this they are counted
/// lost (the window says SKIPDATA) rather than grow the daemon.
pub const MAX_DEPARTED: usize = 65_536;

/// Flows the daemon's sweeps deleted since the flow log last asked.
#[derive(Default)]
pub struct Departed {
    entries: Vec<TableFlow>,
    overflow: u64,
}

impl Departed {
    /// `flow` reads the entry only when there is room for it.
    pub(super) fn push(&mut self, flow: impl FnOnce() -> TableFlow) {
        if self.entries.len() < MAX_DEPARTED {
            self.entries.push(flow());
        } else {
            self.overflow += 1;
        }
    }
}

/// `None` while no flow log runs: sweeps then remember nothing.
pub type DepartedSlot = Arc<Mutex<Option<Departed>>>;

/// The ring of refused flows; readable when its fd is.
pub struct FlowRing(RingBuf<MapData>);

impl FlowRing {
    /// Calls `each` for every record waiting, of either family. A record
    /// of neither layout's length is skipped with a warning (this build's
    /// programs write none).
    pub fn drain(&mut self, mut each: impl FnMut(&Refusal)) {
        let mut odd = 0u64;
        while let Some(item) = self.0.next() {
            match refusal(&item) {
                Some(r) => each(&r),
                None => odd += 1,
            }
        }
        if odd > 0 {
            tracing::warn!(
                records = odd,
                "flow log: ring records of an unknown layout skipped"
            );
        }
    }
}

/// One ring record: the kernel keeps the length each was reserved with,
/// and the IPv4 and IPv6 layouts differ in length (`berth_maps` asserts
/// it), so at most one reads it.
fn refusal(item: &[u8]) -> Option<Refusal> {
    read::<FlowEvent>(item)
        .map(Refusal::from)
        .or_else(|| read::<FlowEvent6>(item).map(Refusal::from))
}

/// `item` as a `T`, if it is exactly one's length.
fn read<T: aya::Pod>(item: &[u8]) -> Option<T> {
    (item.len() == size_of::<T>()).then(|| {
        // SAFETY: exactly size_of::<T>() bytes, and T is plain data
        // (aya::Pod, resting on bytemuck::Pod: any bytes are a value);
        // unaligned read.
        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) }
    })
}

impl AsRawFd for FlowRing {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct FlowLogTap {
    tables: Vec<(&'static str, MapData)>,
    tables6: Vec<(&'static str, MapData)>,
    config: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    departed: DepartedSlot,
    departed_overflow: u64,
}

impl FlowLogTap {
    /// Every entry of the published-port flow tables, IPv4 and IPv6, now.
    pub fn scan(&self) -> Result<Vec<TableFlow>, DatapathError> {
        let mut out = Vec::new();
        let err = |map| {
            move |e: io::Error| DatapathError::Map {
                map,
                reason: e.to_string(),
            }
        };
        for (name, map) in &self.tables {
            let fd = map.fd().as_fd().as_raw_fd();
            batch_scan(fd, |k: &FlowKey, v: &NatEntry| {
                out.push(TableFlow::v4(k, v))
            })
            .map_err(err(name))?;
        }
        for (name, map) in &self.tables6 {
            let fd = map.fd().as_fd().as_raw_fd();
            batch_scan_keyed(fd, |k: &FlowKey6, v: &NatEntry6| {
                out.push(TableFlow::v6(k, v));
            })
            .map_err(err(name))?;
        }
        Ok(out)
    }

    /// The flows deleted since the last call, with their final counts.
    pub fn take_departed(&mut self) -> Vec<TableFlow> {
        let mut slot = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
        let d = slot.get_or_insert_with(Departed::default);
        self.departed_overflow += std::mem::take(&mut d.overflow);
        std::mem::take(&mut d.entries)
    }

    /// Records lost so far: ring losses and deleted flows past
    /// [`MAX_DEPARTED`].
    pub fn lost(&self) -> Result<u64, DatapathError> {
        let per_cpu = self
            .counters
            .get(&(Counter::FlowLogLost as u32), 0)
            .map_err(map_err(COUNTERS_MAP))?;
        Ok(per_cpu.iter().sum::<u64>() + self.departed_overflow)
    }
}

impl Drop for FlowLogTap {
    fn drop(&mut self) {
        *self.departed.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if let Err(e) = self.config.set(CONFIG_FLOW_LOG, 0, 0) {
            tracing::warn!(error = %e, "turning the datapath's flow-log records off");
        }
    }
}

fn from_pin(bpf: &BpfDatapath, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(bpf.status.pin_dir.join(name)).map_err(map_err(name))
}

impl BpfDatapath {
    /// Starts recording for a flow log: the ring (once per load) and a
    /// tap on the tables; the datapath writes refused flows from now on.
    pub fn flow_log_tap(&self) -> Result<(FlowLogTap, FlowRing), DatapathError> {
        let ring = self
            .flow_ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                DatapathError::Other(
                    "the flow-log ring is taken already, or the datapath was loaded without a flow log"
                        .into(),
                )
            })?;
        let counters =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(from_pin(self, COUNTERS_MAP)?))
                .map_err(map_err(COUNTERS_MAP))?;
        let mut config = Array::try_from(aya::maps::Map::Array(from_pin(self, CONFIG_MAP)?))
            .map_err(map_err(CONFIG_MAP))?;
        let tables = vec![
            (NAT_MAP, from_pin(self, NAT_MAP)?),
            (NAT_NEW_MAP, from_pin(self, NAT_NEW_MAP)?),
        ];
        let tables6 = vec![
            (NAT6_MAP, from_pin(self, NAT6_MAP)?),
            (NAT6_NEW_MAP, from_pin(self, NAT6_NEW_MAP)?),
        ];
        *self.departed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Departed::default());
        config
            .set(CONFIG_FLOW_LOG, 1, 0)
            .map_err(map_err(CONFIG_MAP))?;
        Ok((
            FlowLogTap {
                tables,
                tables6,
                config,
                counters,
                departed: self.departed.clone(),
                departed_overflow: 0,
            },
            FlowRing(ring),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use berth_maps::{FLOW_EV_REJECT_FULL, PROTO_UDP};

    use super::*;

    fn bytes<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is plain data without padding (bytemuck::Pod).
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn a_ring_records_length_says_its_family() {
        let v6 = |a: [u16; 8]| Ipv6Addr::from(a);
        let ev6 = FlowEvent6 {
            ktime_ns: 7,
            src_addr: v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]).octets(),
            dst_addr: v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]).octets(),
            ctr_addr: v6([0xfd00, 0x17, 0, 0, 0, 0, 0, 2]).octets(),
            src_port_be: 41000u16.to_be(),
            dst_port_be: 8053u16.to_be(),
            ctr_port_be: 53u16.to_be(),
            proto: PROTO_UDP,
            kind: FLOW_EV_REJECT_FULL,
            ifindex: 3,
            ip_len: 1448,
            tcp_flags: 0,
            _pad: 0,
        };
        let r = refusal(&bytes(&ev6)).expect("an IPv6 record");
        assert_eq!(
            (r.client, r.host, r.ctr),
            (
                IpAddr::V6(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2])),
                IpAddr::V6(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1])),
                IpAddr::V6(v6([0xfd00, 0x17, 0, 0, 0, 0, 0, 2])),
            )
        );
        assert_eq!(
            (
                r.client_port,
                r.host_port,
                r.ctr_port,
                r.proto,
                r.ip_len,
                r.ifindex,
                r.ktime_ns
            ),
            (41000, 8053, 53, PROTO_UDP, 1448, 3, 7)
        );
        let ev = FlowEvent {
            src_addr_be: u32::from_ne_bytes([192, 0, 2, 3]),
            dst_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            ctr_addr_be: u32::from_ne_bytes([172, 17, 0, 2]),
            ip_len: 60,
            ..Default::default()
        };
        let r = refusal(&bytes(&ev)).expect("an IPv4 record");
        assert_eq!(
            (r.client, r.ctr, r.ip_len),
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)),
                IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
                60
            )
        );
        // Neither layout's length: not read as either.
        let mut long = bytes(&ev6);
        long.push(0);
        for odd in [&*long, &long[..40 - 1], &long[..72 - 1], &[][..]] {
            assert_eq!(refusal(odd), None, "{} bytes", odd.len());
        }
    }
}
