//! `cargo xtask lint`: formatting and clippy over the whole workspace, with
//! the lint tables of the root `Cargo.toml` and every warning an error.
//!
//! The eBPF crate is linted for its own target the way aya lints its eBPF
//! crates (nightly, `bpfel-unknown-none`, `-Z build-std=core`): on the host
//! it is not a crate at all (`#![no_std]`, `#![no_main]`, BPF helpers).
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{bootstrap, cargo, run};

/// The eBPF crate and the target it is checked for.
const EBPF_PACKAGE: &str = "berth-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";

pub(crate) fn lint() -> Result<()> {
    bootstrap::ensure_lint_components()?;
    run::status(cargo()?.args(["fmt", "--all", "--check"]))
        .context("formatting differs from rustfmt's; run `cargo fmt --all`")?;
    // The eBPF crate is excluded here (it has no host build) and linted below.
    run::status(cargo()?.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--all-targets",
        "--",
        "--deny",
        "warnings",
    ]))
    .context("clippy found problems in the userspace crates")?;
    run::status(nightly_cargo()?.args([
        "+nightly",
        "clippy",
        "--package",
        EBPF_PACKAGE,
        "--target",
        EBPF_TARGET,
        "-Z",
        "build-std=core",
        "--",
        "--deny",
        "warnings",
    ]))
    .context("clippy found problems in the eBPF crate")?;
    println!("lint: rustfmt and clippy found nothing");
    Ok(())
}

/// `cargo` through rustup's proxy (so `+nightly` works), free of the
/// variables the outer stable cargo set for this process.
fn nightly_cargo() -> Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(crate::workspace_root())
        .env("PATH", bootstrap::path_with_bpf_linker()?)
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    Ok(cmd)
}
