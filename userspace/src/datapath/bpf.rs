//! aya loader: loads, attaches and pins the eBPF programs and owns their maps.
use std::{net::Ipv4Addr, path::PathBuf};

use super::{Datapath, DatapathError};
use crate::model::Binding;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Xdp,
    #[default]
    Tc,
}

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub uplinks: Vec<String>,
    pub bridge: String,
    /// bpffs mount point; berth pins under `<bpffs>/berth/`.
    pub bpffs: PathBuf,
    pub attach: AttachMode,
}

pub struct BpfDatapath {
    _private: (),
}

impl BpfDatapath {
    /// Load, attach and pin (or adopt what is pinned). Must run in the
    /// network namespace whose interfaces are named in `config`.
    pub fn open(config: &DatapathConfig) -> Result<Self, DatapathError> {
        let _ = config;
        Err(DatapathError::Other("not implemented yet".into()))
    }
}

impl Datapath for BpfDatapath {
    fn insert(&self, _binding: &Binding) -> Result<(), DatapathError> {
        todo!()
    }
    fn remove(&self, _binding: &Binding) -> Result<(), DatapathError> {
        todo!()
    }
    fn set_host_addrs(&self, _addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        todo!()
    }
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        todo!()
    }
    fn expire_flows(&self) -> Result<usize, DatapathError> {
        todo!()
    }
}
