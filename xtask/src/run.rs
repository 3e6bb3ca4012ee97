//! Running external commands with errors that fit on one line.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// `program arg arg …`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with captured output and returns its trimmed stdout. A failure
/// names the command and quotes the last line of its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{what}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no output)");
        bail!("`{what}` failed ({}): {}", out.status, last.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` with the terminal's stdout and stderr (long installs and builds
/// show their progress); fails if it exits non-zero.
pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let st = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run `{what}`"))?;
    if !st.success() {
        bail!("`{what}` failed ({st})");
    }
    Ok(())
}

/// True when this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
