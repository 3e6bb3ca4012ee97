//! Fills `BERTH_TAILS` (`berth_maps::tail`): each program of
//! `tail::PROGRAMS` loaded and put in its slot, every other slot emptied
//! (a pinned array may hold an older build's programs in slots this build
//! leaves empty). Called after the object is loaded and before any program
//! is attached, so the IPv4 programs find their IPv6 ones from their first
//! packet; on an adopted (pinned) array each slot changes atomically, from
//! the old program to the new.
use aya::{
    maps::{MapError, ProgramArray},
    programs::SchedClassifier,
    Ebpf,
};
use berth_maps::tail;

use super::{
    attach::{load_once, prog_err},
    bpf::map_err,
    DatapathError,
};

/// Loads and installs every tail-called program; returns how many.
pub fn fill_tails(ebpf: &mut Ebpf) -> Result<usize, DatapathError> {
    let mut fds = Vec::with_capacity(tail::PROGRAMS.len());
    for &(slot, name) in tail::PROGRAMS {
        let what = format!("loading {name} (tail-called, slot {slot})");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Other(format!("program {name} missing")))?
            .try_into()
            .map_err(prog_err(what.clone()))?;
        load_once(prog.load()).map_err(prog_err(what.clone()))?;
        let fd = prog
            .fd()
            .map_err(prog_err(what.clone()))?
            .try_clone()
            .map_err(DatapathError::io(what))?;
        fds.push((slot, fd));
    }
    let map = ebpf
        .map_mut(tail::TAILS_MAP)
        .ok_or_else(|| DatapathError::Other(format!("map {} missing", tail::TAILS_MAP)))?;
    let mut tails: ProgramArray<_> =
        ProgramArray::try_from(map).map_err(map_err(tail::TAILS_MAP))?;
    for slot in 0..tail::LEN {
        match fds.iter().find(|(s, _)| *s == slot) {
            Some((_, fd)) => tails.set(slot, fd, 0),
            None => match tails.clear_index(&slot) {
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(())
                }
                other => other,
            },
        }
        .map_err(map_err(tail::TAILS_MAP))?;
    }
    Ok(fds.len())
}
