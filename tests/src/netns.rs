//! Named network namespaces (`ip netns`), deleted when the guard drops.
use std::{
    ffi::OsStr,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::{
    cmd,
    names::{self, NETNS_PREFIX},
    process::Child,
};

/// A network namespace `berth-<pid>-<n>-<role>` with `lo` up. Dropping the
/// guard deletes it (also while unwinding from a panic). Processes still
/// running inside keep the kernel object alive but it loses its name, so
/// drop [`Child`] guards before the namespace they run in.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

/// What `ip link` says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// `UP`, `DOWN`, `UNKNOWN`, …
    pub operstate: String,
    /// The bridge (or other master) the interface is enslaved to.
    pub master: Option<String>,
}

impl NetNs {
    /// Creates the namespace and brings `lo` up. `role` (letters, digits,
    /// `_`, `.`) ends the name so `ip netns list` stays readable.
    pub fn new(role: &str) -> Result<Self> {
        if !crate::is_root() {
            bail!("creating network namespaces needs root");
        }
        names::reap_stale();
        let name = names::unique(NETNS_PREFIX, role)?;
        cmd::run("ip", ["netns", "add", &name])?;
        let ns = Self {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the file `setns` opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number (what `/proc/<pid>/ns/net` links to).
    pub fn inode(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)
            .with_context(|| format!("namespace {} is gone", self.name))?
            .ino())
    }

    /// Runs `f` on a fresh thread that has joined this namespace and returns
    /// its result; the calling thread stays where it is. Sockets created in
    /// `f` belong to this namespace for their whole life, and threads spawned
    /// in `f` start in it, so servers can be started here and used from
    /// anywhere. A panic in `f` is re-raised on the caller. Note that `/sys`
    /// still shows the caller's mount of sysfs; ask `ip -n` instead.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        match self.try_run(f) {
            Ok(r) => r,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`NetNs::run`], but failing to enter the namespace is an error
    /// instead of a panic.
    pub fn try_run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let name = &self.name;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(s, move || -> Result<R> {
                    enter(&file).with_context(|| format!("cannot enter namespace {name}"))?;
                    Ok(f())
                })
                .context("cannot spawn a thread")?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// `ip netns exec <name> <program>` as a [`Command`] to customise.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(&self.name).arg(program);
        c
    }

    /// Runs `program args…` inside the namespace and returns its stdout; a
    /// non-zero exit is an error quoting its stderr.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        cmd::run_command(&mut c, None)
    }

    /// Like [`NetNs::exec`], feeding `stdin` to the program.
    pub fn exec_with_stdin<I, S>(&self, program: &str, args: I, stdin: &str) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        cmd::run_command(&mut c, Some(stdin))
    }

    /// Runs `program args…` inside the namespace and returns its output
    /// whatever the exit status.
    pub fn exec_output<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        cmd::output(&mut c, None)
    }

    /// Starts `program args…` inside the namespace. The returned guard
    /// stops it (SIGTERM, then SIGKILL) on drop. `ip netns exec` execs the
    /// program, so the guard's pid is the program's; this returns once the
    /// process has joined the namespace (or exited).
    pub fn spawn<I, S>(&self, program: &str, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        let mut child = Child::spawn(c)?;
        self.wait_until_inside(&mut child)?;
        Ok(child)
    }

    /// Waits (briefly) until `child` runs in this namespace, so its pid,
    /// sockets and `/proc` entries are the program's, not `ip`'s.
    pub fn wait_until_inside(&self, child: &mut Child) -> Result<()> {
        let want = format!("net:[{}]", self.inode()?);
        let link = format!("/proc/{}/ns/net", child.pid());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if std::fs::read_link(&link).is_ok_and(|l| l.to_string_lossy() == want) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("`{}` did not enter namespace {}", child.what(), self.name);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// `ip -n <name> args…` (cheaper than `exec`: no mount namespace).
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(args);
        cmd::run_command(&mut c, None)
    }

    /// Index, MAC, MTU, state and master of interface `ifname`.
    pub fn link(&self, ifname: &str) -> Result<LinkInfo> {
        let out = self.ip(["-j", "link", "show", "dev", ifname])?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("cannot parse `ip -j link` output: {out}"))?;
        let l = v
            .get(0)
            .ok_or_else(|| anyhow!("no link {ifname} in {}", self.name))?;
        let str_field = |k: &str| l.get(k).and_then(Value::as_str).map(str::to_string);
        let num_field = |k: &str| l.get(k).and_then(Value::as_u64);
        Ok(LinkInfo {
            ifindex: num_field("ifindex").context("ip link: no ifindex")? as u32,
            name: str_field("ifname").unwrap_or_else(|| ifname.to_string()),
            mac: parse_mac(&str_field("address").unwrap_or_default())?,
            mtu: num_field("mtu").unwrap_or(0) as u32,
            operstate: str_field("operstate").unwrap_or_default(),
            master: str_field("master"),
        })
    }

    /// The IPv4 addresses (with prefix length) on `ifname`.
    pub fn ipv4_addrs(&self, ifname: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        let out = self.ip(["-j", "-4", "addr", "show", "dev", ifname])?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("cannot parse `ip -j addr` output: {out}"))?;
        let mut addrs = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link
                .get("addr_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = a.get("local").and_then(Value::as_str).unwrap_or_default();
                let len = a.get("prefixlen").and_then(Value::as_u64).unwrap_or(32);
                addrs.push((ip.parse().context("ip addr: bad address")?, len as u8));
            }
        }
        Ok(addrs)
    }

    /// The global-scope IPv6 addresses (with prefix length) on `ifname`
    /// (link-local ones left out: every link has its own).
    pub fn ipv6_addrs(&self, ifname: &str) -> Result<Vec<(Ipv6Addr, u8)>> {
        let out = self.ip(["-j", "-6", "addr", "show", "dev", ifname, "scope", "global"])?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("cannot parse `ip -j addr` output: {out}"))?;
        let mut addrs = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link
                .get("addr_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // `ip -j` lists filtered-out addresses as empty objects.
                let Some(ip) = a.get("local").and_then(Value::as_str) else {
                    continue;
                };
                let len = a.get("prefixlen").and_then(Value::as_u64).unwrap_or(128);
                addrs.push((ip.parse().context("ip addr: bad address")?, len as u8));
            }
        }
        Ok(addrs)
    }

    /// Reads a sysctl of this namespace, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        // One read from offset 0: some sysctls (ip_local_reserved_ports)
        // answer end-of-file to any read that does not start at 0, so a
        // buffered read_to_string would cut long values short.
        self.run(|| -> std::io::Result<String> {
            use std::io::Read as _;
            let mut buf = vec![0u8; 256 << 10];
            let n = File::open(&path)?.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .map(|s| s.trim().to_string())
        .with_context(|| format!("cannot read {key} in {}", self.name))
    }

    /// Writes a sysctl of this namespace only (`/proc/sys/net` resolves
    /// against the calling thread's network namespace).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.run(|| std::fs::write(&path, value))
            .with_context(|| format!("cannot set {key}={value} in {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = cmd::run("ip", ["netns", "del", &self.name]) {
            eprintln!("berth-integration: {e:#}");
        }
    }
}

/// `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`. Keys whose
/// parts contain dots (interface names like `eth0.1`) can be given with
/// slashes instead: `net/ipv4/conf/eth0.1/rp_filter`.
fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(rel)
}

/// Moves the calling thread into the namespace behind `file`.
fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace fd; it only changes this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The inode of the calling thread's network namespace.
pub fn current_netns_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("cannot stat /proc/thread-self/ns/net")?
        .ino())
}

/// "aa:bb:cc:dd:ee:ff" → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {s:?}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC address: {s:?}"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]
        );
        parse_mac("02:42:ac").unwrap_err();
        parse_mac("zz:42:ac:11:00:02").unwrap_err();
    }

    #[test]
    fn sysctl_keys_map_to_proc() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.1/rp_filter")
        );
    }
}
