//! One daemon per pin directory and per store. Two daemons sharing a bpffs
//! would each reconcile the pinned maps against their own store and delete
//! the other's mappings, so the daemon holds an exclusive `flock` on the pin
//! directory and on a lock file in its state directory for its whole life;
//! the kernel drops both when it exits, however it exits. `berth reset`
//! takes the same locks, so it cannot run under a live daemon.
//!
//! The holder's PID comes from `/proc/locks` (the kernel's own record, so
//! never stale); the daemon also records it next to each lock, for people:
//! in `<state-dir>/berth.lock` and as the target of the `<pins>/daemon_pid`
//! symlink (bpffs holds no regular files, but symlinks are allowed).
use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::domain::error::{Error, Result};

pub const STATE_LOCK_FILE: &str = "berth.lock";
/// bpffs refuses names with a dot.
pub const PIN_PID_LINK: &str = "daemon_pid";

/// Held locks; dropping it releases them.
#[derive(Debug)]
pub struct DaemonLock {
    _files: Vec<fs::File>,
}

/// What a lock protects, for the refusal message.
#[derive(Clone, Copy, Debug)]
enum Guarded {
    Store,
    Pins,
}

/// Takes the store's and the pin directory's locks (creating both
/// directories), recording this process's PID. Fails in one line naming
/// the holder's PID when another process has either.
pub fn lock_daemon(state_dir: &Path, pin_dir: &Path) -> Result<DaemonLock> {
    let files = take_both(state_dir, pin_dir)?;
    let pid = std::process::id().to_string();
    let _ = files[0].set_len(0);
    let _ = io::Write::write_all(&mut &files[0], format!("{pid}\n").as_bytes());
    let link = pin_dir.join(PIN_PID_LINK);
    let _ = fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink(&pid, &link) {
        tracing::debug!(error = %e, "cannot record the pid in the pin directory");
    }
    Ok(DaemonLock { _files: files })
}

/// The locks `berth reset` holds while it removes pins and store: a daemon
/// starting meanwhile is refused, and a running one refuses the reset.
pub fn lock_for_reset(state_dir: &Path, pin_dir: &Path) -> Result<DaemonLock> {
    let mut files = Vec::new();
    if state_dir.is_dir() {
        files.push(lock_path(
            &state_dir.join(STATE_LOCK_FILE),
            Guarded::Store,
            false,
            RESET_ADVICE,
        )?);
    }
    if pin_dir.is_dir() {
        files.push(lock_path(pin_dir, Guarded::Pins, true, RESET_ADVICE)?);
    }
    Ok(DaemonLock { _files: files })
}

fn take_both(state_dir: &Path, pin_dir: &Path) -> Result<Vec<fs::File>> {
    for dir in [state_dir, pin_dir] {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let store = lock_path(
        &state_dir.join(STATE_LOCK_FILE),
        Guarded::Store,
        false,
        DAEMON_ADVICE,
    )?;
    let pins = lock_path(pin_dir, Guarded::Pins, true, DAEMON_ADVICE)?;
    Ok(vec![store, pins])
}

const DAEMON_ADVICE: &str = "stop it, or give this one its own --bpffs and --state-dir";
const RESET_ADVICE: &str = "stop it before resetting";

fn lock_path(path: &Path, what: Guarded, is_dir: bool, advice: &'static str) -> Result<fs::File> {
    let open = if is_dir {
        fs::File::open(path)
    } else {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    let file = open.map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(Error::io(format!("locking {}", path.display()), err));
    }
    let pid = holder_pid(&file, path, is_dir);
    Err(Error::Locked {
        what: match what {
            Guarded::Store => "state directory",
            Guarded::Pins => "pin directory",
        },
        path: match what {
            Guarded::Store => path.parent().unwrap_or(path).to_owned(),
            Guarded::Pins => path.to_owned(),
        },
        pid,
        advice,
    })
}

/// The PID holding a flock on `file`: /proc/locks first, else the PID the
/// holder recorded.
fn holder_pid(file: &fs::File, path: &Path, is_dir: bool) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let from_kernel = fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|t| flock_holder(&t, meta.dev(), meta.ino()));
    from_kernel.or_else(|| {
        let recorded: PathBuf = if is_dir {
            fs::read_link(path.join(PIN_PID_LINK)).ok()?
        } else {
            PathBuf::from(fs::read_to_string(path).ok()?)
        };
        recorded.to_str()?.trim().parse().ok()
    })
}

/// The PID of the FLOCK on (dev, inode) in a `/proc/locks` text. Lines
/// read `1: FLOCK  ADVISORY  WRITE 1234 00:2c:17 0 EOF`, the device as
/// hex major:minor (the kernel's `new_encode_dev` split), the inode decimal.
pub fn flock_holder(proc_locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    proc_locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Blocked waiters are listed as "1: -> FLOCK ...".
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        let mut id = f[5].split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && inode == ino)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "1: OFDLCK ADVISORY  WRITE -1 fe:00:10019031 0 EOF
2: FLOCK  ADVISORY  WRITE 16509 fe:00:10019031 0 EOF
3: FLOCK  ADVISORY  WRITE 16634 00:2c:1 0 EOF
3: -> FLOCK  ADVISORY  WRITE 777 00:2c:1 0 EOF
";

    #[test]
    fn proc_locks_names_the_holder_of_a_dev_and_inode() {
        assert_eq!(flock_holder(LOCKS, libc::makedev(0, 0x2c), 1), Some(16634));
        assert_eq!(
            flock_holder(LOCKS, libc::makedev(0xfe, 0), 10019031),
            Some(16509)
        );
        assert_eq!(flock_holder(LOCKS, libc::makedev(0, 0x2c), 2), None);
        assert_eq!(flock_holder("", 1, 1), None);
    }

    #[test]
    fn a_second_lock_names_the_first_holder_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (state, pins) = (dir.path().join("state"), dir.path().join("pins"));
        let held = lock_daemon(&state, &pins).unwrap();
        let pid = std::process::id();
        assert_eq!(
            fs::read_to_string(state.join(STATE_LOCK_FILE)).unwrap(),
            format!("{pid}\n")
        );
        assert_eq!(
            fs::read_link(pins.join(PIN_PID_LINK)).unwrap(),
            PathBuf::from(pid.to_string())
        );
        // flock locks belong to the open file: a second open conflicts even
        // within one process, as a second daemon would.
        let err = lock_daemon(&dir.path().join("other"), &pins).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another berth daemon (PID {pid}) holds the pin directory {}; stop it, or give this one its own --bpffs and --state-dir",
                pins.display()
            )
        );
        let err = lock_for_reset(&state, &pins).unwrap_err();
        assert!(err.to_string().contains(&format!("(PID {pid})")), "{err}");
        drop(held);
        lock_for_reset(&state, &pins).unwrap();
    }
}
