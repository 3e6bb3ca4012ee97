//! The previous release's eBPF object, for `cargo xtask bench`: the bench
//! loads it beside the current one and measures both in the same rounds,
//! so "costs at most 10 % more per packet than before" is a measurement.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{bootstrap, run, workspace_root};

/// The release before issue 9's datapath work (source checks, fragments,
/// two-table tracking, port-clash remaps, the port gate).
pub(crate) const PREVIOUS_RELEASE: &str = "8071dfd";

/// Builds the previous release's eBPF crate from git (its source unpacked
/// under `target/previous-release/`, built the way aya-build builds ours)
/// and returns the object's path.
pub(crate) fn previous_object() -> Result<PathBuf> {
    let root = workspace_root();
    let commit = format!("{PREVIOUS_RELEASE}^{{commit}}");
    if run::output(
        Command::new("git")
            .current_dir(&root)
            .args(["cat-file", "-t", &commit]),
    )
    .is_err()
    {
        bail!("commit {PREVIOUS_RELEASE} is not in this checkout (a shallow clone?)");
    }
    let base = root.join("target/previous-release");
    let obj = base.join("target/bpfel-unknown-none/release/berth");
    // The commit is fixed, so a built object never goes stale.
    if obj.is_file() {
        return Ok(obj);
    }
    let src = base.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src)
            .with_context(|| format!("cannot remove {}", src.display()))?;
    }
    std::fs::create_dir_all(&src)?;
    run::status(Command::new("sh").current_dir(&root).args([
        "-c",
        &format!(
            "git archive {PREVIOUS_RELEASE} | tar -x -C '{}'",
            src.display()
        ),
    ]))
    .context("cannot unpack the previous release")?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&src)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "berth-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("PATH", bootstrap::path_with_bpf_linker()?)
        .env("CARGO_TARGET_DIR", base.join("target"))
        // What aya-build passes (userspace/build.rs builds ours with it).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    run::status(&mut cmd).context("cannot build the previous release's eBPF object")?;
    if !obj.is_file() {
        bail!("the build left no {}", obj.display());
    }
    Ok(obj)
}
