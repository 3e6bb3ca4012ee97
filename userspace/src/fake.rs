//! An in-memory [`Datapath`] for unit tests, with injectable failures.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use crate::{
    datapath::{Datapath, DatapathError},
    model::Binding,
};

#[derive(Default)]
pub struct FakeDatapath {
    bindings: Mutex<BTreeSet<Binding>>,
    host_addrs: Mutex<Vec<Ipv4Addr>>,
    fail_insert_port: Mutex<Option<u16>>,
    fail_remove_port: Mutex<Option<u16>>,
    removes: AtomicUsize,
    host_addr_updates: AtomicUsize,
    expire_calls: AtomicUsize,
}

impl FakeDatapath {
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().unwrap().iter().cloned().collect()
    }
    pub fn host_addrs(&self) -> Vec<Ipv4Addr> {
        self.host_addrs.lock().unwrap().clone()
    }
    pub fn fail_insert_of_host_port(&self, port: u16) {
        *self.fail_insert_port.lock().unwrap() = Some(port);
    }
    pub fn fail_remove_of_host_port(&self, port: u16) {
        *self.fail_remove_port.lock().unwrap() = Some(port);
    }
    pub fn removes(&self) -> usize {
        self.removes.load(Ordering::SeqCst)
    }
    pub fn host_addr_updates(&self) -> usize {
        self.host_addr_updates.load(Ordering::SeqCst)
    }
    pub fn expire_calls(&self) -> usize {
        self.expire_calls.load(Ordering::SeqCst)
    }
}

fn injected(map: &'static str) -> DatapathError {
    DatapathError::Map {
        map,
        reason: "injected failure".into(),
    }
}

impl Datapath for FakeDatapath {
    fn insert(&self, binding: &Binding) -> Result<(), DatapathError> {
        if *self.fail_insert_port.lock().unwrap() == Some(binding.host_port) {
            return Err(injected("BINDINGS"));
        }
        self.bindings.lock().unwrap().insert(binding.clone());
        Ok(())
    }
    fn remove(&self, binding: &Binding) -> Result<(), DatapathError> {
        if *self.fail_remove_port.lock().unwrap() == Some(binding.host_port) {
            return Err(injected("BINDINGS"));
        }
        self.removes.fetch_add(1, Ordering::SeqCst);
        self.bindings.lock().unwrap().remove(binding);
        Ok(())
    }
    fn set_host_addrs(&self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        self.host_addr_updates.fetch_add(1, Ordering::SeqCst);
        *self.host_addrs.lock().unwrap() = addrs.to_vec();
        Ok(())
    }
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        Ok(vec![
            ("bindings", self.bindings.lock().unwrap().len() as u64),
            ("passed", 7),
        ])
    }
    fn expire_flows(&self) -> Result<usize, DatapathError> {
        self.expire_calls.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}
