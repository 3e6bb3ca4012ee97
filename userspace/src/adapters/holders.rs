//! Who holds a host socket: its inode from `/proc/net/{tcp,udp}[6]`, then
//! the processes with a descriptor of it (`/proc/PID/fd/*` linking to
//! `socket:[INODE]`), each with its executable and user. What a caller's
//! `heldByDocker` is checked against.
use std::{
    collections::BTreeSet,
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{domain::model::Protocol, engine::host::Holder};

/// The inodes of the sockets `/proc/net` text lists at `local` (TCP:
/// listening ones only).
pub fn socket_inodes(text: &str, protocol: Protocol, local: SocketAddr) -> BTreeSet<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if protocol == Protocol::Tcp && *state != super::host::TCP_LISTEN {
                return None;
            }
            let listed = super::host::parse_proc_net_listeners(
                &format!("header\n0: {addr} 0 {state}"),
                protocol,
            );
            (listed.first() == Some(&local))
                .then(|| inode.parse::<u64>().ok())
                .flatten()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

/// The processes under `proc_root` holding a socket of `inodes`; `own`:
/// this daemon's PID and executable.
pub fn holders_in(proc_root: &Path, inodes: &BTreeSet<u64>, own: (u32, &Path)) -> Vec<Holder> {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let proc = entry.path();
        // Processes come and go, and some fds are unreadable: skip those.
        let Ok(fds) = fs::read_dir(proc.join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).ok().is_some_and(|target| {
                let t = target.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| inodes.contains(&n))
            })
        });
        if !holds {
            continue;
        }
        let exe = fs::read_link(proc.join("exe")).unwrap_or_default();
        let uid = fs::read_to_string(proc.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())
            })
            .unwrap_or(u32::MAX);
        out.push(Holder {
            pid,
            uid,
            berth_proxy: pid != own.0 && !exe.as_os_str().is_empty() && exe == own.1,
            exe: if exe.as_os_str().is_empty() {
                "?".into()
            } else {
                exe.to_string_lossy().into_owned()
            },
        });
    }
    out.sort_by_key(|h| h.pid);
    out
}

/// [`holders_in`] the real `/proc` for `local`, read in the calling
/// thread's network namespace.
pub fn holders(net_dir: &Path, protocol: Protocol, local: SocketAddr) -> io::Result<Vec<Holder>> {
    let mut inodes = BTreeSet::new();
    for file in match protocol {
        Protocol::Tcp => ["tcp", "tcp6"],
        Protocol::Udp => ["udp", "udp6"],
    } {
        match fs::read_to_string(net_dir.join(file)) {
            Ok(text) => inodes.extend(socket_inodes(&text, protocol, local)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && file.ends_with('6') => {}
            Err(e) => return Err(e),
        }
    }
    let own_exe = fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("/"));
    Ok(holders_in(
        Path::new("/proc"),
        &inodes,
        (std::process::id(), &own_exe),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 100 0 0 10 0
   2: 0200A8C0:1F90 0100A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 557 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn the_inode_of_a_listening_socket_at_an_address_is_found() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            socket_inodes(TCP, Protocol::Tcp, at("0.0.0.0:8080")),
            BTreeSet::from([555])
        );
        assert_eq!(
            socket_inodes(TCP, Protocol::Tcp, at("127.0.0.1:8081")),
            BTreeSet::from([556])
        );
        // An established connection on :8080 is no listener.
        assert!(socket_inodes(TCP, Protocol::Tcp, at("192.168.0.2:8080")).is_empty());
        assert!(socket_inodes("junk\nnot a line", Protocol::Tcp, at("0.0.0.0:8080")).is_empty());
    }

    fn process(root: &Path, pid: u32, exe: &str, uid: u32, sockets: &[u64]) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).unwrap();
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        fs::write(
            dir.join("status"),
            format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
        for (i, s) in sockets.iter().enumerate() {
            std::os::unix::fs::symlink(format!("socket:[{s}]"), dir.join(format!("fd/{}", i + 3)))
                .unwrap();
        }
    }

    #[test]
    fn holders_are_the_processes_with_the_socket_and_only_dockers_pass() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        process(r, 10, "/usr/sbin/dockerd", 0, &[555]);
        process(r, 11, "/usr/bin/python3", 0, &[556]);
        process(r, 12, "/tmp/dockerd", 1000, &[557]);
        process(r, 13, "/usr/bin/berth", 0, &[558]);
        process(r, 14, "/usr/bin/berth", 0, &[559]);
        process(r, 15, "/usr/libexec/docker/docker-proxy", 0, &[560, 561]);
        fs::create_dir_all(r.join("self")).unwrap();
        let own = (14, Path::new("/usr/bin/berth"));
        let of = |inode: u64| holders_in(r, &BTreeSet::from([inode]), own);
        let dockers = |inode: u64| of(inode).iter().any(Holder::is_dockers);
        assert_eq!(
            of(555),
            [Holder {
                pid: 10,
                uid: 0,
                exe: "/usr/sbin/dockerd".into(),
                berth_proxy: false
            }]
        );
        assert!(dockers(555), "dockerd");
        assert!(!dockers(556), "another root process");
        assert!(!dockers(557), "a user's binary named dockerd");
        assert!(dockers(558), "berth-docker-proxy with a handed-over socket");
        assert!(!dockers(559), "the daemon's own socket (its metrics, say)");
        assert!(dockers(561), "docker-proxy");
        assert!(of(999).is_empty());
        assert_eq!(of(556)[0].to_string(), "pid 11 (/usr/bin/python3, uid 0)");
    }
}
