//! Containers come and go: every port of the bridge (a container's
//! host-side veth) gets the security-group programs, `berth_from_ctr` on tc
//! ingress (what the container sends) and `berth_to_ctr` on tc egress (what
//! it receives). A thread watches the bridge's ports and attaches new ones;
//! pins of ports that are gone are removed.
use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use aya::Ebpf;

use super::{bpf::attach_pinned, DatapathError};

pub const PORT_PROGRAMS: [&str; 2] = ["berth_from_ctr", "berth_to_ctr"];
const POLL: Duration = Duration::from_millis(250);

/// The bridge's ports, from sysfs of the current network namespace.
fn bridge_ports(bridge: &str) -> BTreeSet<String> {
    fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) struct PortWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Attach to the ports there are now, then keep following the bridge.
pub(super) fn watch(
    ebpf: Arc<Mutex<Ebpf>>,
    bridge: String,
    links_dir: PathBuf,
) -> Result<PortWatcher, DatapathError> {
    let mut known = BTreeSet::new();
    sync(&ebpf, &bridge, &links_dir, &mut known)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name("berth-ports".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(POLL);
                if let Err(e) = sync(&ebpf, &bridge, &links_dir, &mut known) {
                    tracing::warn!(error = %e, "attaching to bridge ports");
                }
            }
        })
        .map_err(|e| DatapathError::Other(format!("port watcher: {e}")))?;
    Ok(PortWatcher {
        stop,
        thread: Some(thread),
    })
}

fn sync(
    ebpf: &Mutex<Ebpf>,
    bridge: &str,
    links_dir: &std::path::Path,
    known: &mut BTreeSet<String>,
) -> Result<(), DatapathError> {
    let now = bridge_ports(bridge);
    for port in now.difference(known) {
        let mut ebpf = ebpf.lock().unwrap_or_else(|p| p.into_inner());
        for prog in PORT_PROGRAMS {
            // A port may vanish between listing and attaching.
            if let Err(e) = attach_pinned(&mut ebpf, prog, port, links_dir) {
                if !matches!(e, DatapathError::NoSuchInterface(_))
                    && bridge_ports(bridge).contains(port)
                {
                    return Err(e);
                }
            }
        }
        tracing::info!(port = %port, "security-group hooks attached");
    }
    for port in known.difference(&now) {
        for prog in PORT_PROGRAMS {
            let _ = fs::remove_file(links_dir.join(format!("{prog}@{port}")));
        }
    }
    // Pins left by an earlier run for ports that are gone.
    if let Ok(entries) = fs::read_dir(links_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((prog, port)) = name.split_once('@') {
                if PORT_PROGRAMS.contains(&prog) && !now.contains(port) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    *known = now;
    Ok(())
}

impl Drop for PortWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
