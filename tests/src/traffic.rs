//! Small TCP/UDP peers for end-to-end checks, over IPv4 or IPv6. Servers bind in the calling
//! thread's network namespace (start them inside [`NetNs::run`], or use the
//! `start_in` constructors), serve from their own thread, record who talked
//! to them, and stop on drop or after [`SERVER_LIFETIME`]. Clients take an
//! explicit timeout; nothing here can hang a test.
//!
//! [`NetNs::run`]: crate::NetNs::run
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::NetNs;

/// A server gives up by itself after this long, so a leaked guard cannot
/// keep a test binary alive.
pub const SERVER_LIFETIME: Duration = Duration::from_mins(5);
const POLL: Duration = Duration::from_millis(10);
/// Per-connection read/write timeout on the server side.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared stop flag and peer log of a server thread.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn record(&self, peer: SocketAddr) {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(peer);
    }
    fn peers(&self) -> Vec<SocketAddr> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A server's thread, the address it serves and what it saw: what
/// [`HttpPeerServer`] and [`UdpEchoServer`] have in common. Stops the
/// thread when dropped.
#[derive(Debug)]
pub struct ServerThread {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve` on a thread named `name`; it polls the stop flag.
    fn spawn(
        name: String,
        addr: SocketAddr,
        serve: impl FnOnce(Arc<Shared>) + Send + 'static,
    ) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = thread::Builder::new().name(name).spawn(move || serve(s))?;
        Ok(Self {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Peers served so far, in order: the connections an HTTP server
    /// accepted, the sources of the datagrams an echo server received.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.peers()
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server that answers every connection with an HTTP/1.0 200 whose
/// body is the peer address it saw, e.g. `192.0.2.2:40000`, then closes.
/// [`ServerThread`]'s methods tell where it listens and who connected.
#[derive(Debug)]
pub struct HttpPeerServer(ServerThread);

impl HttpPeerServer {
    /// Binds `bind` (port 0 picks one) in the calling thread's namespace;
    /// an IPv6 address binds v6-only (see [`bind_socket`]).
    pub fn start(bind: SocketAddr) -> Result<Self> {
        let listener: TcpListener = bind_socket(bind, socket2::Type::STREAM)
            .and_then(|s| {
                s.listen(128)?;
                Ok(s.into())
            })
            .with_context(|| format!("cannot bind tcp {bind}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        ServerThread::spawn(format!("http-{addr}"), addr, move |s| {
            accept_loop(listener, s)
        })
        .map(Self)
    }

    /// Binds `bind` inside `ns`.
    pub fn start_in(ns: &NetNs, bind: SocketAddr) -> Result<Self> {
        ns.try_run(|| Self::start(bind))?
    }
}

impl std::ops::Deref for HttpPeerServer {
    type Target = ServerThread;
    fn deref(&self) -> &ServerThread {
        &self.0
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let started = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) && started.elapsed() < SERVER_LIFETIME {
        match listener.accept() {
            Ok((stream, peer)) => {
                shared.record(peer);
                // One thread per connection: a stalled client cannot block
                // the others, and each is bounded by SERVER_IO_TIMEOUT.
                let _ = thread::Builder::new()
                    .name(format!("http-conn-{peer}"))
                    .spawn(move || {
                        let _ = answer_http(stream, peer);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn answer_http(mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    // Read the request head (or whatever arrives before EOF or the timeout).
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let body = peer.to_string();
    let resp = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Connects to `addr`, sends `GET <path> HTTP/1.0` and returns the body of a
/// 200 response. Everything (connect, send, receive) finishes within
/// `timeout` or fails.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut stream = tcp_connect(addr, timeout).with_context(|| format!("connect to {addr}"))?;
    let req =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: berth-integration\r\n\r\n");
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("send request to {addr}"))?;
    let raw = read_to_end_by(&mut stream, deadline)
        .with_context(|| format!("read response from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{addr} answered {status:?}");
    }
    Ok(body.to_string())
}

/// A TCP connection with a connect timeout; the raw `io::Error` tells a
/// refusal (`ConnectionRefused`: something sent a RST) from silence
/// (`TimedOut`: packets dropped).
pub fn tcp_connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("timed out");
    }
    Ok(left)
}

fn read_to_end_by(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                bail!("timed out after {} bytes", out.len())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A UDP server that answers each datagram with `"<peer addr> <payload>"`
/// sent from the socket it arrived on. [`ServerThread`]'s methods tell
/// where it listens and who sent.
#[derive(Debug)]
pub struct UdpEchoServer(ServerThread);

impl UdpEchoServer {
    /// Binds `bind` (port 0 picks one) in the calling thread's namespace;
    /// an IPv6 address binds v6-only (see [`bind_socket`]).
    pub fn start(bind: SocketAddr) -> Result<Self> {
        let sock: UdpSocket = bind_socket(bind, socket2::Type::DGRAM)
            .map(Into::into)
            .with_context(|| format!("cannot bind udp {bind}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = sock.local_addr()?;
        ServerThread::spawn(format!("udp-echo-{addr}"), addr, move |s| {
            echo_loop(sock, s)
        })
        .map(Self)
    }

    /// Binds `bind` inside `ns`.
    pub fn start_in(ns: &NetNs, bind: SocketAddr) -> Result<Self> {
        ns.try_run(|| Self::start(bind))?
    }
}

impl std::ops::Deref for UdpEchoServer {
    type Target = ServerThread;
    fn deref(&self) -> &ServerThread {
        &self.0
    }
}

fn echo_loop(sock: UdpSocket, shared: Arc<Shared>) {
    let started = Instant::now();
    let mut buf = [0u8; 65536];
    while !shared.stop.load(Ordering::Relaxed) && started.elapsed() < SERVER_LIFETIME {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                shared.record(peer);
                let mut reply = format!("{peer} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, peer);
            }
            Err(_) => continue, // timeout tick: re-check the stop flag
        }
    }
}

/// A socket bound to `bind` with `SO_REUSEADDR` (as std's listeners set
/// it). An IPv6 one is v6-only, so a server on `[::]:80` sees IPv6 clients
/// only and can sit beside one on `0.0.0.0:80`: an IPv4 client never shows
/// up as `::ffff:a.b.c.d` where a test expects it on the IPv4 server.
pub fn bind_socket(bind: SocketAddr, ty: socket2::Type) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(bind), ty, None)?;
    if bind.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == socket2::Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.bind(&bind.into())?;
    Ok(s)
}

/// One UDP reply: who sent it and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpReply {
    pub from: SocketAddr,
    pub text: String,
}

/// Sends `payload` to `target` from an ephemeral port and waits up to
/// `timeout` for one datagram back. The socket is not connected, so a reply
/// from an unexpected address is returned (check `from`) rather than
/// silently dropped.
pub fn udp_request(target: SocketAddr, payload: &str, timeout: Duration) -> Result<UdpReply> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    udp_request_from(any, target, payload, timeout)
}

/// Like [`udp_request`] from a chosen local address/port.
pub fn udp_request_from(
    local: SocketAddr,
    target: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> Result<UdpReply> {
    let sock = UdpSocket::bind(local).with_context(|| format!("cannot bind udp {local}"))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload.as_bytes(), target)
        .with_context(|| format!("send to {target}"))?;
    let mut buf = [0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            anyhow!("no UDP reply from {target} within {timeout:?}")
        }
        _ => anyhow!("receive from {target}: {e}"),
    })?;
    Ok(UdpReply {
        from,
        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
    })
}

/// A UDP socket bound to `bind` inside `ns` whose reads give up after
/// `timeout` (then [`recv_datagram`] says `None`). Panics if it cannot bind:
/// a test has nothing to do without its socket.
pub fn udp_socket_in(ns: &NetNs, bind: SocketAddr, timeout: Duration) -> UdpSocket {
    let sock = ns
        .run(move || UdpSocket::bind(bind))
        .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    sock.set_read_timeout(Some(timeout))
        .unwrap_or_else(|e| panic!("read timeout on {bind}: {e}"));
    sock
}

/// The next datagram on `sock` and who sent it, or `None` when nothing
/// comes within the socket's read timeout.
pub fn recv_datagram(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    // These run in the test's own namespace on loopback: no root needed.

    #[test]
    fn http_server_reports_the_peer() {
        let srv = HttpPeerServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let body = http_get(srv.local_addr(), "/", Duration::from_secs(2)).unwrap();
        let peer: SocketAddr = body.parse().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
        assert_eq!(srv.peers(), vec![peer]);
    }

    #[test]
    fn http_get_gives_up_on_a_silent_server() {
        // Accepted by the kernel backlog, never answered.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let err = http_get(
            silent.local_addr().unwrap(),
            "/",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err:#}");
    }

    #[test]
    fn udp_echo_prefixes_the_peer() {
        let srv = UdpEchoServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let r = udp_request(srv.local_addr(), "hello", Duration::from_secs(2)).unwrap();
        assert_eq!(r.from, srv.local_addr());
        let (peer, payload) = r.text.split_once(' ').unwrap();
        assert_eq!(payload, "hello");
        assert_eq!(srv.peers(), vec![peer.parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn ipv6_servers_are_v6_only_beside_ipv4_ones() {
        let v6 = HttpPeerServer::start("[::1]:0".parse().unwrap()).unwrap();
        let port = v6.port();
        // The same port on IPv4 is free: the IPv6 server did not take it.
        let v4 = HttpPeerServer::start(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        let body = http_get(v6.local_addr(), "/", Duration::from_secs(2)).unwrap();
        assert!(body.starts_with("[::1]:"), "{body}");
        let body = http_get(v4.local_addr(), "/", Duration::from_secs(2)).unwrap();
        assert!(body.starts_with("127.0.0.1:"), "{body}");
        let udp = UdpEchoServer::start("[::1]:0".parse().unwrap()).unwrap();
        let r = udp_request(udp.local_addr(), "six", Duration::from_secs(2)).unwrap();
        assert_eq!(r.from, udp.local_addr());
        assert!(r.text.starts_with("[::1]:"), "{}", r.text);
    }

    #[test]
    fn udp_request_times_out() {
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let err =
            udp_request(quiet.local_addr().unwrap(), "x", Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("no UDP reply"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
