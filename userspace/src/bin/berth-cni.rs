//! `berth-cni`: the chained CNI plugin that publishes port mappings through
//! berth (see `berth::interfaces::cni`).
use std::process::ExitCode;

fn main() -> ExitCode {
    berth::interfaces::cni::main()
}
