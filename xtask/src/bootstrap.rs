//! Idempotent machine setup: everything `cargo xtask build|test` needs that a
//! fresh Debian 12 machine with rustup (stable + nightly) does not have.
//!
//! Each step checks first and prints what it found, so a second run does no
//! work. The on-disk layout under `~/.cache/berth/` is relied on elsewhere
//! (the installed bpf-linker has `llvm-<major>/lib` as its RUNPATH):
//!
//! ```text
//! ~/.cache/berth/llvm-<major>/lib/libLLVM.so            -> <nightly sysroot>/lib/libLLVM…
//! ~/.cache/berth/llvm-<major>/lib/<libLLVM file name>   -> <nightly sysroot>/lib/libLLVM…
//! ~/.cache/berth/bpf-linker-llvm<major>/bin/bpf-linker
//! ```
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::run::{self, is_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages the integration tests and benchmarks call, and the
/// clients the demo runs (`curl`, and `nc -u` from netcat-openbsd: busybox's
/// nc has no UDP).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "iperf3",
    "ethtool",
    "curl",
    "netcat-openbsd",
    // The reference CNI plugins (bridge, host-local, portmap) that
    // tests/tests/e2e/cni.rs drives berth-cni beside.
    "containernetworking-plugins",
];
/// Docker's engine and userland proxy (`docker.io`: the bench runs
/// `/usr/sbin/docker-proxy`, `tests/e2e/docker_proxy.rs` a dockerd inside its
/// own namespace) and the busybox its image is made of. Installed without
/// starting any service (see [`ensure_docker_packages`]). `prometheus`
/// ships `promtool`, which `tests/e2e/metrics.rs` checks `/metrics` with;
/// it is installed here because its package would start a Prometheus
/// server too.
const DOCKER_PACKAGES: &[&str] = &["docker.io", "busybox-static", "prometheus"];
/// (toolchain, rustup component, cargo subcommand that proves it is there);
/// `None` is the toolchain `cargo` runs by default.
const LINT_COMPONENTS: &[(Option<&str>, &str, &str)] = &[
    (None, "rustfmt", "fmt"),
    (None, "clippy", "clippy"),
    (Some("nightly"), "clippy", "clippy"),
];
/// Debian's hook that asks invoke-rc.d / deb-systemd-invoke whether a
/// package may start its services; exit status 101 means "no".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Runs every setup step; cheap when everything is already in place.
pub(crate) fn bootstrap() -> Result<()> {
    toolchain()?;
    ensure_debian_packages()?;
    ensure_docker_packages()?;
    Ok(())
}

/// The Rust side only (no root needed): what building and linting berth
/// needs beyond rustup's stable and nightly toolchains.
pub(crate) fn toolchain() -> Result<()> {
    let nightly = Nightly::probe()?;
    println!(
        "nightly toolchain: {} (LLVM {})",
        nightly.release, nightly.llvm_major
    );
    ensure_rust_src(&nightly)?;
    ensure_bpf_linker(&nightly)?;
    ensure_lint_components()?;
    Ok(())
}

/// rustfmt and clippy for the default toolchain (userspace crates) and
/// clippy for the nightly (the eBPF crate), for `cargo xtask lint`. A
/// minimal rustup profile installs neither.
pub(crate) fn ensure_lint_components() -> Result<()> {
    for (toolchain, component, probe) in LINT_COMPONENTS {
        let mut cmd = Command::new("cargo");
        if let Some(t) = toolchain {
            // The outer cargo's toolchain choice must not override `+t`.
            cmd.arg(format!("+{t}")).env_remove("RUSTUP_TOOLCHAIN");
        }
        cmd.args([probe, "--version"]);
        let which = toolchain.unwrap_or("default");
        if run::output(&mut cmd).is_ok() {
            println!("{component} ({which} toolchain): present");
            continue;
        }
        println!("{component} ({which} toolchain): missing, installing");
        let mut add = Command::new("rustup");
        add.args(["component", "add", component]);
        if let Some(t) = toolchain {
            add.args(["--toolchain", t]);
        }
        run::status(&mut add)
            .with_context(|| format!("cannot install {component} for the {which} toolchain"))?;
    }
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` only (not part of [`bootstrap`]):
/// installed once with cargo, from source.
pub(crate) fn ensure_cargo_fuzz() -> Result<()> {
    Nightly::probe()?;
    let present = || run::output(Command::new("cargo").args(["fuzz", "--version"])).ok();
    if let Some(v) = present() {
        println!("cargo-fuzz: present ({v})");
        return Ok(());
    }
    println!("cargo-fuzz: installing {CARGO_FUZZ_VERSION} (a minute or two)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run::status(Command::new(cargo).args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
    .context("cannot install cargo-fuzz")?;
    if present().is_none() {
        bail!("cargo-fuzz was installed but `cargo fuzz --version` does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// The directory holding the `bpf-linker` that matches the nightly's LLVM.
/// `build` and `test` put it first on PATH.
pub(crate) fn bpf_linker_bin_dir() -> Result<PathBuf> {
    let nightly = Nightly::probe()?;
    Ok(linker_root(nightly.llvm_major)?.join("bin"))
}

/// PATH with the bpf-linker directory in front.
pub(crate) fn path_with_bpf_linker() -> Result<OsString> {
    let dir = bpf_linker_bin_dir()?;
    let mut parts = vec![dir];
    if let Some(old) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(parts).context("cannot build PATH")
}

struct Nightly {
    release: String,
    llvm_major: u32,
    sysroot: PathBuf,
}

impl Nightly {
    fn probe() -> Result<Self> {
        let vv = run::output(Command::new("rustc").args(["+nightly", "-vV"])).context(
            "the nightly toolchain is needed for the eBPF crate (rustup toolchain install nightly)",
        )?;
        let release = field(&vv, "release:").unwrap_or("nightly").to_string();
        let llvm = field(&vv, "LLVM version:")
            .ok_or_else(|| anyhow!("`rustc +nightly -vV` prints no LLVM version"))?;
        let llvm_major = parse_llvm_major(llvm)?;
        let sysroot = PathBuf::from(run::output(
            Command::new("rustc").args(["+nightly", "--print", "sysroot"]),
        )?);
        Ok(Self {
            release,
            llvm_major,
            sysroot,
        })
    }
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

/// "22.1.4" → 22.
fn parse_llvm_major(version: &str) -> Result<u32> {
    version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| anyhow!("cannot read an LLVM major version from {version:?}"))
}

fn ensure_rust_src(nightly: &Nightly) -> Result<()> {
    let src = nightly.sysroot.join("lib/rustlib/src");
    if src.is_dir() {
        println!("rust-src: present");
        return Ok(());
    }
    println!("rust-src: missing, installing");
    let add = || {
        run::status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
    };
    // The download times out now and then on these machines; once more
    // usually works.
    if let Err(first) = add() {
        println!("rust-src: first attempt failed ({first:#}), retrying");
        add().context("cannot install rust-src for the nightly toolchain")?;
    }
    if !src.is_dir() {
        bail!("rust-src installed but {} is still missing", src.display());
    }
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join(".cache/berth"))
}

fn linker_root(llvm_major: u32) -> Result<PathBuf> {
    Ok(cache_dir()?.join(format!("bpf-linker-llvm{llvm_major}")))
}

fn home_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    // CI may run without HOME; fall back to the password database.
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy
    // the string out before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_dir.is_null() {
            let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
            return Ok(PathBuf::from(dir.to_string_lossy().into_owned()));
        }
    }
    bail!("HOME is not set and the password database has no home directory for this user")
}

/// The libLLVM shared object the nightly ships, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly`. The sysroot may also hold a tiny
/// linker script (`libLLVM-22-rust-….so`) pointing at it; only the ELF file
/// will do.
fn find_libllvm(nightly: &Nightly) -> Result<PathBuf> {
    let lib = nightly.sysroot.join("lib");
    let mut candidates: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .filter(|p| is_elf(p))
        .collect();
    candidates.sort();
    let major = nightly.llvm_major;
    let matches_major = |p: &PathBuf| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.contains(&format!(".so.{major}")) || name.contains(&format!("-{major}"))
    };
    candidates
        .iter()
        .find(|p| matches_major(p))
        .or(candidates.first())
        .cloned()
        .ok_or_else(|| anyhow!("no libLLVM shared object in {}", lib.display()))
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<()> {
    let major = nightly.llvm_major;
    let libllvm = find_libllvm(nightly)?;
    let prefix = cache_dir()?.join(format!("llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let file_name = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("odd libLLVM path {}", libllvm.display()))?;
    let mut changed = ensure_symlink(&prefix_lib.join("libLLVM.so"), &libllvm)?;
    changed |= ensure_symlink(&prefix_lib.join(file_name), &libllvm)?;
    println!(
        "llvm prefix: {} -> {} ({})",
        prefix.display(),
        libllvm.display(),
        if changed { "updated" } else { "present" }
    );

    let root = linker_root(major)?;
    let linker = root.join("bin/bpf-linker");
    if linker_version_ok(&linker) {
        println!(
            "bpf-linker: {BPF_LINKER_VERSION} present at {}",
            linker.display()
        );
        return Ok(());
    }
    println!(
        "bpf-linker: installing {BPF_LINKER_VERSION} for LLVM {major} into {} (a minute or two)",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run::status(
        Command::new(cargo)
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(&root),
    )
    .context("cannot install bpf-linker")?;
    if !linker_version_ok(&linker) {
        bail!(
            "{} was installed but does not report version {BPF_LINKER_VERSION}",
            linker.display()
        );
    }
    Ok(())
}

fn linker_version_ok(linker: &Path) -> bool {
    run::output(Command::new(linker).arg("--version"))
        .map(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// Makes `link` a symlink to `target`; returns whether anything changed.
fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    if fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(false);
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot create symlink {}", link.display()))?;
    Ok(true)
}

fn package_installed(name: &str) -> bool {
    run::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .map(|s| s == "install ok installed")
        .unwrap_or(false)
}

fn ensure_debian_packages() -> Result<()> {
    ensure_packages(DEBIAN_PACKAGES, &[])
}

/// Docker's packages, installed without recommends and without
/// letting them start any service: `docker.io` would otherwise start
/// dockerd (and containerd), which rewrites the root namespace's iptables
/// and creates a docker0 there. A `policy-rc.d` that refuses every start is
/// put in place for the install if the machine has none, and removed after.
pub(crate) fn ensure_docker_packages() -> Result<()> {
    let missing = DOCKER_PACKAGES.iter().any(|p| !package_installed(p));
    let ours = missing && is_root() && !Path::new(POLICY_RC_D).exists();
    if ours {
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask bootstrap: no service may start while docker.io is installed.\nexit 101\n",
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))?;
    }
    let r = ensure_packages(DOCKER_PACKAGES, &["--no-install-recommends"]);
    if ours {
        let _ = fs::remove_file(POLICY_RC_D);
    }
    r
}

fn ensure_packages(packages: &[&str], apt_args: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        println!("debian packages: present ({})", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run `cargo xtask bootstrap` as root",
            missing.join(" ")
        );
    }
    println!("debian packages: installing {}", missing.join(" "));
    run::status(Command::new("apt-get").arg("update")).context("apt-get update failed")?;
    run::status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(apt_args)
            .args(&missing),
    )
    .context("cannot install Debian packages")?;
    let still: Vec<&str> = missing
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_first_component() {
        assert_eq!(parse_llvm_major("22.1.4").unwrap(), 22);
        assert_eq!(parse_llvm_major("19.1.0-rust-1.84").unwrap(), 19);
        parse_llvm_major("x.y").unwrap_err();
    }

    #[test]
    fn fields_are_read_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(field(vv, "LLVM version:"), Some("22.1.4"));
        assert_eq!(field(vv, "release:"), Some("1.97.0-nightly"));
        assert_eq!(field(vv, "commit-hash:"), None);
    }
}
