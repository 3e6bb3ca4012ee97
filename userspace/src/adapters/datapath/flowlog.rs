//! What the flow log reads from the datapath: the ring of refused flows
//! (`BERTH_FLOW_LOG`), the published-port flow tables with their
//! counters, the flows the daemon's own sweeps deleted since the last
//! read, and the `flow_log_lost` counter. [`BpfDatapath::flow_log_tap`]
//! turns recording on (`CONFIG_FLOW_LOG`); dropping the tap turns it off.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use berth_maps::{
    Counter, FlowEvent, FlowKey, NatEntry, CONFIG_FLOW_LOG, CONFIG_MAP, COUNTERS_MAP, NAT_MAP,
    NAT_NEW_MAP,
};

use super::{bpf::map_err, flows::batch_scan, BpfDatapath, DatapathError};

/// Deleted flows remembered between two reads; past this they are counted
/// lost (the window says SKIPDATA) rather than grow the daemon.
pub const MAX_DEPARTED: usize = 65_536;

/// Flows the daemon's sweeps deleted since the flow log last asked.
#[derive(Default)]
pub struct Departed {
    entries: Vec<(FlowKey, NatEntry)>,
    overflow: u64,
}

impl Departed {
    pub(super) fn push(&mut self, k: &FlowKey, v: &NatEntry) {
        if self.entries.len() < MAX_DEPARTED {
            self.entries.push((*k, *v));
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
    /// Calls `each` for every record waiting. A record of another size is
    /// skipped (it cannot come from this build's programs).
    pub fn drain(&mut self, mut each: impl FnMut(&FlowEvent)) {
        while let Some(item) = self.0.next() {
            if item.len() >= size_of::<FlowEvent>() {
                // SAFETY: at least size_of::<FlowEvent>() bytes, and
                // FlowEvent is plain data (bytemuck::Pod); unaligned read.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
                each(&ev);
            }
        }
    }
}

impl AsRawFd for FlowRing {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct FlowLogTap {
    tables: Vec<(&'static str, MapData)>,
    config: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    departed: DepartedSlot,
    departed_overflow: u64,
}

impl FlowLogTap {
    /// Every entry of the published-port flow tables now.
    pub fn scan(&self) -> Result<Vec<(FlowKey, NatEntry)>, DatapathError> {
        let mut out = Vec::new();
        for (name, map) in &self.tables {
            let fd = map.fd().as_fd().as_raw_fd();
            batch_scan(fd, |k: &FlowKey, v: &NatEntry| out.push((*k, *v))).map_err(
                |e: io::Error| DatapathError::Map {
                    map: name,
                    reason: e.to_string(),
                },
            )?;
        }
        Ok(out)
    }

    /// The flows deleted since the last call, with their final counts.
    pub fn take_departed(&mut self) -> Vec<(FlowKey, NatEntry)> {
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
        *self.departed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Departed::default());
        config
            .set(CONFIG_FLOW_LOG, 1, 0)
            .map_err(map_err(CONFIG_MAP))?;
        Ok((
            FlowLogTap {
                tables,
                config,
                counters,
                departed: self.departed.clone(),
                departed_overflow: 0,
            },
            FlowRing(ring),
        ))
    }
}
