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

impl Commit {
    /// What turns a store holding `before` into one holding `after`: the
    /// tasks, records, cool-downs and reserved ports that differ (no I/O;
    /// the registry commits it as one transaction).
    pub fn between(before: &Stored, after: &Stored) -> Self {
        let tasks = changed(&before.tasks, &after.tasks)
            .map(|(name, b)| (name.clone(), b.cloned().unwrap_or_default()))
            .collect();
        let task_defs = changed(&before.task_defs, &after.task_defs)
            .map(|(name, r)| (name.clone(), r.cloned()))
            .collect();
        let was: BTreeMap<_, _> = before.cooldowns.iter().copied().collect();
        let now: BTreeMap<_, _> = after.cooldowns.iter().copied().collect();
        let cooldowns = changed(&was, &now).map(|(k, t)| (*k, t.copied())).collect();
        Self {
            tasks,
            task_defs,
            cooldowns,
            reserved_add: after
                .reserved
                .difference(&before.reserved)
                .copied()
                .collect(),
            reserved_remove: before
                .reserved
                .difference(&after.reserved)
                .copied()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.task_defs.is_empty()
            && self.cooldowns.is_empty()
            && self.reserved_add.is_empty()
            && self.reserved_remove.is_empty()
    }
}

/// Keys whose value differs between `a` and `b`, with the value in `b`
/// (`None`: gone).
fn changed<'a, K: Ord, V: PartialEq>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, Option<&'a V>)> {
    let gone = a.keys().filter(|k| !b.contains_key(k)).map(|k| (k, None));
    let set = b
        .iter()
        .filter(|(k, v)| a.get(k) != Some(v))
        .map(|(k, v)| (k, Some(v)));
    gone.chain(set)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn b(task: &str, port: u16) -> Binding {
        Binding::for_test(task, Ipv4Addr::new(172, 17, 0, 2), port)
    }

    #[test]
    fn a_commit_between_two_states_holds_only_what_differs() {
        let before = Stored {
            tasks: BTreeMap::from([
                ("web".into(), vec![b("web", 8080)]),
                ("db".into(), vec![b("db", 5432)]),
                ("same".into(), vec![b("same", 9000)]),
            ]),
            cooldowns: vec![((Protocol::Tcp, 7000), 10), ((Protocol::Udp, 53), 20)],
            reserved: BTreeSet::from([8080, 5432]),
            ..Default::default()
        };
        let after = Stored {
            tasks: BTreeMap::from([
                ("web".into(), vec![b("web", 8080), b("web", 8081)]),
                ("same".into(), vec![b("same", 9000)]),
            ]),
            cooldowns: vec![((Protocol::Tcp, 7000), 30), ((Protocol::Udp, 53), 20)],
            reserved: BTreeSet::from([8080, 8081]),
            ..Default::default()
        };
        let c = Commit::between(&before, &after);
        assert_eq!(
            c.tasks,
            [
                ("db".to_string(), vec![]),
                ("web".to_string(), vec![b("web", 8080), b("web", 8081)])
            ]
        );
        assert_eq!(c.cooldowns, [((Protocol::Tcp, 7000), Some(30))]);
        assert_eq!(
            (c.reserved_add, c.reserved_remove),
            (vec![8081], vec![5432])
        );
        assert!(c.task_defs.is_empty());
        assert!(Commit::between(&after, &after).is_empty());
    }
}
