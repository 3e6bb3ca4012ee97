//! `berth-docker-proxy`: dockerd's userland proxy, published through berth
//! instead (see `berth::docker_proxy`).
use std::process::ExitCode;

fn main() -> ExitCode {
    berth::docker_proxy::main(std::env::args_os().skip(1).collect())
}
