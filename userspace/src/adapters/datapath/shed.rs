//! Letting go of the loader's copy of each program once the kernel has it.
//!
//! aya keeps every program's instructions (with the subprograms linked
//! into it, so shared helpers once per program), function and line info in
//! the `Program` after `load()`, so that a program could be loaded again.
//! The daemon never does: it attaches the loaded program to more
//! interfaces later (bridges, container ports), which needs only its file
//! descriptor. Those copies were about 0.7 MiB of the daemon's heap for
//! its whole life (issue 11: memory that follows use).
//!
//! So the programs the daemon will attach are loaded up front, and each
//! loaded one is replaced by a handle built from the kernel's own record of
//! it (`from_program_info`): the same program, its name, a descriptor, no
//! instructions. This runs before anything is attached, so no attachment
//! is owned by the handle being dropped. The cgroup hooks keep theirs (aya
//! cannot rebuild a `CgroupSockAddr` from the kernel's record; they are
//! small), as do programs this daemon never loads (`--attach` picks one of
//! XDP and TC ingress; the bench's empty programs).
use std::borrow::Cow;

use aya::{
    programs::{Program, ProgramError, SchedClassifier, Xdp},
    Ebpf,
};
use aya_obj::programs::XdpAttachType;

use super::{
    attach::{load_once, prog_err},
    DatapathError,
};

/// Loads the programs named in `load` (those not loaded yet), then replaces
/// every loaded TC and XDP program by a handle without the loader's copy.
/// Returns how many were replaced.
pub(super) fn load_and_shed(ebpf: &mut Ebpf, load: &[&str]) -> Result<usize, DatapathError> {
    for &name in load {
        let what = format!("loading {name}");
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Other(format!("program {name} missing")))?;
        let loaded = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            _ => continue,
        };
        load_once(loaded).map_err(prog_err(what))?;
    }
    let mut shed = 0;
    for (name, prog) in ebpf.programs_mut() {
        if prog.fd().is_err() {
            continue;
        }
        let what = format!("keeping {name} loaded");
        if let Some(lean) = lean_handle(name, prog).map_err(prog_err(what))? {
            // Dropping the old handle closes its descriptor only: the
            // lean one holds another, and nothing is attached yet.
            *prog = lean;
            shed += 1;
        }
    }
    Ok(shed)
}

/// A handle to loaded `prog` built from the kernel's record of it, for the
/// program types that can be rebuilt so.
fn lean_handle(name: &str, prog: &Program) -> Result<Option<Program>, ProgramError> {
    let name = Cow::Owned(name.to_owned());
    Ok(match prog {
        Program::SchedClassifier(_) => Some(Program::SchedClassifier(
            SchedClassifier::from_program_info(prog.info()?, name)?,
        )),
        Program::Xdp(_) => Some(Program::Xdp(Xdp::from_program_info(
            prog.info()?,
            name,
            XdpAttachType::Interface,
        )?)),
        _ => None,
    })
}
