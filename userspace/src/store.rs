//! Desired state on disk: `<state-dir>/berth.redb`, one row per task
//! (task name → JSON array of its bindings). Each request changes one task,
//! so one row write is one request's whole effect, committed atomically.
use std::{
    collections::BTreeMap,
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{
    error::{Error, Result},
    model::Binding,
};

pub const STORE_FILE: &str = "berth.redb";

/// Bump the suffix when the row format changes incompatibly.
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks_v1");

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
        let db = Database::create(&path).map_err(|e| store_err(&path, e))?;
        let store = Store { db, path };
        // Create the table up front so readers never see "no such table".
        store.write(|_| Ok(()))?;
        Ok(store)
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

    /// Replaces a task's bindings; an empty list deletes the task.
    pub fn put_task(&self, task: &str, bindings: &[Binding]) -> Result<()> {
        let json = serde_json::to_string(bindings)
            .map_err(|e| store_err(&self.path, format_args!("encoding task {task}: {e}")))?;
        self.write(|table| {
            if bindings.is_empty() {
                table.remove(task)?;
            } else {
                table.insert(task, json.as_str())?;
            }
            Ok(())
        })
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &str>) -> Result<(), redb::StorageError>,
    ) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| store_err(&self.path, e);
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(TASKS).map_err(|e| err(&e))?;
            f(&mut table).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }
}

fn store_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Store {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn binding(task: &str, host_port: u16) -> Binding {
        Binding {
            task: task.into(),
            container_ip: "172.17.0.2".parse().unwrap(),
            bind_ip: "0.0.0.0".parse().unwrap(),
            host_port,
            container_port: 80,
            protocol: Protocol::Tcp,
        }
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
    fn empty_binding_list_deletes_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_task("web", &[binding("web", 8080)]).unwrap();
        store.put_task("web", &[]).unwrap();
        assert!(store.load().unwrap().is_empty());
    }

    #[test]
    fn state_dir_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
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
