//! `cargo xtask …`: machine setup, builds and test runs for berth.
mod bootstrap;
mod fuzz;
mod lint;
mod previous;
mod run;
mod summary;
mod uncounted;

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for berth")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (idempotent; apt needs root).
    Bootstrap,
    /// Build the berth binary with its embedded eBPF programs.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// `cargo xtask lint`, then every test of the workspace (needs root),
    /// and a summary.
    Test,
    /// rustfmt's check and clippy with warnings denied, over every crate
    /// (the eBPF crate for its BPF target).
    Lint,
    /// Build, then run the demo (tests crate, bin berth-demo).
    Demo {
        /// Wait for Enter before cleaning up, to repeat the printed commands
        /// by hand.
        #[arg(long)]
        pause: bool,
    },
    /// Benchmarks (needs root): berth beside the direct path, Docker's
    /// iptables and nftables DNAT, a map-based nftables DNAT and the real
    /// docker-proxy (connections/s, latency, throughput, UDP rate, CPU, at
    /// 1 and 10 000 ports), control plane, memory, datapath cost per packet,
    /// XDP vs TC on veth. Writes bench/ (`*-quick.*` with --quick).
    /// Installs Debian's docker.io for docker-proxy; dockerd is never started.
    Bench {
        /// About three minutes instead of about ten.
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma-separated (berth-bench's names:
        /// verifier, datapath, topology, veth, control, control-berth,
        /// memory, docker, ipv6).
        #[arg(long)]
        only: Option<String>,
    },
    /// Randomized run of the datapath (needs root): mutated frames through
    /// every packet program with `BPF_PROG_TEST_RUN`, checked against the NAT
    /// invariants. CI runs 20 000 per program; this runs the full size.
    FuzzDatapath {
        /// Frames per program.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Seed (decimal or 0x-hex); default a new one, printed so a failure
        /// can be replayed.
        #[arg(long)]
        seed: Option<String>,
    },
    /// cargo-fuzz runs of the userspace parsers (publish specs, ECS task
    /// definitions, API bodies). Needs nightly; installs cargo-fuzz once.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all of them).
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    match execute(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(task: Task) -> Result<()> {
    match task {
        Task::Bootstrap => bootstrap::bootstrap(),
        Task::Build { release } => {
            bootstrap::bootstrap()?;
            build(release)
        }
        Task::Test => test(),
        Task::Lint => {
            bootstrap::toolchain()?;
            lint::lint()
        }
        Task::Demo { pause } => {
            bootstrap::bootstrap()?;
            build(false)?;
            let mut cmd = cargo()?;
            cmd.args(["run", "-p", "berth-integration", "--bin", "berth-demo"]);
            if !pause {
                return run::status(&mut cmd).context("demo failed");
            }
            // run::status closes stdin; the paused demo waits for Enter on it.
            let st = cmd
                .args(["--", "--pause"])
                .status()
                .context("cannot run the demo")?;
            if !st.success() {
                bail!("demo failed ({st})");
            }
            Ok(())
        }
        Task::Bench { quick, only } => bench(quick, only.as_deref()),
        Task::FuzzDatapath { frames, seed } => fuzz::datapath(frames, seed),
        Task::Fuzz { seconds, target } => fuzz::parsers(seconds, target.as_deref()),
    }
}

fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    if !run::is_root() {
        bail!("cargo xtask bench must run as root: it loads eBPF programs and builds network namespaces");
    }
    bootstrap::bootstrap()?;
    // Release builds of the daemon and the bench; the bench finds the daemon
    // next to itself.
    run::status(cargo()?.args([
        "build",
        "--release",
        "-p",
        "berth",
        "-p",
        "berth-bench",
        "--bin",
        "berth",
        "--bin",
        "berth-docker-proxy",
        "--bin",
        "berth-bench",
    ]))
    .context("build failed")?;
    let mut cmd = Command::new(workspace_root().join("target/release/berth-bench"));
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", only]);
        // Only the datapath section measures the previous release: spare
        // building it for the others.
        if !only.split(',').any(|s| s == "datapath") {
            return run::status(&mut cmd).context("bench failed");
        }
    }
    // The datapath section measures the previous release beside this one
    // when its object can be built; without it the bench says so.
    match previous::previous_object() {
        Ok(obj) => {
            cmd.arg("--previous-object").arg(obj);
            cmd.args(["--previous-commit", previous::PREVIOUS_RELEASE]);
        }
        Err(e) => eprintln!(
            "xtask: no previous release ({}) to compare the datapath with: {e:#}",
            previous::PREVIOUS_RELEASE
        ),
    }
    // And this tree without its counting (issue 14), for the counting's
    // cost per packet.
    match uncounted::uncounted_object() {
        Ok(obj) => {
            cmd.arg("--uncounted-object").arg(obj);
        }
        Err(e) => eprintln!("xtask: no object without counters to compare with: {e:#}"),
    }
    run::status(&mut cmd).context("bench failed")
}

pub(crate) fn workspace_root() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().map(PathBuf::from).unwrap_or(xtask_dir)
}

/// A cargo command in the workspace root with bpf-linker first on PATH
/// (userspace/build.rs builds the eBPF crate through aya-build, which calls
/// the linker by name).
pub(crate) fn cargo() -> Result<Command> {
    let program: OsString = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root())
        .env("PATH", bootstrap::path_with_bpf_linker()?);
    Ok(cmd)
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo()?;
    cmd.args(["build", "-p", "berth"]);
    if release {
        cmd.arg("--release");
    }
    run::status(&mut cmd).context("build failed")
}

fn test() -> Result<()> {
    if !run::is_root() {
        bail!("cargo xtask test must run as root: the integration tests create network namespaces and load eBPF programs");
    }
    bootstrap::bootstrap()?;
    // Lint first: a red lint fails the run before ten minutes of tests.
    lint::lint()?;
    // The integration tests run target/debug/berth; `cargo test` alone only
    // builds the test harness variant of a binary.
    build(false)?;

    // berth-ebpf is a no_std, no_main crate for the BPF target: it is built by
    // userspace/build.rs and cannot be compiled (or tested) for the host.
    let mut cmd = cargo()?;
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "berth-ebpf",
        "--no-fail-fast",
    ])
    .stdout(Stdio::piped())
    .stdin(Stdio::null());
    let what = run::describe(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{what}`"))?;
    let mut totals = summary::Totals::default();
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(out).lines() {
            let line = line.context("cannot read cargo test output")?;
            totals.add_line(&line);
            let _ = writeln!(stdout, "{line}");
        }
    }
    let status = child.wait().context("cargo test did not finish")?;
    println!();
    println!("{}", totals.line());
    if !status.success() {
        if totals.failed > 0 {
            bail!("{} test(s) failed", totals.failed);
        }
        bail!("`{what}` failed ({status}) before all tests ran; see the output above");
    }
    Ok(())
}
