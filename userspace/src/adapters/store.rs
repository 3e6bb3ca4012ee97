//! Desired state on disk: `<state-dir>/berth.redb`. Tables:
//! - `tasks_v1`: task name → JSON array of its bindings;
//! - `task_defs_v1`: task name → JSON [`TaskRecord`], for tasks started from
//!   an ECS task definition;
//! - `cooldowns_v1`: (IP protocol number, host port) → Unix seconds it was
//!   released;
//! - `reserved_v1`: host ports berth added to `ip_local_reserved_ports`;
//! - security groups: see the `sg` submodule.
//!
//! One request's whole effect is one [`Commit`], one redb transaction.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

pub use crate::engine::ledger::{Commit, Stored};
use crate::{
    domain::error::{Error, Result},
    domain::model::{Binding, Protocol, TaskRecord},
    engine::{ledger::Ledger, sg_book::SgBook, sg_book::SgChanges},
};

mod sg;

pub const STORE_FILE: &str = "berth.redb";

/// Bump the suffix when the row format changes incompatibly.
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks_v1");
const TASK_DEFS: TableDefinition<&str, &str> = TableDefinition::new("task_defs_v1");
const COOLDOWNS: TableDefinition<(u8, u16), u64> = TableDefinition::new("cooldowns_v1");
const RESERVED: TableDefinition<u16, ()> = TableDefinition::new("reserved_v1");

fn protocol_of(number: u8) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .find(|p| p.ip_proto() == number)
}

/// redb's page cache. Its default (1 GiB) keeps every page the daemon ever
/// read or wrote in the heap; the daemon reads the store once at start
/// (its desired state lives in the registry afterwards) and writes a few
/// pages a request, so a small cache costs nothing measurable and the
/// store's memory stops growing with the number of commits.
const STORE_CACHE_BYTES: usize = 256 * 1024;

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store in `state_dir`. A second process
    /// opening the same file gets an error: redb locks it.
    pub fn open(state_dir: &Path) -> Result<Self> {
        if !state_dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
        }
        let path = state_dir.join(STORE_FILE);
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| store_err(&path, e))?;
        let store = Self { db, path };
        // Create the tables up front so readers never see "no such table".
        store.commit(&Commit::default())?;
        Ok(store)
    }

    /// Opens the store in `state_dir` only if it exists (`berth reset`).
    pub fn open_existing(state_dir: &Path) -> Result<Option<Self>> {
        if state_dir.join(STORE_FILE).exists() {
            Self::open(state_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored task with its bindings.
    pub fn load(&self) -> Result<BTreeMap<String, Vec<Binding>>> {
        let err = |e: &dyn std::fmt::Display| store_err(&self.path, e);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(TASKS).map_err(|e| err(&e))?;
        let mut tasks = BTreeMap::new();
        for row in table.iter().map_err(|e| err(&e))? {
            let (key, value) = row.map_err(|e| err(&e))?;
            let bindings: Vec<Binding> = serde_json::from_str(value.value())
                .map_err(|e| err(&format_args!("task {}: unreadable row: {e}", key.value())))?;
            tasks.insert(key.value().to_owned(), bindings);
        }
        Ok(tasks)
    }

    /// Everything: tasks, task records, cool-downs and berth's reserved
    /// ports.
    pub fn load_all(&self) -> Result<Stored> {
        let err = |e: &dyn std::fmt::Display| store_err(&self.path, e);
        let tasks = self.load()?;
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let mut task_defs = BTreeMap::new();
        let table = txn.open_table(TASK_DEFS).map_err(|e| err(&e))?;
        for row in table.iter().map_err(|e| err(&e))? {
            let (key, value) = row.map_err(|e| err(&e))?;
            let record: TaskRecord = serde_json::from_str(value.value()).map_err(|e| {
                err(&format_args!(
                    "task {}: unreadable task record: {e}",
                    key.value()
                ))
            })?;
            task_defs.insert(key.value().to_owned(), record);
        }
        let mut cooldowns = Vec::new();
        let table = txn.open_table(COOLDOWNS).map_err(|e| err(&e))?;
        for row in table.iter().map_err(|e| err(&e))? {
            let (key, value) = row.map_err(|e| err(&e))?;
            let (proto, port) = key.value();
            // A protocol this version does not know cannot be allocated.
            if let Some(protocol) = protocol_of(proto) {
                cooldowns.push(((protocol, port), value.value()));
            }
        }
        let mut reserved = BTreeSet::new();
        let table = txn.open_table(RESERVED).map_err(|e| err(&e))?;
        for row in table.iter().map_err(|e| err(&e))? {
            reserved.insert(row.map_err(|e| err(&e))?.0.value());
        }
        Ok(Stored {
            tasks,
            task_defs,
            cooldowns,
            reserved,
        })
    }

    /// Replaces a task's bindings; an empty list deletes the task.
    pub fn put_task(&self, task: &str, bindings: &[Binding]) -> Result<()> {
        self.commit(&Commit {
            tasks: vec![(task.to_owned(), bindings.to_vec())],
            ..Default::default()
        })
    }

    /// Applies every change of `c` in one transaction.
    pub fn commit(&self, c: &Commit) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| store_err(&self.path, e);
        let encode = |what: &str, json: serde_json::Result<String>| {
            json.map_err(|e| err(&format_args!("encoding {what}: {e}")))
        };
        let tasks: Vec<(&str, Option<String>)> = c
            .tasks
            .iter()
            .map(|(task, bindings)| {
                let json = (!bindings.is_empty())
                    .then(|| encode(&format!("task {task}"), serde_json::to_string(bindings)))
                    .transpose()?;
                Ok((task.as_str(), json))
            })
            .collect::<Result<_>>()?;
        let task_defs: Vec<(&str, Option<String>)> = c
            .task_defs
            .iter()
            .map(|(task, record)| {
                let json = record
                    .as_ref()
                    .map(|r| encode(&format!("task record {task}"), serde_json::to_string(r)))
                    .transpose()?;
                Ok((task.as_str(), json))
            })
            .collect::<Result<_>>()?;

        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        let write = || -> Result<(), redb::Error> {
            let mut table = txn.open_table(TASKS)?;
            for (task, json) in &tasks {
                match json {
                    Some(json) => drop(table.insert(*task, json.as_str())?),
                    None => drop(table.remove(*task)?),
                }
            }
            let mut table = txn.open_table(TASK_DEFS)?;
            for (task, json) in &task_defs {
                match json {
                    Some(json) => drop(table.insert(*task, json.as_str())?),
                    None => drop(table.remove(*task)?),
                }
            }
            let mut table = txn.open_table(COOLDOWNS)?;
            for &((protocol, port), at) in &c.cooldowns {
                let key = (protocol.ip_proto(), port);
                match at {
                    Some(at) => drop(table.insert(key, at)?),
                    None => drop(table.remove(key)?),
                }
            }
            let mut table = txn.open_table(RESERVED)?;
            for &port in &c.reserved_add {
                table.insert(port, ())?;
            }
            for &port in &c.reserved_remove {
                table.remove(port)?;
            }
            Ok(())
        };
        write().map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))
    }
}

fn store_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Store {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl Ledger for Store {
    fn load_all(&self) -> Result<Stored> {
        Self::load_all(self)
    }
    fn commit(&self, c: &Commit) -> Result<()> {
        Self::commit(self, c)
    }
    fn load_sgs(&self) -> Result<SgBook> {
        Self::load_sgs(self)
    }
    fn commit_sgs(&self, c: &SgChanges) -> Result<()> {
        Self::commit_sgs(self, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(task: &str, host_port: u16) -> Binding {
        Binding::for_test(task, [172, 17, 0, 2], host_port)
    }

    #[test]
    fn tasks_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_task("web", &[binding("web", 8080), binding("web", 8081)])
                .unwrap();
            store.put_task("db", &[binding("db", 5432)]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let tasks = store.load().unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks["web"], [binding("web", 8080), binding("web", 8081)]);
        assert_eq!(tasks["db"], [binding("db", 5432)]);
    }

    #[test]
    fn ecs_labels_survive_reopening_and_are_absent_from_other_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let mut labelled = binding("abc123.web", 8080);
        labelled.ecs = crate::domain::model::EcsLabels {
            task_arn: Some("arn:aws:ecs:us-east-1:1:task/c/abc123".into()),
            container_name: Some("web".into()),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_task("abc123.web", &[labelled.clone()]).unwrap();
            store.put_task("db", &[binding("db", 5432)]).unwrap();
        }
        let tasks = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(tasks["abc123.web"], [labelled]);
        assert_eq!(tasks["db"], [binding("db", 5432)]);
        let json = serde_json::to_value(&tasks["db"][0]).unwrap();
        assert!(json.get("ecsTaskArn").is_none(), "{json}");
        assert!(json.get("ecsContainerName").is_none(), "{json}");
    }

    #[test]
    fn ipv6_bindings_survive_reopening_beside_a_record_written_before_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        let mut v6 = binding("web", 8080);
        v6.container_ip = "fd00::2".parse().unwrap();
        v6.bind_ip = "::".parse().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_task("web", &[binding("web", 8080), v6.clone()])
                .unwrap();
        }
        let tasks = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(tasks["web"], [binding("web", 8080), v6]);
        // A record as an IPv4-only release wrote it.
        let old = r#"[{"task":"db","containerIP":"172.17.0.2","bindIP":"0.0.0.0","hostPort":5432,"containerPort":80,"protocol":"tcp"}]"#;
        let loaded: Vec<Binding> = serde_json::from_str(old).unwrap();
        assert_eq!(loaded, [binding("db", 5432)]);
        assert!(!loaded[0].is_ipv6());
    }

    #[test]
    fn empty_binding_list_deletes_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_task("web", &[binding("web", 8080)]).unwrap();
        store.put_task("web", &[]).unwrap();
        assert!(store.load().unwrap().is_empty());
    }

    #[test]
    fn state_dir_is_created_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        Store::open(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(state.join(STORE_FILE).exists());
    }

    #[test]
    fn second_open_of_the_same_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, Error::Store { .. }), "{err}");
    }
}
