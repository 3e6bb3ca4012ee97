//! `berth reset` (also `berth daemon --teardown`): with the daemon stopped,
//! remove everything berth left on the host — the host ports it added to
//! `ip_local_reserved_ports`, its eBPF pins (which detaches the programs)
//! and its store — so the host is as before berth. Ports the operator
//! reserved by hand stay reserved.
use std::{
    collections::BTreeSet,
    fmt, fs, io,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
};

use crate::{
    adapters::datapath::BpfDatapath,
    adapters::host::{format_port_list, Host},
    adapters::lock::lock_for_reset,
    adapters::socket,
    adapters::store::{Store, STORE_FILE},
    domain::error::{Error, Result},
};

#[derive(Clone, Debug)]
pub struct ResetConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
}

/// What a reset removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetReport {
    pub unreserved: BTreeSet<u16>,
    pub pins: Option<PathBuf>,
    pub store: Option<PathBuf>,
}

impl fmt::Display for ResetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.unreserved.is_empty() {
            parts.push(format!(
                "released reserved ports {}",
                format_port_list(&self.unreserved)
            ));
        }
        if let Some(p) = &self.pins {
            parts.push(format!("removed pins {}", p.display()));
        }
        if let Some(p) = &self.store {
            parts.push(format!("removed state {}", p.display()));
        }
        if parts.is_empty() {
            write!(f, "nothing to reset")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// Resets the host. Refuses while something answers on the API socket.
/// Each step runs only after the one before succeeded, and the store goes
/// last, so a failed reset can simply be run again.
pub async fn reset(config: &ResetConfig, host: &dyn Host) -> Result<ResetReport> {
    let is_socket = fs::symlink_metadata(&config.socket)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket && socket::is_listening(&config.socket).await {
        return Err(Error::DaemonRunning(config.socket.clone()));
    }
    // A daemon on another socket still holds these (and one starting now
    // is kept out until we are done).
    let _lock = lock_for_reset(
        &config.state_dir,
        &crate::adapters::datapath::pin_dir(&config.bpffs),
    )?;
    let mut report = ResetReport::default();

    // Opening the store also takes its lock: a daemon that is starting up
    // right now makes this fail instead of racing us.
    let ours = match Store::open_existing(&config.state_dir)? {
        Some(store) => store.load_all()?.reserved,
        None => BTreeSet::new(),
    };
    if !ours.is_empty() {
        let sysctl_err = |what: &str, e: io::Error| {
            Error::io(
                format!("{what} {}", crate::adapters::host::RESERVED_PORTS_SYSCTL),
                e,
            )
        };
        let mut current = host
            .reserved_ports()
            .map_err(|e| sysctl_err("reading", e))?;
        report.unreserved = current.intersection(&ours).copied().collect();
        if !report.unreserved.is_empty() {
            current.retain(|p| !ours.contains(p));
            host.set_reserved_ports(&current)
                .map_err(|e| sysctl_err("writing", e))?;
        }
    }

    // Where BpfDatapath pins (datapath::bpf::pin_dir).
    let pins = crate::adapters::datapath::pin_dir(&config.bpffs);
    if pins.exists() {
        BpfDatapath::teardown(&config.bpffs)?;
        report.pins = Some(pins);
    }

    let store = config.state_dir.join(STORE_FILE);
    remove_if_present(&store, &mut report.store)?;
    if is_socket {
        // Nobody answers there: a killed daemon's leftover.
        let mut removed = None;
        remove_if_present(&config.socket, &mut removed)?;
    }
    Ok(report)
}

fn remove_if_present(path: &Path, removed: &mut Option<PathBuf>) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            *removed = Some(path.to_owned());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        domain::cidr::Ipv4Cidr,
        domain::spec::PortRange,
        engine::allocator::PortPolicy,
        engine::fake::{FakeDatapath, FakeHost},
        engine::registry::{parse_specs, Bridge, Registry},
    };

    fn config(dir: &Path) -> ResetConfig {
        ResetConfig {
            socket: dir.join("berth.sock"),
            state_dir: dir.join("state"),
            bpffs: dir.join("bpffs"),
        }
    }

    /// A store with one mapping on 8080 and 8443, the operator having
    /// reserved 8443 and 9999 by hand first.
    fn used_host(dir: &Path, host: &Arc<FakeHost>) {
        host.set_reserved(&[8443, 9999]);
        let store = Store::open(&dir.join("state")).unwrap();
        let bridge = Bridge::Fixed {
            name: "br0".into(),
            subnets: vec![Ipv4Cidr::new("172.17.0.1".parse().unwrap(), 16)],
        };
        let policy = PortPolicy::new(PortRange {
            start: 49153,
            end: 49160,
        });
        let mut r = Registry::open(
            store,
            Arc::new(FakeDatapath::default()),
            bridge,
            host.clone(),
            policy,
        )
        .unwrap();
        r.add(
            "web",
            "172.17.0.2".parse::<std::net::Ipv4Addr>().unwrap(),
            &parse_specs(&["8080:80", "8443:443"]).unwrap(),
        )
        .unwrap();
        assert_eq!(host.reserved(), [8080, 8443, 9999].into());
        fs::create_dir_all(dir.join("bpffs/berth/links")).unwrap();
        fs::write(dir.join("bpffs/berth/BERTH_SERVICES"), "").unwrap();
    }

    #[tokio::test]
    async fn reset_removes_what_berth_added_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::default());
        used_host(dir.path(), &host);
        let report = reset(&config(dir.path()), host.as_ref()).await.unwrap();
        assert_eq!(host.reserved(), [8443, 9999].into(), "the operator's stay");
        assert_eq!(report.unreserved, [8080].into());
        assert!(!dir.path().join("bpffs/berth").exists());
        assert!(dir.path().join("bpffs").exists(), "the mount point stays");
        assert!(!dir.path().join("state").join(STORE_FILE).exists());
        assert_eq!(
            report.to_string(),
            format!(
                "released reserved ports 8080; removed pins {}; removed state {}",
                dir.path().join("bpffs/berth").display(),
                dir.path().join("state/berth.redb").display()
            )
        );
        // Again: nothing left to do.
        let report = reset(&config(dir.path()), host.as_ref()).await.unwrap();
        assert_eq!(report.to_string(), "nothing to reset");
    }

    #[tokio::test]
    async fn reset_refuses_while_a_daemon_answers() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::default());
        used_host(dir.path(), &host);
        let (_listener, _file) = socket::bind(&dir.path().join("berth.sock"), None)
            .await
            .unwrap();
        let err = reset(&config(dir.path()), host.as_ref()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "a berth daemon is answering on {}; stop it before resetting",
                dir.path().join("berth.sock").display()
            )
        );
        assert_eq!(host.reserved(), [8080, 8443, 9999].into());
        assert!(dir.path().join("bpffs/berth").exists());
        assert!(dir.path().join("state").join(STORE_FILE).exists());
    }

    #[tokio::test]
    async fn reset_refuses_while_a_daemon_holds_the_lock_on_another_socket() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::default());
        used_host(dir.path(), &host);
        let held = crate::adapters::lock::lock_daemon(
            &dir.path().join("other-state"),
            &dir.path().join("bpffs/berth"),
        )
        .unwrap();
        let err = reset(&config(dir.path()), host.as_ref()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another berth daemon (PID {}) holds the pin directory {}; stop it before resetting",
                std::process::id(),
                dir.path().join("bpffs/berth").display()
            )
        );
        assert_eq!(host.reserved(), [8080, 8443, 9999].into());
        assert!(dir.path().join("bpffs/berth/BERTH_SERVICES").exists());
        assert!(dir.path().join("state").join(STORE_FILE).exists());
        drop(held);
        reset(&config(dir.path()), host.as_ref()).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_sysctl_write_keeps_the_store_for_another_try() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::default());
        used_host(dir.path(), &host);
        host.fail_writes(true);
        let err = reset(&config(dir.path()), host.as_ref()).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("writing /proc/sys/net/ipv4/ip_local_reserved_ports: "),
            "{err}"
        );
        assert!(dir.path().join("state").join(STORE_FILE).exists());
        assert!(dir.path().join("bpffs/berth").exists());
        host.fail_writes(false);
        reset(&config(dir.path()), host.as_ref()).await.unwrap();
        assert_eq!(host.reserved(), [8443, 9999].into());
    }

    #[tokio::test]
    async fn a_stale_socket_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        reset(&config(dir.path()), &FakeHost::default())
            .await
            .unwrap();
        assert!(!path.exists());
    }
}
