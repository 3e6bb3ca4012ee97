//! What the engine asks of its persistent store: load everything at start,
//! and commit a request's changes in one transaction. The redb store in
//! `adapters::store` implements it.
use std::collections::{BTreeMap, BTreeSet};

use crate::{
    domain::{
        error::Result,
        model::{Binding, Protocol, TaskRecord},
    },
    engine::sg_book::{SgBook, SgChanges},
};

/// The store the registry commits to. Each call is one transaction: a
/// commit either lands whole or not at all.
pub trait Ledger: Send + Sync {
    fn load_all(&self) -> Result<Stored>;
    fn commit(&self, c: &Commit) -> Result<()>;
    fn load_sgs(&self) -> Result<SgBook>;
    fn commit_sgs(&self, c: &SgChanges) -> Result<()>;
}

/// Everything the store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub tasks: BTreeMap<String, Vec<Binding>>,
    pub task_defs: BTreeMap<String, TaskRecord>,
    pub cooldowns: Vec<((Protocol, u16), u64)>,
    pub reserved: BTreeSet<u16>,
}

/// Changes committed together.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// A task's new bindings; an empty list deletes the task.
    pub tasks: Vec<(String, Vec<Binding>)>,
    /// A task's record; `None` deletes it.
    pub task_defs: Vec<(String, Option<TaskRecord>)>,
    /// Release times to set (`Some`) or forget (`None`).
    pub cooldowns: Vec<((Protocol, u16), Option<u64>)>,
    pub reserved_add: Vec<u16>,
    pub reserved_remove: Vec<u16>,
}
