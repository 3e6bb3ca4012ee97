//! The CNI verbs on the daemon's API. Each returns what goes to stdout on
//! success (ADD: the result; the others: nothing) or one [`CniError`].
use serde_json::Value;

use super::{
    config::{Env, NetConf},
    error::{CniError, Code},
    result::{convert, sandbox_ipv4, sandbox_ipv6},
};
use crate::{
    domain::cni::CniAttachment,
    domain::error::Error,
    domain::spec::PortSpec,
    domain::task::parse_specs,
    interfaces::{
        api::cni::{CniAddRequest, CniAttachmentRequest, CniGcRequest, ValidAttachment},
        client::Client,
    },
};

/// The daemon's errors as CNI errors: a refusal (4xx) is berth's answer
/// word for word; unreachable, slow or failing is transient (the runtime
/// retries).
fn daemon_err(err: Error) -> CniError {
    match err {
        Error::Api { status, message } if status < 500 => CniError::new(Code::Refused, message),
        other => CniError::new(Code::TryAgainLater, other.one_line()),
    }
}

fn attachment(env: &Env, conf: &NetConf, with_pod: bool) -> CniAttachment {
    CniAttachment {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        pod_namespace: env.pod_namespace.clone().filter(|_| with_pod),
        pod_name: env.pod_name.clone().filter(|_| with_pod),
    }
}

fn client(conf: &NetConf) -> Client {
    Client::new(&conf.socket)
}

/// ADD: publishes the port mappings at the sandbox interface's IPv4
/// address and passes `prevResult` on. Without port mappings it only
/// passes the result on, as portmap does.
pub(super) async fn add(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::config("must be called as a chained plugin: prevResult missing")
    })?;
    let ip6 = sandbox_ipv6(prev, &env.ifname);
    let ports = conf.specs_for(ip6.is_some())?;
    if !ports.is_empty() {
        let ip = sandbox_ipv4(prev, &env.ifname)?;
        let att = attachment(env, conf, true);
        att.check().map_err(CniError::config)?;
        let req = CniAddRequest {
            attachment: att,
            container_ip: ip.to_string(),
            container_ip6: ip6.map(|v6| v6.to_string()),
            ports,
        };
        client(conf).cni_add(&req).await.map_err(daemon_err)?;
    }
    Ok(Some(convert(prev, &conf.cni_version)))
}

/// DEL: unpublishes what ADD published for this attachment, whatever the
/// DEL's own `portMappings` say. Nothing there (a second DEL, a daemon
/// whose store was reset) is success. An unreachable daemon is code 11
/// when the attachment has port mappings: they are still in the datapath,
/// so success would leak them; the runtime retries DEL (and GC catches
/// what is left). Without port mappings ADD published nothing, so a pod
/// without host ports is torn down even while the daemon is down.
pub(super) async fn del(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let req = CniAttachmentRequest {
        attachment: attachment(env, conf, false),
    };
    match client(conf).cni_del(&req).await {
        Ok(_) => Ok(None),
        Err(e) if conf.runtime_config.port_mappings.is_empty() && !is_refusal(&e) => {
            eprintln!(
                "berth-cni DEL {}: {} (no port mappings: nothing to remove)",
                env.container_id,
                e.one_line()
            );
            Ok(None)
        }
        Err(e) => Err(daemon_err(e)),
    }
}

fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Api { status, .. } if *status < 500)
}

/// CHECK: every port mapping must be a binding of this attachment at the
/// sandbox address, and the datapath must publish it now.
pub(super) async fn check(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("required prevResult missing"))?;
    let ip6 = sandbox_ipv6(prev, &env.ifname);
    let ports = conf.specs_for(ip6.is_some())?;
    if ports.is_empty() {
        return Ok(None);
    }
    let ip4 = sandbox_ipv4(prev, &env.ifname)?;
    let req = CniAttachmentRequest {
        attachment: attachment(env, conf, false),
    };
    let have = client(conf).cni_check(&req).await.map_err(daemon_err)?;
    let specs = parse_specs(&ports).map_err(|e| CniError::config(e.one_line()))?;
    for m in specs.iter().flat_map(PortSpec::expand) {
        let ip: std::net::IpAddr = match (m.bind_ip, ip6) {
            (std::net::IpAddr::V6(_), Some(v6)) => v6.into(),
            _ => ip4.into(),
        };
        let found = have.iter().find(|c| {
            let b = &c.binding;
            b.bind_ip == m.bind_ip
                && b.host_port == m.host_port
                && b.container_port == m.container_port
                && b.protocol == m.protocol
                && b.container_ip == ip
        });
        match found {
            Some(c) if c.in_datapath => {}
            Some(_) => {
                return Err(CniError::new(
                    Code::CheckFailed,
                    format!("port mapping {m} -> {ip} is in berth's store but not in its datapath"),
                ))
            }
            None => {
                return Err(CniError::new(
                    Code::CheckFailed,
                    format!(
                        "port mapping {m} -> {ip} of container {} is not published by berth",
                        env.container_id
                    ),
                ))
            }
        }
    }
    Ok(None)
}

/// GC: unpublishes this network's attachments that are not in
/// `cni.dev/valid-attachments`. Without that list nothing is removed.
pub(super) async fn gc(conf: &NetConf) -> Result<Option<Value>, CniError> {
    let listed = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::config("GC without cni.dev/valid-attachments: nothing removed"))?;
    let valid_attachments = listed
        .iter()
        .map(
            |a| match (a["containerID"].as_str(), a["ifname"].as_str()) {
                (Some(c), Some(i)) => Ok(ValidAttachment {
                    container_id: c.to_owned(),
                    ifname: i.to_owned(),
                }),
                _ => Err(CniError::config(format!(
                    "cni.dev/valid-attachments: {a} lacks containerID or ifname"
                ))),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let req = CniGcRequest {
        network: conf.name.clone(),
        valid_attachments,
    };
    client(conf).cni_gc(&req).await.map_err(daemon_err)?;
    Ok(None)
}

/// STATUS: ready when the daemon answers; otherwise code 50.
pub(super) async fn status(conf: &NetConf) -> Result<Option<Value>, CniError> {
    client(conf).health().await.map_err(|e| {
        CniError::new(
            Code::NotAvailable,
            format!("berth-cni cannot publish ports: {}", e.one_line()),
        )
    })?;
    Ok(None)
}
