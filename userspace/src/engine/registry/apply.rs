//! Applying a request: datapath, store and sysctl in the order that keeps
//! every request all or nothing. As for security groups, the datapath gets
//! the difference between the task's bindings now and the ones the request
//! wants ([`BindingChange`]); a failed later step applies its inverse.
use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::{bind_ips_overlap, describe, sysctl_err, Publish, Registry};
use crate::{
    domain::{
        error::{Error, Result},
        events::{Event, EventKind},
        model::{Binding, Protocol},
        spec::PortMapping,
    },
    engine::{host::format_port_list, ledger::Commit},
};

impl Registry {
    pub(super) fn publish(&mut self, p: Publish<'_>) -> Result<()> {
        // Rare here: [`Berth`] waits, before it locks, for the sweeps the
        // request's specs could meet; this catches a removal that slipped
        // in between (and callers without that check).
        let record_ips: Vec<Ipv4Addr> = p
            .record
            .iter()
            .flat_map(|r| r.containers.iter().filter_map(|c| c.container_ip))
            .collect();
        if let Some(ticket) = self.sweeper.blocker(p.new, &record_ips) {
            self.sweeper.wait(ticket);
        }
        self.sg_before_publish(p.task, &p.all, p.record.as_ref())?;
        let change = BindingChange::between(self.current(p.task), &p.all);
        if let Err(err) = self.apply_change(&change) {
            self.sg_resync();
            return Err(err);
        }
        let outcome = (|| {
            let current = self.host.reserved_ports().map_err(sysctl_err("reading"))?;
            let reserve: BTreeSet<u16> = p
                .new
                .iter()
                .map(|b| b.host_port)
                .filter(|port| !current.contains(port))
                .collect();
            let mut cooldowns = self.cooldowns.clone();
            let mut commit = Commit {
                tasks: vec![(p.task.to_owned(), p.all.clone())],
                cooldowns: cooldowns.prune(self.host.now(), self.policy.cooldown_secs),
                reserved_add: reserve.iter().copied().collect(),
                ..Default::default()
            };
            if let Some(record) = &p.record {
                commit
                    .task_defs
                    .push((p.task.to_owned(), Some(record.clone())));
            }
            self.store.commit(&commit)?;
            if !reserve.is_empty() {
                let next = current.union(&reserve).copied().collect();
                if let Err(e) = self.host.set_reserved_ports(&next) {
                    self.revert_publish(p.task, &reserve);
                    return Err(sysctl_err("writing")(e));
                }
            }
            Ok((reserve, cooldowns))
        })();
        let (reserve, cooldowns) = match outcome {
            Ok(done) => done,
            Err(err) => {
                self.revert_change(&change);
                self.sg_resync();
                return Err(err);
            }
        };
        self.cooldowns = cooldowns;
        self.reserved_by_us.extend(reserve);
        self.tasks.insert(p.task.to_owned(), p.all);
        if let Some(record) = p.record {
            self.task_defs.insert(p.task.to_owned(), record);
        }
        for b in p.new {
            self.emit(EventKind::Added, b);
        }
        Ok(())
    }

    /// Puts the store back as it was before a publish of `task` whose
    /// sysctl write failed.
    pub(super) fn revert_publish(&self, task: &str, reserved: &BTreeSet<u16>) {
        let mut commit = Commit {
            tasks: vec![(
                task.to_owned(),
                self.tasks.get(task).cloned().unwrap_or_default(),
            )],
            reserved_remove: reserved
                .iter()
                .filter(|p| !self.reserved_by_us.contains(p))
                .copied()
                .collect(),
            ..Default::default()
        };
        if !self.task_defs.contains_key(task) {
            commit.task_defs.push((task.to_owned(), None));
        }
        if let Err(err) = self.store.commit(&commit) {
            tracing::error!(task = %task, error = %err, "rollback: restoring the store failed; the next start reconciles it");
        }
    }

    pub(super) fn unpublish(
        &mut self,
        task: &str,
        gone: &[Binding],
        kept: Vec<Binding>,
        drop_record: bool,
    ) -> Result<()> {
        let change = BindingChange::between(self.current(task), &kept);
        self.apply_change(&change)?;
        if let Err(err) = self.sg_before_unpublish(task, &kept, drop_record) {
            self.revert_change(&change);
            return Err(err);
        }
        let still_mapped: BTreeSet<u16> = self
            .tasks
            .iter()
            .filter(|(name, _)| name.as_str() != task)
            .flat_map(|(_, bs)| bs)
            .chain(&kept)
            .map(|b| b.host_port)
            .collect();
        let release: BTreeSet<u16> = gone
            .iter()
            .map(|b| b.host_port)
            .filter(|p| !still_mapped.contains(p) && self.reserved_by_us.contains(p))
            .collect();
        let released = match self.unreserve(&release) {
            Ok(()) => release,
            Err(err) => {
                // Still recorded as ours, so the next start releases them.
                tracing::warn!(ports = %format_port_list(&release), error = %err, "could not release reserved ports");
                BTreeSet::new()
            }
        };

        let now = self.host.now();
        let mut cooldowns = self.cooldowns.clone();
        let mut cooldown_changes = cooldowns.prune(now, self.policy.cooldown_secs);
        if self.policy.cooldown_secs > 0 {
            for b in gone {
                cooldowns.release(b.protocol, b.host_port, now);
                cooldown_changes.push(((b.protocol, b.host_port), Some(now)));
            }
        }
        let mut commit = Commit {
            tasks: vec![(task.to_owned(), kept.clone())],
            cooldowns: cooldown_changes,
            reserved_remove: released.iter().copied().collect(),
            ..Default::default()
        };
        if drop_record {
            commit.task_defs.push((task.to_owned(), None));
        }
        if let Err(err) = self.store.commit(&commit) {
            if let Err(e) = self.reserve_again(&released) {
                tracing::error!(error = %e, "rollback: re-reserving ports failed");
            }
            self.revert_change(&change);
            self.sg_resync();
            return Err(err);
        }
        let containers: Vec<Option<String>> = gone.iter().map(|b| self.container_of(b)).collect();
        let task_ips = self.task_ips(task);
        self.cooldowns = cooldowns;
        self.reserved_by_us.retain(|p| !released.contains(p));
        if kept.is_empty() {
            self.tasks.remove(task);
        } else {
            self.tasks.insert(task.to_owned(), kept);
        }
        if drop_record {
            self.task_defs.remove(task);
        }
        self.sg_after_unpublish(task);
        let in_use = self.ips_in_use();
        let gone_ips: Vec<Ipv4Addr> = task_ips.difference(&in_use).copied().collect();
        self.sweeper.queue(gone, &gone_ips);
        for (b, container) in gone.iter().zip(containers) {
            let _ = self
                .events
                .send(Event::now(EventKind::Removed, b.clone(), container));
        }
        Ok(())
    }

    pub(super) fn emit(&self, kind: EventKind, b: &Binding) {
        // No subscriber is not an error.
        let _ = self
            .events
            .send(Event::now(kind, b.clone(), self.container_of(b)));
    }

    pub(super) fn unreserve(&self, ports: &BTreeSet<u16>) -> std::io::Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut current = self.host.reserved_ports()?;
        let before = current.len();
        current.retain(|p| !ports.contains(p));
        if current.len() != before {
            self.host.set_reserved_ports(&current)?;
        }
        Ok(())
    }

    pub(super) fn reserve_again(&self, ports: &BTreeSet<u16>) -> std::io::Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut current = self.host.reserved_ports()?;
        current.extend(ports);
        self.host.set_reserved_ports(&current)
    }

    pub(super) fn check_conflicts(&self, new: &[PortMapping]) -> Result<()> {
        let mut taken: HashMap<(Protocol, u16), Vec<Ipv4Addr>> = HashMap::new();
        for b in self.tasks.values().flatten() {
            taken
                .entry((b.protocol, b.host_port))
                .or_default()
                .push(b.bind_ip);
        }
        for b in new {
            let ips = taken.entry((b.protocol, b.host_port)).or_default();
            if ips.iter().any(|&ip| bind_ips_overlap(ip, b.bind_ip)) {
                return Err(Error::PortAllocated {
                    bind_ip: b.bind_ip,
                    host_port: b.host_port,
                });
            }
            ips.push(b.bind_ip);
        }
        Ok(())
    }

    /// Refuses a static host port a host process listens on (or, for UDP,
    /// is bound to), as Docker does when its proxy cannot bind it: taking
    /// it would silently steal the port's traffic from that process.
    /// `docker_holds`: the caller says Docker holds these ports
    /// (`heldByDocker`); a listener is then no conflict when a process of
    /// Docker's holds it, and refused when only others do.
    pub(super) fn check_host_listeners(
        &self,
        new: &[PortMapping],
        docker_holds: bool,
    ) -> Result<()> {
        let mut listeners: HashMap<Protocol, Vec<std::net::SocketAddr>> = HashMap::new();
        for m in new {
            let socks = match listeners.entry(m.protocol) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.host.listeners(m.protocol).map_err(|err| {
                        Error::io(
                            format!("reading the host's {} sockets", m.protocol.as_str()),
                            err,
                        )
                    })?)
                }
            };
            let mut blocking = socks.iter().filter(|s| {
                s.port() == m.host_port && crate::engine::host::listener_blocks(s.ip(), m.bind_ip)
            });
            if docker_holds {
                // Docker's own listener is its port reservation; anyone
                // else's is refused, whatever the caller claims.
                for s in blocking {
                    let holders = self.host.holders(m.protocol, *s).map_err(|err| {
                        Error::io(
                            format!("reading who holds {s}/{}", m.protocol.as_str()),
                            err,
                        )
                    })?;
                    if !holders.iter().any(crate::engine::host::Holder::is_dockers) {
                        return Err(Error::NotHeldByDocker {
                            protocol: m.protocol,
                            local: *s,
                            holders: holders.iter().map(ToString::to_string).collect(),
                        });
                    }
                }
                continue;
            }
            if blocking.next().is_some() {
                return Err(Error::HostPortInUse {
                    protocol: m.protocol,
                    bind_ip: m.bind_ip,
                    host_port: m.host_port,
                });
            }
        }
        Ok(())
    }

    /// The task's bindings as the datapath holds them now.
    fn current(&self, task: &str) -> &[Binding] {
        self.tasks.get(task).map_or(&[], Vec::as_slice)
    }

    /// Makes the datapath hold `change`: removals first, then inserts. A
    /// failed step reverts what this call changed, so the datapath is as
    /// before.
    fn apply_change(&self, change: &BindingChange) -> Result<()> {
        for (i, b) in change.remove.iter().enumerate() {
            if let Err(err) = self.datapath.remove(b) {
                tracing::warn!(binding = describe(b), error = %err, "datapath remove failed; rolling back");
                self.revert_change(&BindingChange {
                    insert: Vec::new(),
                    remove: change.remove[..i].to_vec(),
                });
                return Err(err.into());
            }
        }
        for (i, b) in change.insert.iter().enumerate() {
            if let Err(err) = self.datapath.insert(b) {
                tracing::warn!(binding = describe(b), error = %err, "datapath insert failed; rolling back");
                self.revert_change(&BindingChange {
                    insert: change.insert[..i].to_vec(),
                    remove: change.remove.clone(),
                });
                return Err(err.into());
            }
        }
        Ok(())
    }

    /// The inverse of an applied `change`: what it inserted goes, what it
    /// removed comes back.
    fn revert_change(&self, change: &BindingChange) {
        for b in change.insert.iter().rev() {
            if let Err(err) = self.datapath.remove(b) {
                tracing::error!(binding = describe(b), error = %err, "rollback: removing failed");
            }
        }
        // Flows that started in the moment the bindings were live; a retry
        // of the same bindings waits for this sweep.
        self.sweeper.queue(&change.insert, &[]);
        for b in change.remove.iter().rev() {
            if let Err(err) = self.datapath.insert(b) {
                tracing::error!(binding = describe(b), error = %err, "rollback: re-inserting failed");
            }
        }
    }
}

/// How a task's bindings in the datapath change: the difference between
/// what the registry holds and what a request wants.
pub(super) struct BindingChange {
    insert: Vec<Binding>,
    remove: Vec<Binding>,
}

impl BindingChange {
    /// What turns `current` into `desired`, each in its list's order.
    pub(super) fn between(current: &[Binding], desired: &[Binding]) -> Self {
        let now: BTreeSet<&Binding> = current.iter().collect();
        let wanted: BTreeSet<&Binding> = desired.iter().collect();
        Self {
            insert: desired
                .iter()
                .filter(|b| !now.contains(b))
                .cloned()
                .collect(),
            remove: current
                .iter()
                .filter(|b| !wanted.contains(b))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host_port: u16) -> Binding {
        Binding {
            task: "web".into(),
            container_ip: Ipv4Addr::new(172, 17, 0, 2),
            bind_ip: Ipv4Addr::UNSPECIFIED,
            host_port,
            container_port: 80,
            protocol: Protocol::Tcp,
            ecs: Default::default(),
            cni: None,
            docker_events: false,
        }
    }

    #[test]
    fn a_change_is_what_the_desired_bindings_add_and_drop() {
        let change = BindingChange::between(&[b(1), b(2), b(3)], &[b(2), b(5), b(4)]);
        assert_eq!(change.insert, [b(5), b(4)], "in the desired order");
        assert_eq!(change.remove, [b(1), b(3)], "in the current order");
        let none = BindingChange::between(&[b(1)], &[b(1)]);
        assert!(none.insert.is_empty() && none.remove.is_empty());
    }
}
