//! Applying a request as a computed desired state, as security groups do.
//! A request computes the state the registry wants next — bindings, task
//! records, cool-downs and the ports berth holds reserved, a [`Stored`] —
//! without I/O, and each adapter gets the difference between what it holds
//! and that state: the datapath its service entries, the store one
//! transaction, `ip_local_reserved_ports` the ports. The registry tracks
//! what the datapath and the store hold as far as it pushed them (the
//! sysctl is read each time), so a failed step is undone by pushing the
//! state in memory again — the same difference, the other way. No step has
//! revert code of its own; one that fails on the way back too leaves an
//! adapter the next apply (or the next start) converges from.
//!
//! Order: datapath, then the ports berth releases, then the store, then the
//! ports it reserves — the store always names at least the ports berth holds,
//! so a crash in between leaves the next start ports to release, never a
//! reservation it does not know is its own.
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
    engine::{
        allocator::CoolDowns,
        host::format_port_list,
        ledger::{Commit, Stored},
    },
};

/// The host ports berth must hold reserved: every mapped one, except those
/// the operator reserved (in the sysctl and not recorded as berth's), which
/// stay the operator's.
pub(super) fn reserved_ours(
    mapped: &BTreeSet<u16>,
    sysctl: &BTreeSet<u16>,
    ours: &BTreeSet<u16>,
) -> BTreeSet<u16> {
    mapped
        .iter()
        .filter(|p| ours.contains(p) || !sysctl.contains(p))
        .copied()
        .collect()
}

fn all_bindings(s: &Stored) -> BTreeSet<Binding> {
    s.tasks.values().flatten().cloned().collect()
}

impl Registry {
    /// The state in memory, as the store holds it.
    pub(super) fn state(&self) -> Stored {
        Stored {
            tasks: self.tasks.clone(),
            task_defs: self.task_defs.clone(),
            cooldowns: self.cooldowns.entries().collect(),
            reserved: self.reserved_by_us.clone(),
        }
    }

    /// `next` with the cool-downs that are over forgotten.
    pub(super) fn pruned(&self, mut next: Stored) -> (Stored, CoolDowns) {
        let mut cooldowns = CoolDowns::from_entries(next.cooldowns.iter().copied());
        cooldowns.prune(self.host.now(), self.policy.cooldown_secs);
        next.cooldowns = cooldowns.entries().collect();
        (next, cooldowns)
    }

    pub(super) fn adopt(&mut self, next: Stored, cooldowns: CoolDowns) {
        self.tasks = next.tasks;
        self.task_defs = next.task_defs;
        self.cooldowns = cooldowns;
        self.reserved_by_us = next.reserved;
    }

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
        let mut next = self.state();
        next.tasks.insert(p.task.to_owned(), p.all);
        if let Some(record) = p.record {
            next.task_defs.insert(p.task.to_owned(), record);
        }
        let (next, cooldowns) = self.pruned(next);
        if let Err(err) = self.push_datapath(&all_bindings(&next)) {
            self.converge_back();
            self.sg_resync();
            return Err(err);
        }
        if let Err(err) = self.commit_state(next, cooldowns) {
            self.sg_resync();
            return Err(err);
        }
        for b in p.new {
            self.emit(EventKind::Added, b);
        }
        Ok(())
    }

    pub(super) fn unpublish(
        &mut self,
        task: &str,
        gone: &[Binding],
        kept: Vec<Binding>,
        drop_record: bool,
    ) -> Result<()> {
        let mut next = self.state();
        if kept.is_empty() {
            next.tasks.remove(task);
        } else {
            next.tasks.insert(task.to_owned(), kept.clone());
        }
        if drop_record {
            next.task_defs.remove(task);
        }
        let (next, mut cooldowns) = self.pruned(next);
        let mut next = next;
        if self.policy.cooldown_secs > 0 {
            let now = self.host.now();
            for b in gone {
                cooldowns.release(b.protocol, b.host_port, now);
            }
            next.cooldowns = cooldowns.entries().collect();
        }
        if let Err(err) = self.push_datapath(&all_bindings(&next)) {
            self.converge_back();
            return Err(err);
        }
        if let Err(err) = self.sg_before_unpublish(task, &kept, drop_record) {
            self.converge_back();
            return Err(err);
        }
        let containers: Vec<Option<String>> = gone.iter().map(|b| self.container_of(b)).collect();
        let task_ips = self.task_ips(task);
        if let Err(err) = self.commit_state(next, cooldowns) {
            self.sg_resync();
            return Err(err);
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

    /// The datapath holds exactly `want`: removals first, then inserts,
    /// each recorded as it lands, so a failure part-way leaves the record
    /// true. Returns the bindings it removed.
    pub(super) fn push_datapath(&self, want: &BTreeSet<Binding>) -> Result<Vec<Binding>> {
        let mut applied = self.dp_applied();
        let remove: Vec<Binding> = applied.difference(want).cloned().collect();
        let insert: Vec<Binding> = want.difference(&applied).cloned().collect();
        for b in &remove {
            if let Err(err) = self.datapath.remove(b) {
                tracing::warn!(binding = describe(b), error = %err, "datapath remove failed");
                return Err(err.into());
            }
            applied.remove(b);
        }
        for b in insert {
            if let Err(err) = self.datapath.insert(&b) {
                tracing::warn!(binding = describe(&b), error = %err, "datapath insert failed");
                return Err(err.into());
            }
            applied.insert(b);
        }
        Ok(remove)
    }

    /// The store holds `want`: one transaction of the difference.
    pub(super) fn push_store(&mut self, want: &Stored) -> Result<()> {
        let c = Commit::between(&self.stored, want);
        if !c.is_empty() {
            self.store.commit(&c)?;
            self.stored = want.clone();
        }
        Ok(())
    }

    /// `ip_local_reserved_ports` without `release` and with `reserve`
    /// (written only when that changes it).
    fn push_reserved(
        &self,
        release: &BTreeSet<u16>,
        reserve: &BTreeSet<u16>,
    ) -> std::io::Result<()> {
        let now = self.host.reserved_ports()?;
        let next: BTreeSet<u16> = now
            .iter()
            .filter(|p| !release.contains(p))
            .chain(reserve)
            .copied()
            .collect();
        if next != now {
            self.host.set_reserved_ports(&next)?;
        }
        Ok(())
    }

    /// After the datapath holds `next`: the ports, the store, then memory.
    /// A port that cannot be released stays recorded as berth's (the next
    /// apply or start releases it); one that cannot be reserved fails the
    /// request, and every adapter goes back to the state in memory.
    fn commit_state(&mut self, mut next: Stored, cooldowns: CoolDowns) -> Result<()> {
        let sysctl = match self.host.reserved_ports() {
            Ok(s) => s,
            Err(e) => {
                self.converge_back();
                return Err(sysctl_err("reading")(e));
            }
        };
        let mapped: BTreeSet<u16> = next.tasks.values().flatten().map(|b| b.host_port).collect();
        let ours = reserved_ours(&mapped, &sysctl, &self.reserved_by_us);
        let release: BTreeSet<u16> = self.reserved_by_us.difference(&ours).copied().collect();
        next.reserved = ours.clone();
        if let Err(err) = self.push_reserved(&release, &BTreeSet::new()) {
            // Still recorded as ours, so a later apply or the next start
            // releases them.
            tracing::warn!(ports = %format_port_list(&release), error = %err, "could not release reserved ports");
            next.reserved.extend(&release);
        }
        if let Err(err) = self.push_store(&next) {
            self.converge_back();
            return Err(err);
        }
        if let Err(err) = self.push_reserved(&BTreeSet::new(), &ours) {
            self.converge_back();
            return Err(sysctl_err("writing")(err));
        }
        self.adopt(next, cooldowns);
        Ok(())
    }

    /// After a failed step: every adapter back to the state in memory, by
    /// the same pushes. What fails here is logged; the records of what each
    /// adapter holds stay true, so the next apply converges from there.
    pub(super) fn converge_back(&mut self) {
        let mem = self.state();
        match self.push_datapath(&all_bindings(&mem)) {
            // Flows that started in the moment the bindings were live; a
            // retry of the same bindings waits for this sweep.
            Ok(removed) => {
                if !removed.is_empty() {
                    self.sweeper.queue(&removed, &[]);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "restoring the datapath failed; the next request retries");
            }
        }
        if let Err(err) = self.push_store(&mem) {
            tracing::error!(error = %err, "restoring the store failed; the next request retries");
        }
        if let Err(err) = self.push_reserved(&BTreeSet::new(), &mem.reserved) {
            tracing::error!(error = %err, "re-reserving ports failed; the next request retries");
        }
    }

    pub(super) fn emit(&self, kind: EventKind, b: &Binding) {
        // No subscriber is not an error.
        let _ = self
            .events
            .send(Event::now(kind, b.clone(), self.container_of(b)));
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
    pub(super) fn check_host_listeners(&self, new: &[PortMapping]) -> Result<()> {
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
            let blocked = socks.iter().any(|s| {
                s.port() == m.host_port && crate::engine::host::listener_blocks(s.ip(), m.bind_ip)
            });
            if blocked {
                return Err(Error::HostPortInUse {
                    protocol: m.protocol,
                    bind_ip: m.bind_ip,
                    host_port: m.host_port,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn berth_holds_every_mapped_port_except_the_operators() {
        // 22 and 8081 are the operator's (reserved, not ours); 8080 is ours;
        // 9000 is mapped and reserved by nobody yet; 7000 is ours, unmapped.
        let ours = reserved_ours(
            &set(&[8080, 8081, 9000]),
            &set(&[22, 8080, 8081, 7000]),
            &set(&[8080, 7000]),
        );
        assert_eq!(ours, set(&[8080, 9000]));
    }
}
