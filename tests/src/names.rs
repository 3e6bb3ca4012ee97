//! Names that are unique across test threads and processes, and cleanup of
//! what crashed test processes (SIGKILL, abort) left behind.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Once,
    },
};

use anyhow::{bail, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of every network namespace the harness creates.
pub const NETNS_PREFIX: &str = "berth-";
/// Prefix of every temporary directory the harness creates.
pub const TMP_PREFIX: &str = "berth-test-";

/// `<prefix><pid>-<counter>-<role>`: the pid keeps parallel test processes
/// apart, the counter parallel threads.
pub fn unique(prefix: &str, role: &str) -> Result<String> {
    if role.is_empty()
        || !role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        bail!("role {role:?} must be non-empty ASCII letters, digits, '_' or '.'");
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{prefix}{}-{n}-{role}", std::process::id()))
}

/// The pid embedded in a name made by [`unique`].
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Once per process: deletes namespaces and temp dirs whose owning test
/// process is gone. Only names with the harness's prefixes and a dead pid
/// are touched.
pub fn reap_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_PREFIX) {
                    continue;
                }
                if let Some(pid) = owner_pid(&name, NETNS_PREFIX) {
                    if !pid_alive(pid) {
                        kill_processes_in(&e.path());
                        let _ = crate::cmd::run("ip", ["netns", "del", &name]);
                    }
                }
            }
        }
        if let Ok(root) = crate::cgroup::cgroup2_root() {
            if let Ok(entries) = fs::read_dir(&root) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(pid) = owner_pid(&name, TMP_PREFIX) {
                        if !pid_alive(pid) {
                            crate::cgroup::remove(&e.path());
                        }
                    }
                }
            }
        }
        if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = owner_pid(&name, TMP_PREFIX) {
                    if !pid_alive(pid) {
                        let path = e.path();
                        crate::bpffs::unmount_lazy(&path);
                        let _ = fs::remove_dir_all(&path);
                    }
                }
            }
        }
    });
}

/// SIGKILLs every process whose network namespace is the one bound at
/// `ns_path` (daemons and servers a crashed test process left running).
fn kill_processes_in(ns_path: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(ino) = fs::metadata(ns_path).map(|m| m.ino()) else {
        return;
    };
    let want = format!("net:[{ino}]");
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if fs::read_link(p.path().join("ns/net")).is_ok_and(|l| l.to_string_lossy() == want) {
            // SAFETY: kill(2); the process lives in a namespace only the
            // harness creates, owned by a test process that is gone.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/berth-test-<pid>-<n>-<role>`.
    pub fn new(role: &str) -> Result<Self> {
        reap_stale();
        let path = std::env::temp_dir().join(unique(TMP_PREFIX, role)?);
        fs::create_dir(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_pid_and_differ() {
        let a = unique(NETNS_PREFIX, "client").unwrap();
        let b = unique(NETNS_PREFIX, "client").unwrap();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a, NETNS_PREFIX), Some(std::process::id()));
        assert!(a.ends_with("-client"));
    }

    #[test]
    fn odd_roles_are_refused() {
        unique(NETNS_PREFIX, "").unwrap_err();
        unique(NETNS_PREFIX, "a/b").unwrap_err();
        unique(NETNS_PREFIX, "a b").unwrap_err();
    }

    #[test]
    fn temp_prefix_is_not_mistaken_for_a_pid() {
        assert_eq!(owner_pid("berth-test-12-3-x", NETNS_PREFIX), None);
        assert_eq!(owner_pid("berth-test-12-3-x", TMP_PREFIX), Some(12));
    }
}
