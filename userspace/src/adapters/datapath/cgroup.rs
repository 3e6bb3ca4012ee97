//! Where the socket hooks attach: a cgroup of the v2 hierarchy, found
//! wherever that hierarchy is mounted. `ip netns exec` (the usual way to
//! run berth in a namespace) mounts a fresh sysfs over `/sys`, hiding
//! `/sys/fs/cgroup`; the hierarchy itself is still there, so when no mount
//! of it is visible berth mounts cgroup2 on a private directory of its own
//! (as it mounts bpffs), opens the cgroup and unmounts again: the pinned
//! links keep the attachment, not the mount.
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::CgroupInfo;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup the hooks attach to, opened.
pub(super) struct HookCgroup {
    pub dir: fs::File,
    pub info: CgroupInfo,
}

/// One cgroup2 mount point from `/proc/self/mountinfo` whose mount root is
/// the hierarchy's root (a mount of a sub-cgroup cannot reach the others).
pub fn cgroup2_root_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let mount_point = f.next()?;
        (root == "/").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes blanks and backslashes as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_cgroup2_dir(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// The cgroup named by `wanted` (`$BERTH_CGROUP`; `None` is the
/// hierarchy's root): a cgroup2 directory as given, or else a path inside
/// the hierarchy, looked up under a visible mount of it or a private one.
pub(super) fn open_hook_cgroup(wanted: Option<&Path>) -> Result<HookCgroup, String> {
    if let Some(p) = wanted.filter(|p| is_cgroup2_dir(p)) {
        let dir = fs::File::open(p).map_err(|e| format!("cgroup {}: {e}", p.display()))?;
        return Ok(HookCgroup {
            dir,
            info: CgroupInfo {
                cgroup: p.display().to_string(),
                opened_at: p.display().to_string(),
                private_mount: false,
            },
        });
    }
    let inside = wanted.map_or_else(|| "/".to_owned(), |p| p.display().to_string());
    if !inside.starts_with('/') {
        return Err(format!(
            "$BERTH_CGROUP={inside}: neither a cgroup v2 directory nor an absolute path inside the hierarchy"
        ));
    }
    let visible = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| cgroup2_root_mount(&m));
    let (root, mount) = match visible {
        Some(root) => (root, None),
        None => {
            let m = PrivateMount::new()?;
            (m.path.clone(), Some(m))
        }
    };
    let path = root.join(inside.trim_start_matches('/'));
    let dir = fs::File::open(&path).map_err(|e| {
        format!(
            "cgroup {inside} in the cgroup v2 hierarchy (mounted at {}): {e}",
            root.display()
        )
    })?;
    let private_mount = mount.is_some();
    // The open directory keeps the cgroup; the mount can go.
    drop(mount);
    Ok(HookCgroup {
        dir,
        info: CgroupInfo {
            cgroup: inside,
            opened_at: path.display().to_string(),
            private_mount,
        },
    })
}

const PRIVATE_PREFIX: &str = "berth-cgroup2-";

/// cgroup2 mounted on a fresh temp directory, unmounted and removed on drop.
struct PrivateMount {
    path: PathBuf,
}

impl PrivateMount {
    fn new() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("{PRIVATE_PREFIX}{}", std::process::id()));
        let _ = fs::create_dir(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"cgroup2".as_ptr(),
                c.as_ptr(),
                c"cgroup2".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = fs::remove_dir(&path);
            return Err(format!(
                "no cgroup v2 hierarchy is mounted and mounting one on {} failed: {e}",
                path.display()
            ));
        }
        Ok(Self { path })
    }
}

impl Drop for PrivateMount {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A hybrid host: v1 controllers, the v2 hierarchy at .../unified, and a
    // mount of a sub-cgroup (a container's view), which cannot serve.
    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 /kubepods/x /mnt/sub rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
35 33 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 33 0:31 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu
";

    #[test]
    fn the_hierarchy_root_mount_is_found_in_mountinfo() {
        assert_eq!(
            cgroup2_root_mount(MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // What `ip netns exec` leaves: a fresh sysfs, no cgroup mount.
        let sysfs_only: String = MOUNTINFO.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(cgroup2_root_mount(&sysfs_only), None);
        assert_eq!(
            cgroup2_root_mount("1 2 0:3 / /tmp/a\\040b rw - cgroup2 cgroup2 rw\n"),
            Some(PathBuf::from("/tmp/a b"))
        );
    }

    #[test]
    fn a_relative_cgroup_name_is_refused() {
        let err = open_hook_cgroup(Some(Path::new("berth")))
            .err()
            .expect("refused");
        assert!(err.contains("absolute path inside the hierarchy"), "{err}");
    }
}
