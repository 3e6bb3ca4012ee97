//! Security groups in the registry. A change is made on a copy of the book
//! and validated there, the datapath gets the difference, then the store
//! commits; a failed step puts the datapath back, so a refused request
//! changes nothing anywhere.
//!
//! Tasks coming and going change endpoints and group members: `publish`
//! and `unpublish` call the hooks below before their store commit, and a
//! task that is gone loses its attachments.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::{Mutex, MutexGuard},
};

use super::{validate_task_name, Berth, Registry};
use crate::{
    domain::error::{Error, Result},
    domain::model::{Binding, TaskRecord},
    domain::rules::{self as sg, RuleSpec, SgError},
    engine::ledger::{Ledger, Stored},
    engine::sg_book::{DpState, SgBook, SgSettings, SgView, DROP_COUNTERS},
};

pub(super) struct SgState {
    pub(super) book: SgBook,
    settings: SgSettings,
    /// What the datapath holds, as far as we pushed it.
    applied: Mutex<DpState>,
}

impl SgState {
    /// Loads the book and forgets the attachments of tasks that no longer
    /// exist (a crash between a task's removal and that of its groups).
    pub(super) fn load(store: &dyn Ledger, stored: &Stored) -> Result<Self> {
        let loaded = store.load_sgs()?;
        let mut book = loaded.clone();
        book.attachments.retain(|task, _| {
            stored.tasks.get(task).is_some_and(|b| !b.is_empty())
                || stored.task_defs.contains_key(task)
        });
        let changes = book.changes_since(&loaded);
        if !changes.is_empty() {
            store.commit_sgs(&changes)?;
        }
        Ok(Self {
            book,
            settings: SgSettings::default(),
            applied: Mutex::new(DpState::default()),
        })
    }
}

/// Every container IP of a task, both families: its bindings' and, for a
/// task run from a definition, its containers' (also those without port
/// mappings). A task's IPv6 address is known from an IPv6 binding or its
/// record's `containerIPv6`.
fn ips_of(bindings: &[Binding], record: Option<&TaskRecord>) -> BTreeSet<IpAddr> {
    bindings
        .iter()
        .map(|b| b.container_ip)
        .chain(record.into_iter().flat_map(|r| {
            r.containers.iter().flat_map(|c| {
                c.container_ip
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(c.container_ip6.map(IpAddr::V6))
            })
        }))
        .collect()
}

/// The IPv4 ones among `ips` (the flow sweeper forgets IPv4 flows by
/// address; IPv6 policy flows of a gone address expire by their timeouts).
fn v4_only(ips: impl IntoIterator<Item = IpAddr>) -> BTreeSet<Ipv4Addr> {
    ips.into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect()
}

impl Registry {
    /// The daemon's settings: groups per task, flow timeouts, and the
    /// default group, created (no ingress, all egress) when missing.
    pub fn configure_security_groups(&mut self, settings: SgSettings) -> Result<()> {
        if let Some(name) = &settings.default_sg {
            sg::validate_name(name)?;
        }
        self.datapath.set_flow_timeouts(settings.timeouts);
        let default_sg = settings.default_sg.clone();
        self.sg.settings = settings;
        if let Some(name) = default_sg {
            if !self.sg.book.groups.contains_key(&name) {
                let mut next = self.sg.book.clone();
                next.create(&name, "default group (berth daemon --default-sg)")?;
                self.sg_apply(next)?;
                tracing::info!(group = %name, "created the default security group");
            }
        }
        Ok(())
    }

    /// Pushes every endpoint, rule set and membership (at start, before
    /// the bindings, so no port is open for a moment).
    pub fn restore_security_groups(&self) -> Result<()> {
        let want = self.sg_want(&self.sg.book, &self.sg_tasks());
        let endpoints: Vec<Ipv4Addr> = want.endpoints.keys().copied().collect();
        let policies: Vec<u32> = want.policies.keys().copied().collect();
        let groups: Vec<u32> = want.members.keys().copied().collect();
        let stale = self
            .datapath
            .retain_policy(&endpoints, &policies, &groups)
            .map_err(Error::Datapath)?;
        let endpoints6: Vec<_> = want.endpoints6.keys().copied().collect();
        let stale = stale
            + self
                .datapath
                .retain_policy6(&endpoints6, &groups)
                .map_err(Error::Datapath)?;
        if stale > 0 {
            tracing::info!(
                stale,
                "dropped security-group entries the store does not know"
            );
        }
        let mut applied = self.sg_applied();
        *applied = DpState::default();
        applied.push(&want, &*self.datapath)?;
        Ok(())
    }

    pub fn sg_list(&self) -> Vec<SgView> {
        let tasks = self.sg_tasks();
        self.sg
            .book
            .groups
            .keys()
            .map(|name| self.sg_view(name, &tasks))
            .collect()
    }

    pub fn sg_show(&self, name: &str) -> Result<SgView> {
        sg::validate_name(name)?;
        self.sg.book.group(name)?;
        Ok(self.sg_view(name, &self.sg_tasks()))
    }

    pub fn sg_create(&mut self, name: &str, description: &str) -> Result<SgView> {
        let mut next = self.sg.book.clone();
        next.create(name, description)?;
        self.sg_apply(next)?;
        tracing::info!(group = %name, "security group created");
        self.sg_show(name)
    }

    /// Returns the group as it was.
    pub fn sg_remove(&mut self, name: &str) -> Result<SgView> {
        let view = self.sg_show(name)?;
        if self.sg.settings.default_sg.as_deref() == Some(name) {
            return Err(SgError::IsDefault(name.to_owned()).into());
        }
        let mut next = self.sg.book.clone();
        next.remove(name)?;
        self.sg_apply(next)?;
        tracing::info!(group = %name, "security group removed");
        Ok(view)
    }

    pub fn sg_add_rule(&mut self, name: &str, spec: &RuleSpec) -> Result<SgView> {
        sg::validate_name(name)?;
        let rule = spec.parse()?;
        let summary = rule.summary(spec.direction);
        let mut next = self.sg.book.clone();
        next.add_rule(name, spec.direction, rule)?;
        self.sg_apply(next)?;
        tracing::info!(group = %name, rule = %summary, "rule added");
        self.sg_show(name)
    }

    pub fn sg_remove_rule(&mut self, name: &str, spec: &RuleSpec) -> Result<SgView> {
        sg::validate_name(name)?;
        let rule = spec.parse()?;
        let mut next = self.sg.book.clone();
        let removed = next.remove_rule(name, spec.direction, &rule)?;
        self.sg_apply(next)?;
        tracing::info!(group = %name, rule = %removed.summary(spec.direction), "rule removed");
        self.sg_show(name)
    }

    pub fn sg_attach(&mut self, name: &str, task: &str) -> Result<SgView> {
        self.sg_show(name)?;
        self.check_task(task)?;
        let mut next = self.sg.book.clone();
        next.attach(name, task, self.sg.settings.max_per_task)?;
        self.sg_apply(next)?;
        tracing::info!(group = %name, task = %task, "security group attached");
        self.sg_show(name)
    }

    pub fn sg_detach(&mut self, name: &str, task: &str) -> Result<SgView> {
        self.sg_show(name)?;
        self.check_task(task)?;
        let mut next = self.sg.book.clone();
        next.detach(name, task)?;
        self.sg_apply(next)?;
        tracing::info!(group = %name, task = %task, "security group detached");
        self.sg_show(name)
    }

    fn check_task(&self, task: &str) -> Result<()> {
        validate_task_name(task)?;
        if self.task_exists(task) {
            Ok(())
        } else {
            Err(Error::NoSuchTask(task.to_owned()))
        }
    }

    fn task_exists(&self, task: &str) -> bool {
        self.tasks.get(task).is_some_and(|b| !b.is_empty()) || self.task_defs.contains_key(task)
    }

    /// The container IPs of `task` (none when it does not exist).
    pub(super) fn task_ips(&self, task: &str) -> BTreeSet<Ipv4Addr> {
        if !self.task_exists(task) {
            return BTreeSet::new();
        }
        let bindings = self.tasks.get(task).map(Vec::as_slice).unwrap_or_default();
        v4_only(ips_of(bindings, self.task_defs.get(task)))
    }

    /// Every container IP some task has.
    pub(super) fn ips_in_use(&self) -> BTreeSet<Ipv4Addr> {
        v4_only(self.sg_tasks().into_values().flatten())
    }

    /// Task name -> container IPs, for every task.
    fn sg_tasks(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let names: BTreeSet<&String> = self.tasks.keys().chain(self.task_defs.keys()).collect();
        names
            .into_iter()
            .filter(|n| self.task_exists(n))
            .map(|n| {
                let bindings = self.tasks.get(n).map(Vec::as_slice).unwrap_or_default();
                (n.clone(), ips_of(bindings, self.task_defs.get(n)))
            })
            .collect()
    }

    fn sg_view(&self, name: &str, tasks: &BTreeMap<String, BTreeSet<IpAddr>>) -> SgView {
        let book = &self.sg.book;
        let g = &book.groups[name];
        let default_sg = self.sg.settings.default_sg.as_deref();
        let is_default = default_sg == Some(name);
        let mut default_tasks = Vec::new();
        let mut members = BTreeSet::new();
        for (task, ips) in tasks {
            let (groups, _) = book.effective(task, default_sg);
            if groups.contains(&name) {
                members.extend(ips);
                if !book.attachments.contains_key(task) {
                    default_tasks.push(task.clone());
                }
            }
        }
        SgView {
            name: name.to_owned(),
            id: g.id,
            description: g.description.clone(),
            ingress: g
                .ingress
                .iter()
                .map(|r| r.spec(sg::Direction::Ingress))
                .collect(),
            egress: g
                .egress
                .iter()
                .map(|r| r.spec(sg::Direction::Egress))
                .collect(),
            tasks: book.tasks_of(name),
            default: is_default,
            default_tasks,
            members: v4_only(members.iter().copied()).into_iter().collect(),
            members6: members
                .into_iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(ip) => Some(ip),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            host_counters: None,
        }
    }

    fn sg_applied(&self) -> MutexGuard<'_, DpState> {
        self.sg
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sg_want(&self, book: &SgBook, tasks: &BTreeMap<String, BTreeSet<IpAddr>>) -> DpState {
        book.desired(self.sg.settings.default_sg.as_deref(), tasks)
    }

    /// Pushes `book` for `tasks`; on failure puts the current state back.
    fn sg_push(&self, book: &SgBook, tasks: &BTreeMap<String, BTreeSet<IpAddr>>) -> Result<()> {
        let want = self.sg_want(book, tasks);
        let mut applied = self.sg_applied();
        if let Err(err) = applied.push(&want, &*self.datapath) {
            tracing::warn!(error = %err, "datapath security-group update failed; rolling back");
            let current = self.sg_want(&self.sg.book, &self.sg_tasks());
            if let Err(e) = applied.push(&current, &*self.datapath) {
                tracing::error!(error = %e, "rollback: restoring security groups in the datapath failed");
            }
            return Err(err.into());
        }
        Ok(())
    }

    /// Best effort: the datapath back in step with memory after a later
    /// step of a request failed.
    pub(super) fn sg_resync(&self) {
        let current = self.sg_want(&self.sg.book, &self.sg_tasks());
        if let Err(e) = self.sg_applied().push(&current, &*self.datapath) {
            tracing::error!(error = %e, "rollback: restoring security groups in the datapath failed");
        }
    }

    /// Datapath, then store, then memory.
    fn sg_apply(&mut self, next: SgBook) -> Result<()> {
        self.sg_push(&next, &self.sg_tasks())?;
        if let Err(err) = self.store.commit_sgs(&next.changes_since(&self.sg.book)) {
            self.sg_resync();
            return Err(err);
        }
        self.sg.book = next;
        Ok(())
    }

    /// Before a publish commits: the endpoints of `task` with bindings
    /// `all` (policy and memberships included) go in first, so a new port
    /// is never open for a moment.
    pub(super) fn sg_before_publish(
        &self,
        task: &str,
        all: &[Binding],
        record: Option<&TaskRecord>,
    ) -> Result<()> {
        let mut tasks = self.sg_tasks();
        let record = record.or_else(|| self.task_defs.get(task));
        tasks.insert(task.to_owned(), ips_of(all, record));
        self.sg_push(&self.sg.book, &tasks)
    }

    /// Before an unpublish commits, after its bindings are out: endpoints
    /// no binding of `task` uses any more go.
    pub(super) fn sg_before_unpublish(
        &self,
        task: &str,
        kept: &[Binding],
        drop_record: bool,
    ) -> Result<()> {
        let mut tasks = self.sg_tasks();
        let record = if drop_record {
            None
        } else {
            self.task_defs.get(task)
        };
        if kept.is_empty() && record.is_none() {
            tasks.remove(task);
        } else {
            tasks.insert(task.to_owned(), ips_of(kept, record));
        }
        self.sg_push(&self.sg.book, &tasks)
    }

    /// After an unpublish: a task that is gone has no groups any more (a
    /// new task of that name starts without them).
    pub(super) fn sg_after_unpublish(&mut self, task: &str) {
        if self.task_exists(task) {
            return;
        }
        let mut next = self.sg.book.clone();
        if !next.forget_task(task) {
            return;
        }
        if let Err(err) = self.store.commit_sgs(&next.changes_since(&self.sg.book)) {
            tracing::warn!(task = %task, error = %err, "could not forget the security groups of a removed task; the next start does");
        }
        tracing::info!(task = %task, "task gone; its security groups are detached");
        self.sg.book = next;
    }
}

impl Berth {
    pub async fn sg_list(&self) -> Vec<SgView> {
        self.registry.lock().await.sg_list()
    }

    /// The group with the host-wide drop counters.
    pub async fn sg_show(&self, name: String) -> Result<SgView> {
        let mut view = self.registry.lock().await.sg_show(&name)?;
        let counters = self.counters().await?;
        view.host_counters = Some(
            DROP_COUNTERS
                .iter()
                .map(|c| (c.to_string(), counters.get(*c).copied().unwrap_or(0)))
                .collect(),
        );
        Ok(view)
    }

    pub async fn sg_create(&self, name: String, description: String) -> Result<SgView> {
        self.with_registry(move |r| r.sg_create(&name, &description))
            .await
    }

    pub async fn sg_remove(&self, name: String) -> Result<SgView> {
        self.with_registry(move |r| r.sg_remove(&name)).await
    }

    pub async fn sg_add_rule(&self, name: String, spec: RuleSpec) -> Result<SgView> {
        self.with_registry(move |r| r.sg_add_rule(&name, &spec))
            .await
    }

    pub async fn sg_remove_rule(&self, name: String, spec: RuleSpec) -> Result<SgView> {
        self.with_registry(move |r| r.sg_remove_rule(&name, &spec))
            .await
    }

    pub async fn sg_attach(&self, name: String, task: String) -> Result<SgView> {
        self.with_registry(move |r| r.sg_attach(&name, &task)).await
    }

    pub async fn sg_detach(&self, name: String, task: String) -> Result<SgView> {
        self.with_registry(move |r| r.sg_detach(&name, &task)).await
    }
}
