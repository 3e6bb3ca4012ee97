//! Running helper programs (`ip`, `iptables-restore`, `ethtool`, …) with
//! failures that quote the program's stderr.
use std::{
    ffi::OsStr,
    io::Write as _,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// `program arg arg …`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// `word` as a POSIX shell reads it back: as is when it holds only
/// characters no shell treats specially, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// `program arg arg …` quoted for a shell, so it can be pasted and run.
pub fn shell_line(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}={}",
                k.to_string_lossy(),
                shell_quote(&v?.to_string_lossy())
            ))
        })
        .collect();
    words.push(shell_quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

/// Runs `program args…` and returns its stdout; a non-zero exit is an error
/// that names the command and quotes its stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(&mut cmd, None)
}

/// Like [`run`] for a prepared command, optionally feeding `stdin`.
pub fn run_command(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let out = output(cmd, stdin)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout.trim().to_string()
        } else {
            stderr.trim().to_string()
        };
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, detail);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command to completion and returns its output whatever the exit
/// status (for tests that expect a failure).
pub fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<Output> {
    let what = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{what}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe missing")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("cannot write stdin of `{what}`"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("`{what}` did not finish"))
}

/// Runs a command with stdin from /dev/null and kills it if it has not
/// finished within `timeout`; returns its output whatever the exit status.
pub fn output_with_timeout(cmd: &mut Command, timeout: std::time::Duration) -> Result<Output> {
    use std::{io::Read, thread, time::Instant};

    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{what}`"))?;
    // Drain both pipes on threads so a chatty child cannot block on a full
    // pipe while we wait for it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?}");
        }
        thread::sleep(std::time::Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_a_shell_would_change_them() {
        assert_eq!(
            shell_quote("/tmp/berth-1/berth.sock"),
            "/tmp/berth-1/berth.sock"
        );
        assert_eq!(shell_quote("5353:53/udp"), "5353:53/udp");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn a_shell_line_puts_the_environment_first() {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", "ns 1", "berth"]).env("K", "v w");
        assert_eq!(shell_line(&c), "K='v w' ip netns exec 'ns 1' berth");
    }
}
