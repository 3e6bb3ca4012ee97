//! `berth-cni`: a chained CNI plugin (type `berth-cni`, after bridge +
//! host-local or the like, with `"capabilities": {"portMappings": true}`)
//! that publishes a container's `runtimeConfig.portMappings` through the
//! berth daemon instead of iptables. Every verb of CNI 1.1: ADD, DEL,
//! CHECK, GC, STATUS, VERSION; errors in CNI's error format on stdout with
//! exit status 1. The task is named after the container ID and carries
//! the attachment (network, container ID, interface, pod) on its bindings.
pub mod config;
pub mod error;
pub mod result;
mod verbs;

use std::{
    io::{Read as _, Write as _},
    process::ExitCode,
};

use serde_json::Value;

pub use self::{
    config::{Command, Env, NetConf, PortMapEntry, NEWEST_VERSION, SUPPORTED_VERSIONS},
    error::{CniError, Code},
};

/// What one run prints on stdout, and whether it succeeded.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub ok: bool,
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    let outcome = run(
        |k| std::env::var(k).ok(),
        || {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        },
    );
    let mut out = std::io::stdout().lock();
    // Nothing better to do if stdout is gone: the exit status still says.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One invocation: the environment through `get`, stdin through `stdin`
/// (not read for VERSION, as `skel` does not).
pub fn run(
    get: impl Fn(&str) -> Option<String>,
    stdin: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> Outcome {
    let fail = |e: CniError, version: &str| Outcome {
        stdout: e.to_json(version) + "\n",
        ok: false,
    };
    let env = match Env::read(get) {
        Ok(Some(env)) => env,
        Ok(None) => {
            eprintln!(
                "berth-cni {}: CNI plugin publishing port mappings through berth\nCNI protocol versions supported: {}",
                env!("CARGO_PKG_VERSION"),
                SUPPORTED_VERSIONS.join(", ")
            );
            return Outcome {
                stdout: String::new(),
                ok: true,
            };
        }
        Err(e) => return fail(e, NEWEST_VERSION),
    };
    if env.command == Command::Version {
        let v = serde_json::json!({
            "cniVersion": NEWEST_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        });
        return Outcome {
            stdout: v.to_string() + "\n",
            ok: true,
        };
    }
    let stdin = match stdin() {
        Ok(b) => b,
        Err(e) => {
            return fail(
                CniError::new(Code::Io, format!("error reading from stdin: {e}")),
                NEWEST_VERSION,
            )
        }
    };
    // Errors speak the request's version when it names one berth knows.
    let asked = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| NEWEST_VERSION.to_owned());
    let conf = match NetConf::parse(&stdin, env.command) {
        Ok(c) => c,
        Err(e) => return fail(e, &asked),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                CniError::new(Code::Io, format!("cannot start the I/O runtime: {e}")),
                &asked,
            )
        }
    };
    let done = rt.block_on(async {
        match env.command {
            Command::Add => verbs::add(&env, &conf).await,
            Command::Del => verbs::del(&env, &conf).await,
            Command::Check => verbs::check(&env, &conf).await,
            Command::Gc => verbs::gc(&conf).await,
            Command::Status => verbs::status(&conf).await,
            Command::Version => Ok(None),
        }
    });
    match done {
        Ok(out) => Outcome {
            stdout: out.map(|v| v.to_string() + "\n").unwrap_or_default(),
            ok: true,
        },
        Err(e) => {
            let who = if env.container_id.is_empty() {
                String::new()
            } else {
                format!(" {}", env.container_id)
            };
            eprintln!("berth-cni {:?}{who}: {}", env.command, e.msg);
            fail(e, &asked)
        }
    }
}

#[cfg(test)]
mod tests;
