//! A real `dockerd` (Debian's docker.io) in a test's host namespace.
//!
//! Only the network namespace is entered (`nsenter --net`): `ip netns exec`
//! remounts /sys and dockerd then finds no cgroups. Its data root, exec
//! root, API socket and pid file are in a temp dir of its own; it uses the
//! `vfs` storage driver so no overlay mount outlives it. Dropping the guard
//! removes its containers, stops it by PID, then kills by PID whatever
//! still names its temp dir (its containerd and shims) and detaches mounts
//! left under that dir.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, names::TempDir, process::Child, NetNs, Topology, TopologyOptions};

/// How long dockerd may take to answer `docker version`.
const START_TIMEOUT: Duration = Duration::from_mins(1);
const DOCKER_CLI_TIMEOUT: Duration = Duration::from_mins(1);

/// dockerd's bridge in the tests (its `-b`), 172.18.0.1/16 beside the
/// topology's docker0, so the daemon under test serves only dockerd's
/// containers.
pub const DOCKER_BRIDGE: &str = "bdk0";
/// The image [`Dockerd::import_httpd_image`] makes.
pub const HTTPD_IMAGE: &str = "berth-busybox:test";
/// busybox httpd's CGI at `/cgi-bin/ip`: the address the container saw the
/// client at (`[::ffff:192.0.2.2]` where httpd listens on `::`).
pub const REMOTE_ADDR_CGI: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n";

/// The standard topology made ready for a real dockerd: without Docker's
/// iptables rules (dockerd writes its own) and with [`DOCKER_BRIDGE`] up in
/// the host namespace.
pub fn topology_for_dockerd() -> Result<Topology> {
    let topo = Topology::build_with(TopologyOptions {
        docker_iptables: false,
        ..Default::default()
    })?;
    let host = &topo.host.ns;
    host.ip(["link", "add", DOCKER_BRIDGE, "type", "bridge"])?;
    host.ip(["addr", "add", "172.18.0.1/16", "dev", DOCKER_BRIDGE])?;
    host.ip(["link", "set", DOCKER_BRIDGE, "up"])?;
    Ok(topo)
}

/// [`DOCKER_BRIDGE`]'s IPv6 subnet on [`topology_for_dockerd6`].
pub const DOCKER_BRIDGE_CIDR6: &str = "fd00:18::/64";

/// [`topology_for_dockerd`] on a dual-stack topology, with
/// `fd00:18::1/64` on [`DOCKER_BRIDGE`] too, for `dockerd --ipv6
/// --fixed-cidr-v6` [`DOCKER_BRIDGE_CIDR6`].
pub fn topology_for_dockerd6() -> Result<Topology> {
    let topo = Topology::build_with(TopologyOptions {
        docker_iptables: false,
        ..TopologyOptions::dual_stack()
    })?;
    let host = &topo.host.ns;
    host.ip(["link", "add", DOCKER_BRIDGE, "type", "bridge"])?;
    host.ip(["addr", "add", "172.18.0.1/16", "dev", DOCKER_BRIDGE])?;
    host.ip([
        "-6",
        "addr",
        "add",
        "fd00:18::1/64",
        "dev",
        DOCKER_BRIDGE,
        "nodad",
    ])?;
    host.ip(["link", "set", DOCKER_BRIDGE, "up"])?;
    Ok(topo)
}

/// What dockerd is started with besides its own directories.
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// `-b`: an existing bridge in the namespace.
    pub bridge: String,
    /// `--userland-proxy-path`.
    pub userland_proxy: Option<PathBuf>,
    /// Extra environment (`BERTH_SOCKET` for berth-docker-proxy).
    pub env: Vec<(String, String)>,
    /// `--userland-proxy=false` (berth's Docker events mode).
    pub no_userland_proxy: bool,
    /// `--ipv6 --fixed-cidr-v6 CIDR`: containers get IPv6 addresses from
    /// CIDR (see [`topology_for_dockerd6`]).
    pub ipv6_cidr: Option<String>,
}

#[derive(Debug)]
pub struct Dockerd {
    netns: PathBuf,
    opts: DockerdOptions,
    socket: PathBuf,
    child: Option<Child>,
    starts: u32,
    dir: TempDir,
}

impl Dockerd {
    pub fn start(ns: &NetNs, opts: DockerdOptions) -> Result<Self> {
        if !Path::new("/usr/sbin/dockerd").is_file() {
            bail!("dockerd is not installed (docker.io; run `cargo xtask bootstrap`)");
        }
        let dir = TempDir::new("dockerd")?;
        let mut d = Self {
            netns: ns.path().to_path_buf(),
            socket: dir.path().join("docker.sock"),
            opts,
            child: None,
            starts: 0,
            dir,
        };
        d.start_again()?;
        Ok(d)
    }

    /// Starts dockerd again on the same directories (after a stop or kill).
    pub fn start_again(&mut self) -> Result<()> {
        self.starts += 1;
        let d = self.dir.path();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg("/usr/sbin/dockerd")
            .args(["--data-root", &d.join("data").display().to_string()])
            .args(["--exec-root", &d.join("exec").display().to_string()])
            .args(["-H", &format!("unix://{}", self.socket.display())])
            .args(["--pidfile", &d.join("docker.pid").display().to_string()])
            .args(["--storage-driver", "vfs", "-b", &self.opts.bridge]);
        if let Some(p) = &self.opts.userland_proxy {
            c.arg("--userland-proxy-path").arg(p);
        }
        if self.opts.no_userland_proxy {
            c.arg("--userland-proxy=false");
        }
        if let Some(cidr) = &self.opts.ipv6_cidr {
            c.args(["--ipv6", "--fixed-cidr-v6", cidr]);
        }
        for (k, v) in &self.opts.env {
            c.env(k, v);
        }
        let log = d.join(format!("dockerd.{}.log", self.starts));
        let mut child = Child::spawn_logging_to(c, log.clone(), log.clone())?;
        child.set_stop_timeout(Duration::from_secs(30));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self
                .docker(["version", "--format", "{{.Server.Version}}"])?
                .status
                .success()
            {
                return Ok(());
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "dockerd exited ({st}):\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within {START_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its API socket (`-H unix://…`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// SIGTERM (dockerd stops its containers), wait.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.stop()?;
        }
        Ok(())
    }

    /// SIGKILL: its containers keep running under their shims; its
    /// containerd gets its own parent-death signal.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
        }
        self.forget_dead_containerd()
    }

    /// Waits for the managed containerd to die with dockerd. An init that
    /// does not reap orphans (PID 1 of some sandboxes) leaves it a zombie,
    /// which the next dockerd takes for a live containerd and waits on
    /// forever; its pid file goes then, as a reaping init would allow.
    fn forget_dead_containerd(&self) -> Result<()> {
        let pidfile = self.dir.path().join("exec/containerd/containerd.pid");
        let Ok(pid) = fs::read_to_string(&pidfile) else {
            return Ok(());
        };
        let pid = pid.trim();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()?.to_string()));
            match state.as_deref() {
                None => return Ok(()),
                Some("Z") => {
                    let _ = fs::remove_file(&pidfile);
                    return Ok(());
                }
                Some(_) if Instant::now() > deadline => {
                    bail!("containerd (pid {pid}) outlived dockerd by 10 s")
                }
                Some(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The docker CLI against this daemon; the output whatever the status.
    pub fn docker<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        cmd::output_with_timeout(&mut c, DOCKER_CLI_TIMEOUT)
    }

    /// `docker run --expose 80 -P` of [`HTTPD_IMAGE`]'s httpd as `name`: the
    /// IPv4 host port dockerd picked for container port 80.
    pub fn run_httpd_exposed(&self, name: &str) -> Result<u16> {
        self.docker_ok([
            "run",
            "-d",
            "--stop-timeout",
            "1",
            "--name",
            name,
            "--expose",
            "80",
            "-P",
            HTTPD_IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])?;
        let out = self.docker_ok(["port", name, "80/tcp"])?;
        out.lines()
            .find_map(|l| l.strip_prefix("0.0.0.0:"))
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("no IPv4 host port in `docker port {name}`: {out:?}"))
    }

    /// Like [`Dockerd::docker`]; a failure is an error quoting stderr.
    pub fn docker_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.docker(&args)?;
        if !out.status.success() {
            bail!(
                "`docker {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Imports a busybox image named `name`: Debian's busybox-static with
    /// `applets` linked, plus `files` (path in the image, content, mode).
    pub fn import_busybox(
        &self,
        name: &str,
        applets: &[&str],
        files: &[(&str, &str, u32)],
    ) -> Result<()> {
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            bail!("/bin/busybox is missing (busybox-static; run `cargo xtask bootstrap`)");
        }
        let root = self.dir.path().join("image");
        fs::create_dir_all(root.join("bin"))?;
        fs::copy(busybox, root.join("bin/busybox")).context("copy busybox")?;
        for a in applets {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
        for (path, content, mode) in files {
            let p = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().context("a file path")?)?;
            fs::write(&p, content)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
        }
        let tar = self.dir.path().join("image.tar");
        cmd::run(
            "tar",
            [
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ],
        )?;
        self.docker_ok(["import", &tar.display().to_string(), name])?;
        Ok(())
    }

    /// Imports [`HTTPD_IMAGE`]: busybox with `applets` (httpd among them),
    /// `/www/index.html` and the [`REMOTE_ADDR_CGI`].
    pub fn import_httpd_image(&self, applets: &[&str]) -> Result<()> {
        self.import_busybox(
            HTTPD_IMAGE,
            applets,
            &[
                ("/www/index.html", "hello\n", 0o644),
                ("/www/cgi-bin/ip", REMOTE_ADDR_CGI, 0o755),
            ],
        )
    }

    /// Every dockerd log so far.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                fs::read_to_string(self.dir.path().join(format!("dockerd.{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn cleanup(&mut self) {
        if self.child.is_some() {
            if let Ok(ids) = self.docker_ok(["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = self.docker([&["rm", "-f"][..], &ids].concat());
                }
            }
            let _ = self.stop();
        }
        // containerd and its shims name our directory on their command lines.
        let dir = self.dir.path().display().to_string();
        for pid in pids_naming(&dir) {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(200));
        for mount in mounts_under(self.dir.path()).into_iter().rev() {
            let c = std::ffi::CString::new(mount.into_os_string().into_encoded_bytes());
            if let Ok(c) = c {
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- dockerd logs ---\n{}",
                crate::process::tail(&self.logs(), 60)
            );
        }
        self.cleanup();
    }
}

/// PIDs (never our own) whose command line contains `needle`.
fn pids_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Mount points at or below `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(dir))
        .collect()
}
