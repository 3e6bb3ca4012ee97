//! A stand-in for the `berth` binary used by the harness's own tests of the
//! `Daemon` guard (so they do not depend on the real daemon's state).
//!
//! `fake-berth … daemon … --socket S …` serves HTTP on S: `GET /v1/health`
//! answers 200 with the network namespace it runs in, anything else 404
//! (chunked). Extra flags: `--fail-startup` exits 2 at once,
//! `--slow-start-ms N` sleeps before listening, `--ignore-sigterm`.
//! Without `daemon` it acts as the CLI: prints its arguments, and exits 1
//! with a message on stderr if one of them is `fail`.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixListener,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn value_of(args: &[String], flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "daemon") {
        if args.iter().any(|a| a == "fail") {
            eprintln!("Error: nope");
            std::process::exit(1);
        }
        println!("fake-berth cli: {}", args.join(" "));
        return;
    }
    if args.iter().any(|a| a == "--fail-startup") {
        eprintln!("fake-berth: refusing to start: no such uplink");
        std::process::exit(2);
    }
    let handler = if args.iter().any(|a| a == "--ignore-sigterm") {
        libc::SIG_IGN
    } else {
        on_term as extern "C" fn(libc::c_int) as libc::sighandler_t
    };
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
    }
    if let Some(ms) = value_of(&args, "--slow-start-ms").and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let socket = PathBuf::from(value_of(&args, "--socket").expect("--socket is required"));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).expect("bind socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let netns = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    eprintln!(
        "fake-berth: listening on {} ({netns}); args: {}",
        socket.display(),
        args.join(" ")
    );
    while !TERM.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let resp = if head.starts_with("GET /v1/health ") {
                    let body = format!("{{\"ok\":true,\"netns\":\"{netns}\"}}");
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nno \r\n5\r\nroute\r\n0\r\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(resp.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    eprintln!("fake-berth: SIGTERM, exiting");
    let _ = std::fs::remove_file(&socket);
}
