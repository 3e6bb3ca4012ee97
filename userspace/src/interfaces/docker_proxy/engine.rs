//! The Docker engine's API, asked one thing: which container has this IP.
//!
//! dockerd starts the proxy while it is still starting the container, before
//! the container's own `NetworkSettings` show its address; the bridge
//! network's inspect output already lists the endpoint with the container's
//! name and IP, so that is what is read (bollard: the version, the bridge
//! networks, each one's endpoints).
use std::{
    collections::HashMap,
    ffi::OsString,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bollard::{
    models::EndpointResource, query_parameters::ListNetworksOptionsBuilder, Docker,
    API_DEFAULT_VERSION,
};

/// dockerd answers these from memory; more than this means it is stuck.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The Docker API socket of the engine that started us: its `-H unix://…`
/// (read from the parent's command line), else `DOCKER_HOST`, else the
/// default. TCP hosts are not used (no TLS client here).
pub fn docker_socket(parent_cmdline: &[OsString], docker_host: Option<&str>) -> PathBuf {
    let args: Vec<&str> = parent_cmdline.iter().filter_map(|a| a.to_str()).collect();
    for (i, arg) in args.iter().enumerate() {
        let value = match *arg {
            "-H" | "--host" => args.get(i + 1).copied(),
            a => a
                .strip_prefix("--host=")
                .or_else(|| a.strip_prefix("-H="))
                .or_else(|| a.strip_prefix("-H").filter(|v| !v.is_empty())),
        };
        if let Some(path) = value.and_then(|v| v.strip_prefix("unix://")) {
            return PathBuf::from(path);
        }
    }
    match docker_host.and_then(|h| h.strip_prefix("unix://")) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(DEFAULT_DOCKER_SOCKET),
    }
}

pub fn parent_cmdline(ppid: u32) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::fs::read(format!("/proc/{ppid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The name of the container holding `ip` on a bridge network, or why not.
pub async fn container_name_by_ip(socket: &Path, ip: IpAddr) -> Result<String, String> {
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup(socket, ip))
        .await
        .map_err(|_| format!("the Docker API at {} did not answer", socket.display()))?
}

async fn lookup(socket: &Path, ip: IpAddr) -> Result<String, String> {
    let fail = |e: bollard::errors::Error| format!("Docker API {}: {e}", socket.display());
    // Negotiated: dockerd 20.10 speaks API 1.41 at most, Docker 29 at least 1.44.
    let docker = Docker::connect_with_unix(
        &socket.to_string_lossy(),
        LOOKUP_TIMEOUT.as_secs(),
        API_DEFAULT_VERSION,
    )
    .map_err(fail)?
    .negotiate_version()
    .await
    .map_err(fail)?;
    let bridges = HashMap::from([("driver", vec!["bridge"])]);
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&bridges).build(),
        ))
        .await
        .map_err(fail)?;
    for id in networks.into_iter().filter_map(|n| n.id) {
        let net = docker.inspect_network(&id, None).await.map_err(fail)?;
        if let Some(name) = endpoint_name(&net.containers.unwrap_or_default(), ip) {
            return Ok(name);
        }
    }
    Err(format!("no container with IP {ip} on a bridge network"))
}

/// The endpoint whose `IPv4Address` (`172.18.0.2/16`) is `ip`.
fn endpoint_name(endpoints: &HashMap<String, EndpointResource>, ip: IpAddr) -> Option<String> {
    endpoints.values().find_map(|ep| {
        let addr = ep.ipv4_address.as_deref()?.split('/').next()?;
        (addr.parse::<IpAddr>().ok()? == ip).then(|| ep.name.clone())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_socket_comes_from_the_parents_host_flag_in_every_spelling() {
        for cmdline in [
            &["dockerd", "-H", "unix:///tmp/d.sock"][..],
            &["dockerd", "--host=unix:///tmp/d.sock"],
            &[
                "dockerd",
                "--host",
                "tcp://0.0.0.0:2375",
                "-H",
                "unix:///tmp/d.sock",
            ],
            &["dockerd", "-Hunix:///tmp/d.sock"],
        ] {
            assert_eq!(
                docker_socket(&os(cmdline), None),
                PathBuf::from("/tmp/d.sock"),
                "{cmdline:?}"
            );
        }
        assert_eq!(
            docker_socket(&os(&["dockerd"]), Some("unix:///run/x.sock")),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            docker_socket(&os(&["dockerd"]), Some("tcp://h:2375")),
            PathBuf::from(DEFAULT_DOCKER_SOCKET)
        );
    }

    #[test]
    fn the_endpoint_is_found_by_its_address_without_the_prefix_length() {
        let net: bollard::models::NetworkInspect = serde_json::from_str(
            r#"{"Name":"bridge","Containers":{
                "d2e7":{"Name":"web1","EndpointID":"a3","IPv4Address":"172.18.0.2/16","IPv6Address":""},
                "ffff":{"Name":"web10","IPv4Address":"172.18.0.20/16"}}}"#,
        )
        .unwrap();
        let net = net.containers.unwrap();
        assert_eq!(
            endpoint_name(&net, "172.18.0.2".parse().unwrap()).as_deref(),
            Some("web1")
        );
        assert_eq!(
            endpoint_name(&net, "172.18.0.20".parse().unwrap()).as_deref(),
            Some("web10")
        );
        assert_eq!(endpoint_name(&net, "172.18.0.3".parse().unwrap()), None);
    }
}
