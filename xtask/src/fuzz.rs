//! `cargo xtask fuzz-datapath` and `cargo xtask fuzz`: the long randomized
//! runs that CI only samples.
use std::{
    process::Command,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};

use crate::{bootstrap, cargo, run, workspace_root};

/// The cargo-fuzz targets under `fuzz/fuzz_targets/`, with the libFuzzer
/// dictionary each uses.
const TARGETS: &[(&str, &str)] = &[
    ("port_spec", "dict/port_spec.dict"),
    ("task_definition", "dict/json.dict"),
    ("api_bodies", "dict/json.dict"),
];

/// The CI test `datapath_mutation` at full size.
pub(crate) fn datapath(frames: u64, seed: Option<String>) -> Result<()> {
    if !run::is_root() {
        bail!("cargo xtask fuzz-datapath must run as root: it loads eBPF programs in a private network namespace");
    }
    bootstrap::bootstrap()?;
    let seed = match seed {
        Some(s) => s,
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            format!(
                "{:#x}",
                nanos ^ u64::from(std::process::id()).rotate_left(32)
            )
        }
    };
    println!("fuzz-datapath: {frames} frames per program, seed {seed} (replay with --seed {seed})");
    run::status(
        cargo()?
            .args([
                "test",
                "-p",
                "berth-integration",
                "--test",
                "datapath_mutation",
                "--",
                "--nocapture",
                "--exact",
                "mutated_frames_keep_the_nat_invariants",
            ])
            .env("BERTH_FUZZ_FRAMES", frames.to_string())
            .env("BERTH_FUZZ_SEED", &seed),
    )
    .with_context(|| format!("the datapath broke an invariant (seed {seed}); see above"))
}

/// Builds the cargo-fuzz targets once, then runs each for `seconds`.
pub(crate) fn parsers(seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<(&str, &str)> = match only {
        None => TARGETS.to_vec(),
        Some(t) => match TARGETS.iter().find(|(name, _)| *name == t) {
            Some(found) => vec![*found],
            None => bail!(
                "no fuzz target {t:?}; there are {}",
                TARGETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    bootstrap::ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    let start = Instant::now();
    // No sanitizer: the parsers are safe Rust, and without ASan the build
    // is quicker and the runs about twice as fast. Debug assertions and
    // overflow checks stay on. AYA_BUILD_SKIP: no eBPF toolchain needed.
    run::status(fuzz_cmd(&dir).args(["build", "--sanitizer", "none"]))
        .context("building the fuzz targets failed")?;
    println!(
        "fuzz: targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    for (target, dict) in targets {
        let corpus = format!("corpus/{target}");
        std::fs::create_dir_all(dir.join(&corpus))
            .with_context(|| format!("cannot create fuzz/{corpus}"))?;
        println!("fuzz: {target} for {seconds} s");
        let mut cmd = fuzz_cmd(&dir);
        cmd.args([
            "run",
            "--sanitizer",
            "none",
            target,
            &corpus,
            &format!("seeds/{target}"),
            "--",
            &format!("-max_total_time={seconds}"),
            &format!("-dict={dict}"),
            "-print_final_stats=1",
        ]);
        // CI explores the same mutation sequence every run, so a red CI
        // is a regression, not luck; longer runs by hand stay random.
        if std::env::var_os("CI").is_some() {
            cmd.arg("-seed=1");
        }
        run::status(&mut cmd).with_context(|| {
            format!("fuzz target {target} failed: the input is under fuzz/artifacts/{target}/ (replay: cd fuzz && cargo +nightly fuzz run -s none {target} artifacts/{target}/<file>)")
        })?;
    }
    println!("fuzz: done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo +nightly fuzz …` in `fuzz/`, free of the variables the outer
/// (stable) cargo set.
fn fuzz_cmd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["+nightly", "fuzz"])
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}
