//! A private cgroup v2 per test daemon, so berth's bind guard is attached
//! there and never to the machine's root cgroup. Processes a test wants
//! covered by the guard are started inside it ([`Cgroup::procs_file`]).
//!
//! `ip netns exec` mounts a fresh sysfs over `/sys`, hiding
//! `/sys/fs/cgroup` from the daemon, so the hierarchy is also mounted on a
//! temp dir of our own, reachable from any mount namespace made after it.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::names::{self, TempDir, TMP_PREFIX};

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on a
/// hybrid layout, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2"))
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup v2 hierarchy is mounted")
}

#[derive(Debug)]
pub struct Cgroup {
    /// The child cgroup, seen through our own mount.
    path: PathBuf,
    /// The same cgroup under the system's mount (for cleanup by name).
    system_path: PathBuf,
    mount: TempDir,
}

impl Cgroup {
    pub fn new(role: &str) -> Result<Self> {
        names::reap_stale();
        let name = names::unique(TMP_PREFIX, role)?;
        let system_path = cgroup2_root()?.join(&name);
        fs::create_dir(&system_path)
            .with_context(|| format!("cannot create cgroup {}", system_path.display()))?;
        let mount = TempDir::new("cgroup2")?;
        crate::cmd::run(
            "mount",
            [
                "-t",
                "cgroup2",
                "cgroup2",
                &mount.path().display().to_string(),
            ],
        )?;
        Ok(Self {
            path: mount.path().join(name),
            system_path,
            mount,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writing a pid here moves that process into the cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove(&self.system_path);
        crate::bpffs::unmount_lazy(self.mount.path());
    }
}

/// rmdir, retrying while exiting processes leave it.
pub(crate) fn remove(path: &Path) {
    for _ in 0..50 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "berth-integration: could not remove cgroup {}",
        path.display()
    );
}
