//! Security-group tables:
//! - `sgs_v1`: group name -> JSON [`GroupRecord`] (id, description, rules);
//! - `sg_attachments_v1`: task name -> JSON [`Attachment`] (policy id,
//!   groups in attach order);
//! - `sg_meta_v1`: `next_group_id` / `next_policy_id` -> u32.
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, TableError};

use super::{store_err, Store};
use crate::{
    domain::error::Result,
    engine::sg_book::{Attachment, GroupRecord, SgBook, SgChanges},
};

const GROUPS: TableDefinition<&str, &str> = TableDefinition::new("sgs_v1");
const ATTACHMENTS: TableDefinition<&str, &str> = TableDefinition::new("sg_attachments_v1");
const META: TableDefinition<&str, u32> = TableDefinition::new("sg_meta_v1");
const NEXT_GROUP_ID: &str = "next_group_id";
const NEXT_POLICY_ID: &str = "next_policy_id";

impl Store {
    /// Every group and attachment. A rule that no longer reads (or names a
    /// group that is gone) is dropped with a warning: one fewer allow rule
    /// is the safe side of a damaged row.
    pub fn load_sgs(&self) -> Result<SgBook> {
        let err = |e: &dyn std::fmt::Display| store_err(self.path(), e);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let mut book = SgBook::default();
        match txn.open_table(GROUPS) {
            Ok(table) => {
                for row in table.iter().map_err(|e| err(&e))? {
                    let (key, value) = row.map_err(|e| err(&e))?;
                    let name = key.value().to_owned();
                    let mut record: GroupRecord =
                        serde_json::from_str(value.value()).map_err(|e| {
                            err(&format_args!("security group {name}: unreadable row: {e}"))
                        })?;
                    record.rules.retain(|r| match r.parse() {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(group = %name, error = %e, "dropping an unreadable stored rule");
                            false
                        }
                    });
                    let group = record.into_group().map_err(|e| err(&e))?;
                    book.groups.insert(name, group);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(err(&e)),
        }
        match txn.open_table(ATTACHMENTS) {
            Ok(table) => {
                for row in table.iter().map_err(|e| err(&e))? {
                    let (key, value) = row.map_err(|e| err(&e))?;
                    let task = key.value().to_owned();
                    let a: Attachment = serde_json::from_str(value.value()).map_err(|e| {
                        err(&format_args!(
                            "security groups of task {task}: unreadable row: {e}"
                        ))
                    })?;
                    book.attachments.insert(task, a);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(err(&e)),
        }
        match txn.open_table(META) {
            Ok(table) => {
                if let Some(v) = table.get(NEXT_GROUP_ID).map_err(|e| err(&e))? {
                    book.next_group_id = v.value();
                }
                if let Some(v) = table.get(NEXT_POLICY_ID).map_err(|e| err(&e))? {
                    book.next_policy_id = v.value();
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(err(&e)),
        }
        repair(&mut book);
        Ok(book)
    }

    /// Applies `c` in one transaction.
    pub fn commit_sgs(&self, c: &SgChanges) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| store_err(self.path(), e);
        let encode = |what: String, json: serde_json::Result<String>| {
            json.map_err(|e| err(&format_args!("encoding {what}: {e}")))
        };
        let mut groups = Vec::new();
        for (name, record) in &c.groups {
            let json = record
                .as_ref()
                .map(|r| encode(format!("security group {name}"), serde_json::to_string(r)))
                .transpose()?;
            groups.push((name.as_str(), json));
        }
        let mut attachments = Vec::new();
        for (task, a) in &c.attachments {
            let json = a
                .as_ref()
                .map(|a| encode(format!("groups of task {task}"), serde_json::to_string(a)))
                .transpose()?;
            attachments.push((task.as_str(), json));
        }
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        let write = || -> std::result::Result<(), redb::Error> {
            let mut table = txn.open_table(GROUPS)?;
            for (name, json) in &groups {
                match json {
                    Some(json) => drop(table.insert(*name, json.as_str())?),
                    None => drop(table.remove(*name)?),
                }
            }
            let mut table = txn.open_table(ATTACHMENTS)?;
            for (task, json) in &attachments {
                match json {
                    Some(json) => drop(table.insert(*task, json.as_str())?),
                    None => drop(table.remove(*task)?),
                }
            }
            let mut table = txn.open_table(META)?;
            if let Some(id) = c.next_group_id {
                table.insert(NEXT_GROUP_ID, id)?;
            }
            if let Some(id) = c.next_policy_id {
                table.insert(NEXT_POLICY_ID, id)?;
            }
            Ok(())
        };
        write().map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))
    }
}

/// Keeps a loaded book self-consistent: no rule or attachment naming a
/// missing group, counters past every id in use.
fn repair(book: &mut SgBook) {
    let names: Vec<String> = book.groups.keys().cloned().collect();
    for (name, g) in &mut book.groups {
        for rules in [&mut g.ingress, &mut g.egress] {
            rules.retain(|r| match &r.peer {
                crate::domain::rules::Peer::Group(peer) if !names.contains(peer) => {
                    tracing::warn!(group = %name, peer = %peer, "dropping a stored rule naming a missing group");
                    false
                }
                _ => true,
            });
        }
    }
    for (task, a) in &mut book.attachments {
        a.groups.retain(|g| {
            let known = names.contains(g);
            if !known {
                tracing::warn!(task = %task, group = %g, "dropping a stored attachment of a missing group");
            }
            known
        });
    }
    book.attachments.retain(|_, a| !a.groups.is_empty());
    let max_group = book.groups.values().map(|g| g.id).max().unwrap_or(0);
    book.next_group_id = book.next_group_id.max(max_group + 1);
    let max_policy = book
        .attachments
        .values()
        .map(|a| a.policy_id)
        .max()
        .unwrap_or(0);
    book.next_policy_id = book.next_policy_id.max(max_policy + 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rules::{Direction, RuleSpec};

    #[test]
    fn groups_and_attachments_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = SgBook::default();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.load_sgs().unwrap(), book, "empty before any write");
            let old = book.clone();
            book.create("api", "the API").unwrap();
            book.create("db", "").unwrap();
            let rule = RuleSpec {
                direction: Direction::Ingress,
                protocol: "tcp".into(),
                port: Some("5432".into()),
                icmp_type: None,
                icmp_code: None,
                cidr: None,
                sg: Some("api".into()),
                description: "from the API".into(),
            };
            book.add_rule("db", Direction::Ingress, rule.parse().unwrap())
                .unwrap();
            // IPv6 peers and ICMPv6 (the new groups' `::/0` egress too).
            let ping6 = RuleSpec {
                protocol: "icmpv6".into(),
                port: None,
                icmp_type: Some(128),
                cidr: Some("2001:db8::/32".into()),
                sg: None,
                ..rule
            };
            book.add_rule("db", Direction::Ingress, ping6.parse().unwrap())
                .unwrap();
            book.attach("db", "pg", 5).unwrap();
            store.commit_sgs(&book.changes_since(&old)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load_sgs().unwrap(), book);
        let old = book.clone();
        book.detach("db", "pg").unwrap();
        book.remove("api").unwrap_err();
        store.commit_sgs(&book.changes_since(&old)).unwrap();
        assert_eq!(store.load_sgs().unwrap(), book);
    }

    #[test]
    fn a_damaged_book_is_repaired_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut c = SgChanges::default();
        c.groups.push((
            "db".into(),
            Some(GroupRecord {
                id: 7,
                description: String::new(),
                rules: vec![RuleSpec {
                    direction: Direction::Ingress,
                    protocol: "all".into(),
                    port: None,
                    icmp_type: None,
                    icmp_code: None,
                    cidr: None,
                    sg: Some("gone".into()),
                    description: String::new(),
                }],
            }),
        ));
        c.attachments.push((
            "web".into(),
            Some(Attachment {
                policy_id: 4,
                groups: vec!["gone".into()],
            }),
        ));
        store.commit_sgs(&c).unwrap();
        let book = store.load_sgs().unwrap();
        assert!(book.groups["db"].ingress.is_empty());
        assert!(book.attachments.is_empty());
        assert_eq!((book.next_group_id, book.next_policy_id), (8, 1));
    }
}
