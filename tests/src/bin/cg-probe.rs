//! `cg-probe CGROUP_PROCS COMMAND ...`: moves itself into a cgroup, then
//! acts as a process there would. Used to exercise berth's cgroup socket
//! hooks from a process that is really covered by them.
//!
//! - `bind tcp|udp ADDR:PORT` → `ok` or `EADDRINUSE` (or the error)
//! - `http ADDR:PORT` → `peer=<getpeername()> body=<response body>`
//! - `udp ADDR:PORT PAYLOAD` → `from=<reply source> text=<reply>` (unconnected socket)
//! - `udp-connected ADDR:PORT PAYLOAD` → `peer=<getpeername()> text=<reply>`
//!
//! An IPv6 `ADDR` (`[::1]:8080`, `[::ffff:127.0.0.1]:8080`) uses an IPv6
//! socket, dual-stack as applications' sockets are by default.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

const T: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: cg-probe CGROUP_PROCS bind|http|udp|udp-connected ARGS...");
        std::process::exit(2);
    }
    std::fs::write(&args[0], std::process::id().to_string()).expect("join the cgroup");
    match run(&args[1], &args[2..]) {
        Ok(line) => println!("{line}"),
        Err(e) if e.kind() == ErrorKind::AddrInUse => println!("EADDRINUSE"),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => println!("ECONNREFUSED"),
        Err(e) => println!("error: {e}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("ADDR:PORT")
}

/// The wildcard of the target's family: `[::]:0` (dual-stack, so a
/// v4-mapped target works) for an IPv6 target, `0.0.0.0:0` otherwise.
fn local_any(target: &str) -> SocketAddr {
    if addr(target).is_ipv6() {
        "[::]:0".parse().expect("[::]:0")
    } else {
        "0.0.0.0:0".parse().expect("0.0.0.0:0")
    }
}

fn run(cmd: &str, args: &[String]) -> std::io::Result<String> {
    match (cmd, args) {
        ("bind", [proto, a]) => {
            match proto.as_str() {
                "tcp" => TcpListener::bind(addr(a)).map(drop)?,
                _ => UdpSocket::bind(addr(a)).map(drop)?,
            }
            Ok("ok".into())
        }
        ("http", [a]) => {
            let mut c = TcpStream::connect_timeout(&addr(a), T)?;
            c.set_read_timeout(Some(T))?;
            let peer = c.peer_addr()?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut resp = String::new();
            c.read_to_string(&mut resp)?;
            let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            Ok(format!("peer={peer} body={body}"))
        }
        ("udp", [a, payload]) => {
            let s = UdpSocket::bind(local_any(a))?;
            s.set_read_timeout(Some(T))?;
            s.send_to(payload.as_bytes(), addr(a))?;
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok(format!(
                "from={from} text={}",
                String::from_utf8_lossy(&buf[..n])
            ))
        }
        ("udp-connected", [a, payload]) => {
            let s = UdpSocket::bind(local_any(a))?;
            s.set_read_timeout(Some(T))?;
            s.connect(addr(a))?;
            let peer = s.peer_addr()?;
            s.send(payload.as_bytes())?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(format!(
                "peer={peer} text={}",
                String::from_utf8_lossy(&buf[..n])
            ))
        }
        _ => Err(std::io::Error::other(format!("bad command {cmd} {args:?}"))),
    }
}
