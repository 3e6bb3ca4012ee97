//! The bindings `berth-cni` publishes, found by the CNI attachment they
//! carry (network, container ID, interface) rather than by task name: ADD
//! refuses a second ADD of one attachment, DEL and GC are idempotent, CHECK
//! reads the datapath. The task of an attachment is named after its
//! container ID.
use std::collections::BTreeSet;

use super::{Berth, Registry};
use crate::{
    domain::cni::CniAttachment,
    domain::error::{Error, Result},
    domain::model::{Binding, EcsLabels},
    domain::spec::PortSpec,
};

/// One binding of an attachment and whether the datapath publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedBinding {
    pub binding: Binding,
    pub in_datapath: bool,
}

impl Registry {
    /// The CNI attachment a task's bindings carry, if any.
    pub fn cni_owner(&self, task: &str) -> Option<&CniAttachment> {
        let bindings = self.tasks.get(task)?;
        bindings.iter().find_map(|b| b.cni.as_ref())
    }

    /// The tasks with bindings of an attachment that `matches`.
    fn cni_tasks(&self, matches: impl Fn(&CniAttachment) -> bool) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|(_, bs)| bs.iter().any(|b| b.cni.as_ref().is_some_and(&matches)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// CNI ADD: publishes `specs` at `container_ip` as the task named after
    /// the container ID. A second ADD of the same attachment is refused (the
    /// spec forbids it and the bridge plugin refuses it too), as is a task
    /// of that name that is not this attachment's. All or nothing.
    pub fn add_cni(
        &mut self,
        att: &CniAttachment,
        container_ip: impl Into<crate::domain::model::ContainerIps>,
        specs: &[PortSpec],
    ) -> Result<Vec<Binding>> {
        att.check().map_err(Error::CniAttachment)?;
        if let Some(task) = self
            .cni_tasks(|c| c.same_attachment(att))
            .into_iter()
            .next()
        {
            tracing::info!(task = %task, "CNI ADD of an attachment berth already publishes");
            return Err(Error::CniAttachmentExists {
                network: att.network.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            });
        }
        let task = &att.container_id;
        if self.tasks.contains_key(task) || self.task_defs.contains_key(task) {
            return Err(Error::CniTaskNameTaken(task.clone()));
        }
        self.add_labelled(
            task,
            container_ip.into(),
            specs,
            &EcsLabels::default(),
            Some(att),
            false,
        )
    }

    /// CNI DEL: unpublishes every binding of `att`. Nothing to remove is
    /// success (a second DEL, a store that was reset): DEL is idempotent.
    pub fn remove_cni(&mut self, att: &CniAttachment) -> Result<Vec<Binding>> {
        att.check().map_err(Error::CniAttachment)?;
        let mut gone = Vec::new();
        for task in self.cni_tasks(|c| c.same_attachment(att)) {
            gone.extend(self.remove(&task, &[])?);
        }
        Ok(gone)
    }

    /// CNI GC: unpublishes the tasks of `network` whose (container ID,
    /// interface) is not in `valid`. Goes on past a failure (the spec asks
    /// plugins to remove as much as they can) and reports the first one.
    pub fn gc_cni(
        &mut self,
        network: &str,
        valid: &BTreeSet<(String, String)>,
    ) -> Result<Vec<Binding>> {
        crate::domain::cni::check_id("network name", network).map_err(Error::CniAttachment)?;
        let stale = self.cni_tasks(|c| {
            c.network == network && !valid.contains(&(c.container_id.clone(), c.ifname.clone()))
        });
        let mut gone = Vec::new();
        let mut first_err = None;
        for task in stale {
            match self.remove(&task, &[]) {
                Ok(bs) => gone.extend(bs),
                Err(e) => {
                    tracing::warn!(task = %task, error = %e, "CNI GC could not remove a task");
                    first_err.get_or_insert(e);
                }
            }
        }
        if !gone.is_empty() {
            tracing::info!(
                network,
                bindings = gone.len(),
                "CNI GC removed stale attachments"
            );
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(gone),
        }
    }

    /// CNI CHECK: the bindings of `att`, each with whether the datapath
    /// publishes it right now.
    pub fn check_cni(&self, att: &CniAttachment) -> Result<Vec<CheckedBinding>> {
        att.check().map_err(Error::CniAttachment)?;
        let mut out = Vec::new();
        for task in self.cni_tasks(|c| c.same_attachment(att)) {
            for b in self.tasks.get(&task).into_iter().flatten() {
                let in_datapath = self.datapath.publishes(b).map_err(Error::Datapath)?;
                out.push(CheckedBinding {
                    binding: b.clone(),
                    in_datapath,
                });
            }
        }
        Ok(out)
    }
}

impl Berth {
    pub async fn add_cni(
        &self,
        att: CniAttachment,
        container_ip: impl Into<crate::domain::model::ContainerIps>,
        specs: Vec<PortSpec>,
    ) -> Result<Vec<Binding>> {
        let container_ip = container_ip.into();
        let ticket = container_ip
            .v4
            .and_then(|v4| self.sweeper.blocker_for_specs(v4, &specs))
            .or_else(|| self.sweeper.blocker_for_specs(container_ip.v6?, &specs));
        self.wait_for_sweep(ticket).await?;
        self.with_registry(move |r| r.add_cni(&att, container_ip, &specs))
            .await
    }

    pub async fn remove_cni(&self, att: CniAttachment) -> Result<Vec<Binding>> {
        self.with_registry(move |r| r.remove_cni(&att)).await
    }

    pub async fn gc_cni(
        &self,
        network: String,
        valid: BTreeSet<(String, String)>,
    ) -> Result<Vec<Binding>> {
        self.with_registry(move |r| r.gc_cni(&network, &valid))
            .await
    }

    pub async fn check_cni(&self, att: CniAttachment) -> Result<Vec<CheckedBinding>> {
        self.with_registry(move |r| r.check_cni(&att)).await
    }
}
