//! Keeping a published port from outliving the processes that own it.
//!
//! - dockerd dies: `PR_SET_PDEATHSIG` turns that into SIGTERM, which
//!   unpublishes like a stop. dockerd's Go runtime sets it too, and checks
//!   for a parent gone before exec; this covers the start of `main` and
//!   engines that do not set it.
//! - The proxy itself is killed (SIGKILL, the OOM killer): a forked child,
//!   the unpublisher, has the proxy as its parent and gets SIGTERM when it
//!   dies; it then removes the mapping over a blocking socket and exits. A
//!   proxy that stops normally SIGKILLs its unpublisher first, so only one
//!   of them ever removes the mapping (never a later proxy's).
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::interfaces::api::RemoveRequest;

/// SIGTERM when the parent dies; an error when it already has.
pub(super) fn die_with_parent(ppid_at_start: libc::pid_t) -> Result<(), String> {
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
            return Err(format!(
                "prctl(PR_SET_PDEATHSIG): {}",
                std::io::Error::last_os_error()
            ));
        }
        // Reparented between exec and prctl: nobody will ever stop us.
        let now = libc::getppid();
        if now != ppid_at_start || now == 1 {
            return Err(format!(
                "the process that started this proxy (pid {ppid_at_start}) is gone"
            ));
        }
    }
    Ok(())
}

/// The forked unpublisher, until [`Unpublisher::cancel`].
pub(super) struct Unpublisher {
    pid: libc::pid_t,
}

impl Unpublisher {
    /// SIGKILL and reap: the proxy unpublishes itself.
    pub(super) fn cancel(self) {
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks the unpublisher. Call with no runtime running on this thread and
/// no other threads (the proxy's runtime is current-thread).
pub(super) fn spawn_unpublisher(
    socket: &Path,
    remove: &RemoveRequest,
) -> Result<Unpublisher, String> {
    // Everything the child needs is prepared before the fork.
    let body = serde_json::to_vec(remove).map_err(|e| e.to_string())?;
    let mut request = format!(
        "POST /v1/bindings/delete HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let socket = socket.to_path_buf();
    let proxy = unsafe { libc::getpid() };
    let mut stop: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&raw mut stop);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&raw mut stop, sig);
        }
    }
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => unsafe {
            // dockerd's status pipe belongs to the proxy alone.
            libc::close(super::STATUS_FD);
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const stop, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            if libc::getppid() == proxy {
                let mut sig = 0;
                libc::sigwait(&raw const stop, &raw mut sig);
            }
            let ok = send_blocking(&socket, &request);
            // Never return into the parent's copied state (its runtime).
            libc::_exit(i32::from(!ok))
        },
        pid => Ok(Unpublisher { pid }),
    }
}

fn send_blocking(socket: &Path, request: &[u8]) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    if s.write_all(request).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 2")
}
