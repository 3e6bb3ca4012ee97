//! This tree's eBPF object built without its counting (the ebpf crate's
//! `bench-uncounted` feature: per-binding and per-flow counters), for `cargo
//! xtask bench`: the bench measures it beside the real object in the same
//! rounds, so the counting's cost per packet (issue 14: at most 5 ns on
//! the ingress hit path) is a measurement, not an estimate.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{bootstrap, run, workspace_root};

/// Builds `berth-ebpf` with `bench-uncounted` in its own target directory
/// (`target/uncounted/`, so the real object is never replaced) the way
/// aya-build builds ours, and returns the object's path.
pub(crate) fn uncounted_object() -> Result<PathBuf> {
    let root = workspace_root();
    let target = root.join("target/uncounted");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root.join("ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "berth-ebpf",
            "--bins",
            "--release",
            "--features",
            "bench-uncounted",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("PATH", bootstrap::path_with_bpf_linker()?)
        .env("CARGO_TARGET_DIR", &target)
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
    run::status(&mut cmd).context("cannot build the eBPF object without counters")?;
    let obj = target.join("bpfel-unknown-none/release/berth");
    if !obj.is_file() {
        bail!("the build left no {}", obj.display());
    }
    Ok(obj)
}
