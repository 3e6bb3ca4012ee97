//! Load generators and the servers they talk to. Servers run in the
//! container's namespace, clients in the client's; each measurement returns
//! raw counts so the caller can divide by CPU time as well as wall time.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use berth_integration::{Child, NetNs};

/// The published port of the request/response server (connections/s and
/// ping-pong latency).
pub const RR_PORT: u16 = 8080;
/// iperf3's port.
pub const IPERF_PORT: u16 = 5201;
/// The UDP sink's port.
pub const UDP_PORT: u16 = 5353;
/// UDP payload: 18 bytes make a 60-byte frame (64 on a wire with its FCS).
pub const UDP_PAYLOAD: usize = 18;
/// Ping-pong message size.
pub const PING_BYTES: usize = 32;

const HTTP_RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The container side: request/response server, UDP sink, iperf3 server.
/// Dropping it stops all three.
pub struct Servers {
    rr: RrServer,
    udp: UdpSink,
    _iperf: Child,
}

impl Servers {
    pub fn start(ns: &NetNs) -> Result<Self> {
        let iperf = ns.spawn("iperf3", ["-s", "-p", &IPERF_PORT.to_string()])?;
        let rr = ns.try_run(|| RrServer::start(RR_PORT))??;
        let udp = ns.try_run(|| UdpSink::start(UDP_PORT))??;
        Ok(Self {
            rr,
            udp,
            _iperf: iperf,
        })
    }

    /// Datagrams the UDP sink has received so far.
    pub fn udp_received(&self) -> u64 {
        self.udp.count.load(Ordering::Relaxed)
    }

    /// Connections the request/response server has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.rr.accepted.load(Ordering::Relaxed)
    }
}

/// A blocking accept loop. A request starting with `G` gets a short HTTP
/// answer and the server closes (`TIME_WAIT` stays on the server side); one
/// starting with `P` is a ping-pong connection, echoed on a thread of its
/// own until the client closes.
struct RrServer {
    fd: i32,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    _listener: Arc<TcpListener>,
}

impl RrServer {
    fn start(port: u16) -> Result<Self> {
        Self::start_on(SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// On `bind`; an IPv6 address binds v6-only.
    fn start_on(bind: SocketAddr) -> Result<Self> {
        let l = if bind.is_ipv4() {
            TcpListener::bind(bind)
        } else {
            berth_integration::traffic::bind_socket(bind, socket2::Type::STREAM).and_then(|s| {
                s.listen(128)?;
                Ok(s.into())
            })
        }
        .with_context(|| format!("bind tcp {bind}"))?;
        let l = Arc::new(l);
        let fd = l.as_raw_fd();
        let accepted = Arc::new(AtomicU64::new(0));
        let (l2, acc) = (l.clone(), accepted.clone());
        let thread = std::thread::Builder::new()
            .name("bench-rr".into())
            .spawn(move || {
                while let Ok((c, _)) = l2.accept() {
                    acc.fetch_add(1, Ordering::Relaxed);
                    let _ = serve(c);
                }
            })?;
        Ok(Self {
            fd,
            accepted,
            thread: Some(thread),
            _listener: l,
        })
    }
}

fn serve(mut c: TcpStream) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_nodelay(true)?;
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf)?;
    if n == 0 {
        return Ok(());
    }
    if buf[0] == b'P' {
        std::thread::spawn(move || {
            let _ = c.write_all(&buf[1..n]);
            let mut buf = [0u8; 256];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        return Ok(());
    }
    c.write_all(HTTP_RESPONSE)
}

impl Drop for RrServer {
    fn drop(&mut self) {
        // shutdown(2) wakes a thread blocked in accept(2) on Linux.
        // SAFETY: the listener is alive (we hold an Arc to it).
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request/response server alone on `[::]:RR_PORT` (v6-only): the
/// container side of the IPv6 rows.
pub struct RrServer6(RrServer);

impl RrServer6 {
    pub fn start(ns: &NetNs) -> Result<Self> {
        let bind = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, RR_PORT));
        Ok(Self(ns.try_run(|| RrServer::start_on(bind))??))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.0.accepted.load(Ordering::Relaxed)
    }
}

/// Counts every datagram that reaches the container (recvmmsg, 64 at a time).
struct UdpSink {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    fn start(port: u16) -> Result<Self> {
        let s = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("bind udp {port}"))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        set_buf(&s, libc::SO_RCVBUFFORCE, 8 << 20);
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (count.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("bench-udp".into())
            .spawn(move || {
                let mut bufs = vec![[0u8; 64]; 64];
                while !st.load(Ordering::Relaxed) {
                    let n = recv_batch(&s, &mut bufs);
                    if n > 0 {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(Self {
            count,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_buf(s: &impl AsRawFd, opt: i32, bytes: i32) {
    // SAFETY: setsockopt with a pointer to a live i32.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const bytes).cast::<libc::c_void>(),
            size_of::<i32>() as libc::socklen_t,
        );
    }
}

fn recv_batch(s: &UdpSocket, bufs: &mut [[u8; 64]]) -> usize {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast::<libc::c_void>(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = std::ptr::from_mut::<libc::iovec>(v);
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: every header points at a live iovec and buffer.
    let n = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as u32,
            0,
            std::ptr::null_mut(),
        )
    };
    n.max(0) as usize
}

// ---------------------------------------------------------------- clients

/// The calling thread's network namespace's `TCPSynRetrans` (TcpExt): SYNs
/// sent again because no answer came within the retransmission timer.
pub fn syn_retransmits() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names.split_whitespace().position(|n| n == "TCPSynRetrans");
        return i
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    0
}

/// Sequential short connections for `dur`: connect, send a request, read
/// to EOF. Returns (connections, seconds).
pub fn conn_rate(ns: &NetNs, target: SocketAddr, dur: Duration) -> Result<(u64, f64)> {
    ns.try_run(move || -> Result<(u64, f64)> {
        let start = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 128];
        while start.elapsed() < dur {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(3))
                .with_context(|| format!("connect {target}"))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut got = 0;
            loop {
                let r = c
                    .read(&mut buf)
                    .with_context(|| format!("read from {target}"))?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            if got != HTTP_RESPONSE.len() {
                bail!(
                    "{target} answered {got} bytes instead of {}",
                    HTTP_RESPONSE.len()
                );
            }
            n += 1;
        }
        Ok((n, start.elapsed().as_secs_f64()))
    })?
}

/// `n` round trips of [`PING_BYTES`] on one persistent connection (after a
/// short warm-up); returns each round trip in microseconds.
pub fn round_trips(ns: &NetNs, target: SocketAddr, n: usize) -> Result<Vec<f64>> {
    ns.try_run(move || -> Result<Vec<f64>> {
        let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .with_context(|| format!("connect {target}"))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let msg = [b'x'; PING_BYTES];
        let mut first = vec![b'P'];
        first.extend_from_slice(&msg);
        let mut buf = [0u8; PING_BYTES];
        c.write_all(&first)?;
        c.read_exact(&mut buf).context("first echo")?;
        for _ in 0..100 {
            c.write_all(&msg)?;
            c.read_exact(&mut buf)?;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            c.write_all(&msg)?;
            c.read_exact(&mut buf).context("echo")?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(out)
    })?
}

/// Sends [`UDP_PAYLOAD`]-byte datagrams to `target` as fast as one thread
/// can (sendmmsg, 64 at a time) for `dur`, from one source port. Returns
/// (datagrams sent, seconds).
pub fn udp_blast(ns: &NetNs, target: SocketAddr, dur: Duration) -> Result<(u64, f64)> {
    ns.try_run(move || -> Result<(u64, f64)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(target)?;
        set_buf(&s, libc::SO_SNDBUFFORCE, 4 << 20);
        let mut payload = [0u8; UDP_PAYLOAD];
        payload[..5].copy_from_slice(b"berth");
        let mut iov: Vec<libc::iovec> = (0..64)
            .map(|_| libc::iovec {
                iov_base: payload.as_mut_ptr().cast::<libc::c_void>(),
                iov_len: payload.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = std::ptr::from_mut::<libc::iovec>(v);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < dur {
            // SAFETY: every header points at a live iovec and the payload.
            let n =
                unsafe { libc::sendmmsg(s.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as u32, 0) };
            if n > 0 {
                sent += n as u64;
            } else {
                // ECONNREFUSED from an ICMP error, ENOBUFS: keep sending.
                std::thread::yield_now();
            }
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    })?
}

/// iperf3 from `ns` to `target` for `secs`; returns (Gbit/s, bytes).
pub fn iperf(ns: &NetNs, target: SocketAddr, secs: u32) -> Result<(f64, f64)> {
    let mut cmd = ns.command("iperf3");
    cmd.args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    // A path that drops the SYN would leave iperf3 retrying for minutes.
    let out = berth_integration::cmd::output_with_timeout(
        &mut cmd,
        Duration::from_secs(u64::from(secs) + 20),
    )?;
    let out = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let r = &v["end"]["sum_received"];
    let bps = r["bits_per_second"].as_f64().with_context(|| {
        format!(
            "no end.sum_received.bits_per_second in iperf3 output: {}",
            v["error"].as_str().unwrap_or("")
        )
    })?;
    Ok((bps / 1e9, r["bytes"].as_f64().unwrap_or(0.0)))
}
