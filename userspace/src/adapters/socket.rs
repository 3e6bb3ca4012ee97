//! Claiming the API's Unix socket path: refuse when a live daemon answers
//! there, replace a stale socket, and remove ours when done.
use std::{
    fs::{self, DirBuilder, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::{UnixListener, UnixStream};

use crate::domain::error::{Error, Result};

pub const DEFAULT_SOCKET: &str = "/run/berth/berth.sock";

/// Root and its group only: whoever can publish ports owns the host's
/// network edge.
const SOCKET_MODE: u32 = 0o660;

/// The socket file we created; dropping it removes the file, unless another
/// process has replaced it in the meantime.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Inode numbers are reused at once, so the change time is part of the
    /// identity too.
    identity: (u64, u64, i64, i64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .map(|m| identity(&m) == self.identity)
            .unwrap_or(false);
        if ours {
            if let Err(err) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %err, "could not remove the API socket");
            }
        }
    }
}

fn identity(meta: &fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

/// Whether something accepts connections on `path` right now.
pub async fn is_listening(path: &Path) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await,
        Ok(Ok(_)) | Err(_)
    )
}

/// The group id of `--socket-group`: a group name, or a number.
pub fn resolve_group(group: &str) -> Result<u32> {
    let unknown = || Error::NoSuchGroup(group.to_owned());
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| unknown())?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid out-parameter.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and
    // getgrnam_r writes at most `buf.len()` bytes into it.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &raw mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(unknown());
    }
    Ok(grp.gr_gid)
}

/// Binds the API socket at `path` with mode 0660, creating its directory,
/// owned by group `gid` when given (so its members may use the API without
/// widening the mode). Binds under a temporary name and renames it into
/// place, so the socket never exists with looser permissions or the wrong
/// group.
pub async fn bind(path: &Path, gid: Option<u32>) -> Result<(UnixListener, SocketFile)> {
    let io_err = |what: &str, e: io::Error| Error::io(format!("{what} {}", path.display()), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::NotASocket(path.to_owned()))
        }
        Ok(_) if is_listening(path).await => return Err(Error::AlreadyRunning(path.to_owned())),
        Ok(_) => {
            tracing::info!(path = %path.display(), "replacing a stale socket");
            fs::remove_file(path).map_err(|e| io_err("removing stale socket", e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking", e)),
    }

    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| io_err("binding", e))?;
    let placed = fs::set_permissions(&tmp, Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::os::unix::fs::chown(&tmp, None, gid))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("binding", e));
    }
    let meta = fs::symlink_metadata(path).map_err(|e| io_err("checking", e))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            identity: identity(&meta),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_creates_the_directory_and_a_0660_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/berth/berth.sock");
        let (_listener, file) = bind(&path, None).await.unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert!(is_listening(&path).await);
        drop(file);
        assert!(!path.exists(), "dropping SocketFile removes the socket");
    }

    /// A group other than ours, from the group database.
    fn some_other_group() -> (String, u32) {
        let groups = fs::read_to_string("/etc/group").unwrap();
        groups
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?.to_owned();
                let gid = f.nth(1)?.parse().ok()?;
                Some((name, gid))
            })
            .find(|(_, gid)| *gid != 0 && *gid != unsafe { libc::getegid() })
            .expect("a group in /etc/group")
    }

    #[tokio::test]
    async fn socket_group_owns_the_socket_and_the_mode_stays_0660() {
        let (name, gid) = some_other_group();
        assert_eq!(resolve_group(&name).unwrap(), gid);
        assert_eq!(resolve_group(&gid.to_string()).unwrap(), gid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        let (_listener, _file) = bind(&path, Some(gid)).await.unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.gid(), gid);
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    }

    #[test]
    fn an_unknown_socket_group_is_one_line() {
        assert_eq!(
            resolve_group("berth-no-such-group")
                .unwrap_err()
                .to_string(),
            "--socket-group berth-no-such-group: no such group"
        );
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        let (_listener, _file) = bind(&path, None).await.unwrap();
        let err = bind(&path, None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("another berth daemon is listening on {}", path.display())
        );
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        // A socket file nobody listens on, as a killed daemon leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists() && !is_listening(&path).await);
        let (_listener, _file) = bind(&path, None).await.unwrap();
        assert!(is_listening(&path).await);
    }

    #[tokio::test]
    async fn a_regular_file_at_the_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        fs::write(&path, "keep me").unwrap();
        assert!(matches!(bind(&path, None).await, Err(Error::NotASocket(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn a_replaced_socket_is_not_removed_by_the_old_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        let (listener, file) = bind(&path, None).await.unwrap();
        drop(listener);
        // File times tick in jiffies; make the new socket's ctime differ.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Another daemon found it stale and took the path over.
        let (_listener2, _file2) = bind(&path, None).await.unwrap();
        drop(file);
        assert!(path.exists());
    }
}
