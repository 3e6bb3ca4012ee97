//! Test harness for berth's integration tests: network namespaces, a
//! Docker-like host topology, a private bpffs, the real `berth` daemon and
//! small TCP/UDP peers, each behind an RAII guard that cleans up on drop,
//! also when a test panics.
//!
//! Everything needs root and Linux. Nothing here changes the root network
//! namespace: links are created inside the test's namespaces, sysctls and
//! iptables rules are set inside them, and dropping a namespace takes all of
//! it away.
//!
//! Most namespace tests start a [`Rig`] (topology + bpffs + daemon in one
//! guard, see [`rig`]). Built by hand, the guards are declared in this
//! order, so they drop in reverse:
//!
//! ```no_run
//! use std::time::Duration;
//! use berth_integration::{http_get, Bpffs, Daemon, HttpPeerServer, Topology};
//!
//! let topo = Topology::build().unwrap();
//! let bpffs = Bpffs::new().unwrap();
//! let daemon = Daemon::start(&topo.host.ns, &bpffs).unwrap();
//! let server = HttpPeerServer::start_in(&topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
//! daemon
//!     .cli_ok(["map", "add", "--task", "web", "--ip", "172.17.0.2", "-p", "8080:80"])
//!     .unwrap();
//! let body = topo
//!     .client
//!     .ns
//!     .run(|| http_get(topo.host.addr(8080), "/", Duration::from_secs(5)))
//!     .unwrap();
//! assert!(body.starts_with("192.0.2.2:"), "the container sees the real client: {body}");
//! # drop(server);
//! ```
pub mod bpffs;
pub mod cgroup;
pub mod cmd;
pub mod cni;
pub mod daemon;
pub mod datapath_fuzz;
pub mod docker_rules;
pub mod dockerd;
pub mod flows;
pub mod mutate;
pub mod names;
pub mod netns;
pub mod pkt;
pub mod process;
pub mod rawsock;
pub mod rig;
pub mod testrun;
pub mod topology;
pub mod traffic;

pub use bpffs::Bpffs;
pub use cgroup::Cgroup;
pub use daemon::{berth_bin, Daemon, DaemonOptions, HttpResponse};
pub use dockerd::{Dockerd, DockerdOptions};
pub use netns::{LinkInfo, NetNs};
pub use process::Child;
pub use rig::{any, any6, peer_ip, Mode, Rig, RigBuilder};
pub use topology::{addr, Client, Container, Host, Topology, TopologyOptions};
pub use traffic::{
    http_get, tcp_connect, udp_request, udp_request_from, HttpPeerServer, UdpEchoServer, UdpReply,
};

/// True when the test process runs as root (the harness needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
