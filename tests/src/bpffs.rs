//! A private bpffs mount for one test (the daemon's `--bpffs`).
use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{bail, Result};

use crate::names::TempDir;

/// A fresh bpffs instance mounted on a temp dir. Dropping the guard unmounts
/// it lazily (pins vanish, and links and programs held only by pins go with
/// them) and removes the dir.
///
/// The mount is made in the test's mount namespace; `ip netns exec` copies
/// it into the namespace it creates, so a daemon started that way sees the
/// same bpffs and its pins are visible from the test.
#[derive(Debug)]
pub struct Bpffs {
    dir: TempDir,
}

impl Bpffs {
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("bpffs")?;
        let target = c_path(dir.path())?;
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            bail!("cannot mount bpffs on {}: {e}", dir.path().display());
        }
        Ok(Self { dir })
    }

    /// The mount point (give it to the daemon as `--bpffs`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Names of the entries directly under the mount point.
    pub fn entries(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        unmount_lazy(self.dir.path());
        // The TempDir field then removes the (now empty) directory.
    }
}

/// `umount -l`; errors (not mounted, already gone) are ignored.
pub(crate) fn unmount_lazy(path: &Path) {
    if let Ok(p) = c_path(path) {
        // SAFETY: umount2(2) with a NUL-terminated path.
        unsafe {
            libc::umount2(p.as_ptr(), libc::MNT_DETACH);
        }
    }
}

fn c_path(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// True if `path` is a mount point of a bpffs in this mount namespace.
pub fn is_bpffs_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> … - <fstype> …"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let fstype = line
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        fields.get(4).is_some_and(|m| *m == want) && fstype == Some("bpf")
    })
}
