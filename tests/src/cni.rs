//! A small CNI runtime for the tests, doing what libcni does with a network
//! configuration list: each plugin runs in order with `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` and `CNI_ARGS`,
//! its own configuration on stdin with `name`, `cniVersion`, `runtimeConfig`
//! (the capabilities it declares) and `prevResult` injected and
//! `capabilities` removed; ADD chains each result into the next plugin, DEL
//! runs in reverse order with the ADD's final result, CHECK with it in
//! order, GC and STATUS run every plugin and collect the errors.
//!
//! Plugins run with `ip netns exec` in the test's host namespace (the one
//! the daemon serves), never in the root namespace; host-local keeps its
//! leases in a `dataDir` inside the runtime's temp dir.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::{berth_bin, names::TempDir, NetNs};

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// One container's attachment to the network, as a runtime names it.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`: the container's namespace file.
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// The `portMappings` capability argument (a JSON array).
    pub port_mappings: Value,
}

impl Attachment {
    pub fn new(container_id: &str, netns: &NetNs, port_mappings: Value) -> Self {
        Self {
            container_id: container_id.into(),
            netns: netns.path().to_path_buf(),
            ifname: "eth0".into(),
            args: String::new(),
            port_mappings,
        }
    }
}

/// A plugin's failure: its CNI error (if it printed one) and its output.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    pub command: String,
    pub code: Option<u64>,
    pub msg: String,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} failed (code {:?}): {} | stdout {} | stderr {}",
            self.plugin,
            self.command,
            self.code,
            self.msg,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

impl std::error::Error for PluginError {}

/// A network configuration list and where its plugins run.
#[derive(Debug)]
pub struct CniRuntime {
    host: String,
    cni_path: String,
    conflist: Value,
    dir: TempDir,
}

impl CniRuntime {
    /// `conflist`: `{"cniVersion","name","plugins":[...]}`. A `host-local`
    /// `ipam` without `dataDir` gets one in the runtime's temp dir.
    /// `CNI_PATH` holds Debian's plugins and the directory of the built
    /// `berth-cni`.
    pub fn new(host: &NetNs, mut conflist: Value) -> Result<Self> {
        let dir = TempDir::new("cni")?;
        if let Some(plugins) = conflist["plugins"].as_array_mut() {
            for p in plugins {
                if p["ipam"]["type"] == "host-local" && p["ipam"].get("dataDir").is_none() {
                    p["ipam"]["dataDir"] = json!(dir.path().join("host-local"));
                }
            }
        }
        let berth_dir = berth_bin()?
            .parent()
            .map(Path::to_path_buf)
            .context("berth has no directory")?;
        Ok(Self {
            host: host.name().to_owned(),
            cni_path: format!("{DEBIAN_CNI_DIR}:{}", berth_dir.display()),
            conflist,
            dir,
        })
    }

    pub fn version(&self) -> &str {
        self.conflist["cniVersion"].as_str().unwrap_or_default()
    }

    /// The `socket` of the list's `berth-cni`, if it has one.
    pub fn socket(&self) -> Option<String> {
        self.plugins()
            .iter()
            .find_map(|p| p["socket"].as_str().map(str::to_owned))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The request configuration of one plugin (spec section 3).
    fn request(&self, plugin: &Value, att: Option<&Attachment>, prev: Option<&Value>) -> Value {
        let mut req = plugin.clone();
        req["cniVersion"] = self.conflist["cniVersion"].clone();
        req["name"] = self.conflist["name"].clone();
        let wants_ports = plugin["capabilities"]["portMappings"] == json!(true);
        if let Some(obj) = req.as_object_mut() {
            obj.remove("capabilities");
        }
        if let Some(att) = att {
            if wants_ports && att.port_mappings.as_array().is_some_and(|a| !a.is_empty()) {
                req["runtimeConfig"] = json!({ "portMappings": att.port_mappings });
            }
        }
        if let Some(prev) = prev {
            req["prevResult"] = prev.clone();
        }
        req
    }

    /// Runs one plugin; its stdout parsed when it printed anything.
    pub fn exec(
        &self,
        plugin: &Value,
        command: &str,
        att: Option<&Attachment>,
        stdin: &Value,
    ) -> Result<Option<Value>, Box<PluginError>> {
        let ty = plugin["type"].as_str().unwrap_or_default().to_owned();
        let fail = |code, msg: String, stdout: String, stderr: String| {
            Box::new(PluginError {
                plugin: ty.clone(),
                command: command.into(),
                code,
                msg,
                stdout,
                stderr,
            })
        };
        let exe = self
            .cni_path
            .split(':')
            .map(|d| Path::new(d).join(&ty))
            .find(|p| p.exists())
            .ok_or_else(|| {
                fail(
                    None,
                    format!("no plugin {ty} in {}", self.cni_path),
                    String::new(),
                    String::new(),
                )
            })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host])
            .arg(&exe)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(att) = att {
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_NETNS", &att.netns)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_ARGS", &att.args);
        }
        let mut run = || -> std::io::Result<std::process::Output> {
            let mut child = cmd.spawn()?;
            if let Some(mut input) = child.stdin.take() {
                input.write_all(stdin.to_string().as_bytes())?;
            }
            child.wait_with_output()
        };
        let out = run().map_err(|e| {
            fail(
                None,
                format!("cannot run {}: {e}", exe.display()),
                String::new(),
                String::new(),
            )
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
        if !out.status.success() {
            let code = parsed.as_ref().and_then(|v| v["code"].as_u64());
            let msg = parsed
                .as_ref()
                .and_then(|v| v["msg"].as_str())
                .unwrap_or("no CNI error on stdout")
                .to_owned();
            return Err(fail(code, msg, stdout, stderr));
        }
        Ok(parsed)
    }

    /// ADD through the whole list; the final result.
    pub fn add(&self, att: &Attachment) -> Result<Value, Box<PluginError>> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let req = self.request(&plugin, Some(att), prev.as_ref());
            prev = self.exec(&plugin, "ADD", Some(att), &req)?;
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL in reverse order with the ADD's final result (none on a repeat
    /// DEL, as libcni once its cache is gone). Stops at the first error.
    pub fn del(&self, att: &Attachment, result: Option<&Value>) -> Result<(), Box<PluginError>> {
        for plugin in self.plugins().iter().rev() {
            let req = self.request(plugin, Some(att), result);
            self.exec(plugin, "DEL", Some(att), &req)?;
        }
        Ok(())
    }

    /// CHECK in order with the ADD's final result.
    pub fn check(&self, att: &Attachment, result: &Value) -> Result<(), Box<PluginError>> {
        for plugin in self.plugins() {
            let req = self.request(&plugin, Some(att), Some(result));
            self.exec(&plugin, "CHECK", Some(att), &req)?;
        }
        Ok(())
    }

    /// GC with `cni.dev/valid-attachments` (container ID, ifname): every
    /// plugin runs; the errors, by plugin type.
    pub fn gc(&self, valid: &[(&str, &str)]) -> Vec<PluginError> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        self.every("GC", |mut req| {
            req["cni.dev/valid-attachments"] = json!(valid);
            req
        })
    }

    /// STATUS of every plugin; the errors.
    pub fn status(&self) -> Vec<PluginError> {
        self.every("STATUS", |req| req)
    }

    fn every(&self, command: &str, extra: impl Fn(Value) -> Value) -> Vec<PluginError> {
        self.plugins()
            .iter()
            .filter_map(|p| {
                let req = extra(self.request(p, None, None));
                self.exec(p, command, None, &req).err().map(|e| *e)
            })
            .collect()
    }
}

/// bridge (`cni0`, gateway, hairpin) + host-local on `subnet`, then the
/// port-mapping plugin `ports` (`portmap` or `berth-cni`) with its extra
/// keys, e.g. `{"socket": ...}`.
pub fn bridge_conflist(
    name: &str,
    version: &str,
    subnet: &str,
    ports: &str,
    extra: Value,
) -> Value {
    let mut chained = json!({"type": ports, "capabilities": {"portMappings": true}});
    if let (Some(obj), Some(more)) = (chained.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    json!({
        "cniVersion": version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            chained
        ]
    })
}
