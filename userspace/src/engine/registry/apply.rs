//! Applying a request as a computed desired state, as security groups do.
//! A request computes, without I/O, what its task should hold afterwards —
//! bindings and record — and the cool-downs ([`Want`]); each adapter gets
//! the difference between that and what it holds: the datapath its service
//! entries, the store one transaction (`Commit::between`),
//! `ip_local_reserved_ports` the ports berth holds for the host's mapped
//! ports. A failed step is undone by pushing the state in memory again —
//! the same difference, the other way — so no step has revert code of its
//! own. A push back that fails too marks its adapter diverged, and the next
//! request first converges it whole (the datapath as at start, the store
//! by the difference from what it holds), so the state always converges.
//! A request's work is what its task holds, not what the host publishes.
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
        model::{Binding, Protocol, TaskRecord},
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

/// What a request wants: one task's bindings and record afterwards (none:
/// the task is gone), and the cool-downs with the entries it changes.
pub(super) struct Want {
    pub task: String,
    pub bindings: Vec<Binding>,
    pub record: Option<TaskRecord>,
    pub cooldowns: CoolDowns,
    pub cooldowns_changed: BTreeSet<(Protocol, u16)>,
}

/// The part of the store a request covers: `task`'s bindings and record,
/// the cool-down entries `keys` and berth's reservation of `ports`, as
/// `cooldowns` and `reserved` have them. A commit between two of these
/// touches nothing else, so a request costs what its task holds, not what
/// the host publishes.
struct Scope<'a> {
    task: &'a str,
    keys: &'a BTreeSet<(Protocol, u16)>,
    ports: &'a BTreeSet<u16>,
}

impl Scope<'_> {
    fn stored(
        &self,
        bindings: &[Binding],
        record: Option<&TaskRecord>,
        cooldowns: &CoolDowns,
        reserved: &BTreeSet<u16>,
    ) -> Stored {
        let mut s = Stored {
            cooldowns: self
                .keys
                .iter()
                .filter_map(|k| cooldowns.get(*k).map(|t| (*k, t)))
                .collect(),
            reserved: self.ports.intersection(reserved).copied().collect(),
            ..Default::default()
        };
        if !bindings.is_empty() {
            s.tasks.insert(self.task.to_owned(), bindings.to_vec());
        }
        if let Some(r) = record {
            s.task_defs.insert(self.task.to_owned(), r.clone());
        }
        s
    }
}

impl Registry {
    /// The bindings memory holds for `task`.
    fn held(&self, task: &str) -> Vec<Binding> {
        self.tasks.get(task).cloned().unwrap_or_default()
    }

    fn adopt(&mut self, w: Want, reserved: BTreeSet<u16>) {
        if w.bindings.is_empty() {
            self.tasks.remove(&w.task);
        } else {
            self.tasks.insert(w.task.clone(), w.bindings);
        }
        match w.record {
            Some(r) => self.task_defs.insert(w.task, r),
            None => self.task_defs.remove(&w.task),
        };
        self.cooldowns = w.cooldowns;
        self.reserved_by_us = reserved;
    }

    /// The cool-downs with those that are over forgotten, and which
    /// entries that changed.
    fn pruned_cooldowns(&self) -> (CoolDowns, BTreeSet<(Protocol, u16)>) {
        let mut c = self.cooldowns.clone();
        let changed = c
            .prune(self.host.now(), self.policy.cooldown_secs)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        (c, changed)
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
        self.converge_diverged()?;
        self.sg_before_publish(p.task, &p.all, p.record.as_ref())?;
        let (cooldowns, cooldowns_changed) = self.pruned_cooldowns();
        let want = Want {
            task: p.task.to_owned(),
            bindings: p.all,
            record: p.record.or_else(|| self.task_defs.get(p.task).cloned()),
            cooldowns,
            cooldowns_changed,
        };
        if let Err(err) = self.apply(want) {
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
        self.converge_diverged()?;
        let (mut cooldowns, mut cooldowns_changed) = self.pruned_cooldowns();
        if self.policy.cooldown_secs > 0 {
            let now = self.host.now();
            for b in gone {
                cooldowns.release(b.protocol, b.host_port, now);
                cooldowns_changed.insert((b.protocol, b.host_port));
            }
        }
        let want = Want {
            task: task.to_owned(),
            bindings: kept.clone(),
            record: if drop_record {
                None
            } else {
                self.task_defs.get(task).cloned()
            },
            cooldowns,
            cooldowns_changed,
        };
        let held = self.held(task);
        let mut dp: BTreeSet<Binding> = held.iter().cloned().collect();
        if let Err(err) = self.push_datapath(&mut dp, &want.bindings) {
            self.put_back(dp, &held, None, None);
            return Err(err);
        }
        if let Err(err) = self.sg_before_unpublish(task, &kept, drop_record) {
            self.put_back(dp, &held, None, None);
            return Err(err);
        }
        let containers: Vec<Option<String>> = gone.iter().map(|b| self.container_of(b)).collect();
        let task_ips = self.task_ips(task);
        if let Err(err) = self.commit_rest(want, held) {
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

    /// Every adapter to `want`: datapath, then the rest.
    fn apply(&mut self, want: Want) -> Result<()> {
        let held = self.held(&want.task);
        let mut dp: BTreeSet<Binding> = held.iter().cloned().collect();
        if let Err(err) = self.push_datapath(&mut dp, &want.bindings) {
            self.put_back(dp, &held, None, None);
            return Err(err);
        }
        self.commit_rest(want, held)
    }

    /// The datapath from holding `held` of a task to holding `want`:
    /// removals first, then inserts, `held` following each one that lands
    /// (so after a failure it says what the datapath holds).
    fn push_datapath(&self, held: &mut BTreeSet<Binding>, want: &[Binding]) -> Result<()> {
        let wanted: BTreeSet<&Binding> = want.iter().collect();
        let remove: Vec<Binding> = held
            .iter()
            .filter(|b| !wanted.contains(b))
            .cloned()
            .collect();
        for b in remove {
            if let Err(err) = self.datapath.remove(&b) {
                tracing::warn!(binding = describe(&b), error = %err, "datapath remove failed");
                return Err(err.into());
            }
            held.remove(&b);
        }
        for b in want {
            if held.contains(b) {
                continue;
            }
            if let Err(err) = self.datapath.insert(b) {
                tracing::warn!(binding = describe(b), error = %err, "datapath insert failed");
                return Err(err.into());
            }
            held.insert(b.clone());
        }
        Ok(())
    }

    /// `ip_local_reserved_ports`, holding `sysctl` (read once per request,
    /// kept up to date here), without `release` and with `reserve`
    /// (written only when that changes it).
    fn push_reserved(
        &self,
        sysctl: &mut BTreeSet<u16>,
        release: &BTreeSet<u16>,
        reserve: &BTreeSet<u16>,
    ) -> std::io::Result<()> {
        let next: BTreeSet<u16> = sysctl
            .iter()
            .filter(|p| !release.contains(p))
            .chain(reserve)
            .copied()
            .collect();
        if next != *sysctl {
            self.host.set_reserved_ports(&next)?;
            *sysctl = next;
        }
        Ok(())
    }

    /// After the datapath holds `want`: the ports, the store, then memory.
    /// A port that cannot be released stays recorded as berth's (a later
    /// request or the next start releases it); one that cannot be reserved
    /// fails the request, and every adapter goes back to `held`.
    fn commit_rest(&mut self, want: Want, held: Vec<Binding>) -> Result<()> {
        let dp_want = || want.bindings.iter().cloned().collect::<BTreeSet<Binding>>();
        let mut sysctl = match self.host.reserved_ports() {
            Ok(s) => s,
            Err(e) => {
                self.put_back(dp_want(), &held, None, None);
                return Err(sysctl_err("reading")(e));
            }
        };
        // Ports this request maps or unmaps; the others keep their state.
        let touched: BTreeSet<u16> = held
            .iter()
            .chain(&want.bindings)
            .map(|b| b.host_port)
            .collect();
        // One pass over the other tasks' bindings: which touched ports they map.
        let mapped: BTreeSet<u16> = self
            .tasks
            .iter()
            .filter(|(name, _)| **name != want.task)
            .flat_map(|(_, bs)| bs)
            .chain(&want.bindings)
            .map(|b| b.host_port)
            .filter(|p| touched.contains(p))
            .collect();
        let ours_touched = reserved_ours(&mapped, &sysctl, &self.reserved_by_us);
        let release: BTreeSet<u16> = touched
            .iter()
            .filter(|p| self.reserved_by_us.contains(p) && !ours_touched.contains(p))
            .copied()
            .collect();
        let mut reserved: BTreeSet<u16> = self
            .reserved_by_us
            .iter()
            .filter(|p| !release.contains(p))
            .chain(&ours_touched)
            .copied()
            .collect();
        if let Err(err) = self.push_reserved(&mut sysctl, &release, &BTreeSet::new()) {
            // Still recorded as ours, so a later request or the next start
            // releases them.
            tracing::warn!(ports = %format_port_list(&release), error = %err, "could not release reserved ports");
            reserved.extend(&release);
        }
        let scope = Scope {
            task: &want.task,
            keys: &want.cooldowns_changed,
            ports: &touched,
        };
        let before = scope.stored(
            &held,
            self.task_defs.get(&want.task),
            &self.cooldowns,
            &self.reserved_by_us,
        );
        let after = scope.stored(
            &want.bindings,
            want.record.as_ref(),
            &want.cooldowns,
            &reserved,
        );
        if let Err(err) = self.store.commit(&Commit::between(&before, &after)) {
            self.put_back(dp_want(), &held, None, Some(&mut sysctl));
            return Err(err);
        }
        if let Err(err) = self.push_reserved(&mut sysctl, &BTreeSet::new(), &ours_touched) {
            let back = Commit::between(&after, &before);
            self.put_back(dp_want(), &held, Some(back), Some(&mut sysctl));
            return Err(sysctl_err("writing")(err));
        }
        self.adopt(want, reserved);
        Ok(())
    }

    /// After a failed step: every adapter back to what memory holds, by the
    /// same pushes: the datapath from `dp` (what it holds of the task now)
    /// to `held`; the store by `back` when it took the request (the
    /// difference the other way); the ports berth released meanwhile back
    /// when `sysctl` says the sysctl was read (and what it holds). What
    /// fails here marks its adapter diverged for the next request to
    /// converge.
    fn put_back(
        &mut self,
        mut dp: BTreeSet<Binding>,
        held: &[Binding],
        back: Option<Commit>,
        sysctl: Option<&mut BTreeSet<u16>>,
    ) {
        let kept: BTreeSet<&Binding> = held.iter().collect();
        let live: Vec<Binding> = dp.iter().filter(|b| !kept.contains(b)).cloned().collect();
        match self.push_datapath(&mut dp, held) {
            // Flows that started in the moment the bindings were live; a
            // retry of the same bindings waits for this sweep.
            Ok(()) => {
                if !live.is_empty() {
                    self.sweeper.queue(&live, &[]);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "restoring the datapath failed; the next request converges it");
                self.dp_diverged = true;
            }
        }
        if let Some(back) = back {
            if let Err(err) = self.store.commit(&back) {
                tracing::error!(error = %err, "restoring the store failed; the next request converges it");
                self.store_diverged = true;
            }
        }
        // Ports released in this request that memory still holds as berth's.
        if let Some(sysctl) = sysctl {
            if let Err(err) = self.push_reserved(sysctl, &BTreeSet::new(), &self.reserved_by_us) {
                tracing::error!(error = %err, "re-reserving ports failed; the next request retries");
            }
        }
    }

    /// Before a request: an adapter a failed put-back left diverged from
    /// memory is converged whole — the datapath as at start (entries memory
    /// lacks removed, every binding inserted again), the store by the
    /// difference between what it holds and memory.
    fn converge_diverged(&mut self) -> Result<()> {
        if self.dp_diverged {
            self.restore_bindings()?;
            self.dp_diverged = false;
        }
        if self.store_diverged {
            let on_disk = self.store.load_all()?;
            let mem = Stored {
                tasks: self.tasks.clone(),
                task_defs: self.task_defs.clone(),
                cooldowns: self.cooldowns.entries().collect(),
                reserved: self.reserved_by_us.clone(),
            };
            self.store.commit(&Commit::between(&on_disk, &mem))?;
            self.store_diverged = false;
        }
        Ok(())
    }

    pub(super) fn emit(&self, kind: EventKind, b: &Binding) {
        // No subscriber is not an error.
        let _ = self
            .events
            .send(Event::now(kind, b.clone(), self.container_of(b)));
    }

    pub(super) fn check_conflicts(&self, new: &[PortMapping]) -> Result<()> {
        let mut taken: HashMap<(Protocol, u16), Vec<std::net::IpAddr>> = HashMap::new();
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
