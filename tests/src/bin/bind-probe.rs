//! `bind-probe CGROUP_PROCS tcp|udp ADDR:PORT`: moves itself into a cgroup,
//! then binds (and for TCP listens on) ADDR:PORT. Prints `ok` or the OS
//! error's name, e.g. `EADDRINUSE`. Used to check berth's bind guard from a
//! process that is really in the guarded cgroup.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, UdpSocket},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [procs, proto, addr] = args.as_slice() else {
        eprintln!("usage: bind-probe CGROUP_PROCS tcp|udp ADDR:PORT");
        std::process::exit(2);
    };
    std::fs::write(procs, std::process::id().to_string()).expect("join the cgroup");
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    let result = match proto.as_str() {
        "tcp" => TcpListener::bind(addr).map(drop),
        "udp" => UdpSocket::bind(addr).map(drop),
        _ => panic!("tcp or udp"),
    };
    match result {
        Ok(()) => println!("ok"),
        Err(e) if e.kind() == ErrorKind::AddrInUse => println!("EADDRINUSE"),
        Err(e) => println!("{e}"),
    }
}
