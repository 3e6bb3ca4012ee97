//! A CNI attachment as berth keeps it on the bindings `berth-cni` made:
//! the network, the container and its interface that the runtime named in
//! ADD, so DEL, CHECK and GC find their bindings by what the runtime knows
//! rather than by parsing task names. Each field is checked as the CNI
//! library checks it (`utils.ValidateContainerID`, `ValidateNetworkName`,
//! `ValidateInterfaceName`).
use serde::{Deserialize, Serialize};

/// The most bytes a network name, container ID or pod label may have here
/// (container IDs become task names, which allow 255).
pub const MAX_ID_LEN: usize = 255;
/// Linux `IFNAMSIZ` less the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// Which attachment a binding belongs to. Two attachments are the same one
/// when network, container ID and interface match; the pod's namespace and
/// name are shown, never compared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniAttachment {
    /// The network configuration's `name`.
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, where the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl CniAttachment {
    /// Whether `other` names the same (network, container, interface).
    pub fn same_attachment(&self, other: &Self) -> bool {
        self.network == other.network
            && self.container_id == other.container_id
            && self.ifname == other.ifname
    }

    /// `namespace/name` of the pod, when the runtime gave both.
    pub fn pod(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            (None, Some(name)) => Some(name.clone()),
            _ => None,
        }
    }

    /// What is wrong with this attachment, if anything, as one line.
    pub fn check(&self) -> Result<(), String> {
        check_id("network name", &self.network)?;
        check_id("container ID", &self.container_id)?;
        check_ifname(&self.ifname)?;
        for (what, v) in [
            ("K8S_POD_NAMESPACE", &self.pod_namespace),
            ("K8S_POD_NAME", &self.pod_name),
        ] {
            if let Some(v) = v {
                check_id(what, v)?;
            }
        }
        Ok(())
    }
}

/// CNI's rule for container IDs and network names: an alphanumeric first,
/// then alphanumerics, `_`, `.` and `-` (also every Kubernetes name).
pub fn check_id(what: &str, v: &str) -> Result<(), String> {
    let ok_first = v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let ok_rest = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok_first || !ok_rest || v.len() > MAX_ID_LEN {
        return Err(format!(
            "invalid {what} {v:?}: 1 to {MAX_ID_LEN} of letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// CNI's (and the kernel's) rule for interface names.
pub fn check_ifname(v: &str) -> Result<(), String> {
    let bad = v.is_empty()
        || v.len() > MAX_IFNAME_LEN
        || v == "."
        || v == ".."
        || v.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!(
            "invalid interface name {v:?}: 1 to {MAX_IFNAME_LEN} bytes, not . or .., without '/', ':' or spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> CniAttachment {
        CniAttachment {
            network: "kube".into(),
            container_id: "0123abcd".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-1".into()),
        }
    }

    #[test]
    fn a_runtime_attachment_passes() {
        assert_eq!(att().check(), Ok(()));
        assert_eq!(att().pod().as_deref(), Some("default/web-1"));
    }

    #[test]
    fn ids_follow_cni_rules() {
        for bad in ["", "-x", "a b", "a/b", &"a".repeat(256)] {
            let a = CniAttachment {
                container_id: bad.into(),
                ..att()
            };
            assert!(a.check().unwrap_err().contains("container ID"), "{bad:?}");
        }
        for bad in ["", ".", "..", "eth:0", "a/b", "sixteen_chars_xx", "e th"] {
            let a = CniAttachment {
                ifname: bad.into(),
                ..att()
            };
            assert!(a.check().unwrap_err().contains("interface name"), "{bad:?}");
        }
    }

    #[test]
    fn sameness_ignores_the_pod_labels() {
        let other = CniAttachment {
            pod_name: None,
            ..att()
        };
        assert!(att().same_attachment(&other));
        let other = CniAttachment {
            ifname: "net1".into(),
            ..att()
        };
        assert!(!att().same_attachment(&other));
    }
}
