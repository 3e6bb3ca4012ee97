//! Attaching programs to interfaces so the attachment outlives the daemon:
//! each link is pinned under `links/<program>@<interface>`, and a pinned
//! link found at start gets the new program swapped in atomically. Shared
//! by the loader (`bpf`) and the bridge-port watcher (`ports`).
use std::{fs, path::Path};

use aya::{
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
        xdp::XdpLink,
        SchedClassifier, Xdp, XdpMode,
    },
    Ebpf,
};

use berth_maps::program;

use super::DatapathError;

pub(super) fn prog_err(what: String) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |e| {
        if is_eperm(&e) {
            DatapathError::NotPermitted
        } else {
            DatapathError::aya(what.clone())(e)
        }
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    crate::domain::error::chain(e)
}

pub(super) fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

pub(super) fn ifindex(name: &str) -> Result<u32, DatapathError> {
    let c =
        std::ffi::CString::new(name).map_err(|_| DatapathError::NoSuchInterface(name.into()))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DatapathError::NoSuchInterface(name.into())),
        i => Ok(i),
    }
}

/// The bridge's MAC in the low 48 bits, as the gate compares it.
pub(super) fn bridge_mac(bridge: &str) -> Result<u64, DatapathError> {
    let path = format!("/sys/class/net/{bridge}/address");
    let text = fs::read_to_string(&path).map_err(DatapathError::io(format!("reading {path}")))?;
    parse_mac(text.trim())
        .ok_or_else(|| DatapathError::Other(format!("{path}: not a MAC address: {}", text.trim())))
}

pub(super) fn parse_mac(s: &str) -> Option<u64> {
    let mut v = 0u64;
    let mut n = 0;
    for part in s.split(':') {
        v = (v << 8) | u64::from(u8::from_str_radix(part, 16).ok()?);
        n += 1;
    }
    (n == 6).then_some(v)
}

pub(super) fn link_name(prog: &str, ifname: &str) -> String {
    format!("{prog}@{ifname}")
}

/// Attach `prog` to `ifname`, reusing a pinned link (atomic program swap)
/// when there is one, and pin new links.
pub(super) fn attach_pinned(
    ebpf: &mut Ebpf,
    prog_name: &str,
    ifname: &str,
    links_dir: &Path,
) -> Result<(), DatapathError> {
    let pin = links_dir.join(link_name(prog_name, ifname));
    let what = format!("attaching {prog_name} to {ifname}");
    let prog = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| DatapathError::Other(format!("program {prog_name} missing")))?;
    if prog_name == program::XDP {
        let p: &mut Xdp = prog.try_into().map_err(prog_err(what.clone()))?;
        load_once(p.load()).map_err(prog_err(what.clone()))?;
        let adopted = adopt_link(&pin).map(|link| {
            let l = XdpLink::try_from(link).map_err(|e| e.to_string())?;
            p.attach_to_link(l).map(drop).map_err(|e| error_chain(&e))
        });
        if !keep_adopted(&pin, adopted) {
            let id = p
                .attach(ifname, XdpMode::default())
                .map_err(prog_err(what.clone()))?;
            pin_link(
                p.take_link(id).map_err(prog_err(what.clone()))?,
                &pin,
                &what,
            )?;
        }
        return Ok(());
    }
    let p: &mut SchedClassifier = prog.try_into().map_err(prog_err(what.clone()))?;
    load_once(p.load()).map_err(prog_err(what.clone()))?;
    let adopted = adopt_link(&pin).map(|link| {
        let l = SchedClassifierLink::try_from(link).map_err(|e| e.to_string())?;
        p.attach_to_link(l).map(drop).map_err(|e| error_chain(&e))
    });
    if !keep_adopted(&pin, adopted) {
        let attach_type = if prog_name == program::TO_CTR {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let id = p
            .attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(prog_err(what.clone()))?;
        pin_link(
            p.take_link(id).map_err(prog_err(what.clone()))?,
            &pin,
            &what,
        )?;
    }
    Ok(())
}

/// Whether a pinned link took the new program. One that could not is
/// unpinned (detaching it), so the caller attaches anew.
pub(super) fn keep_adopted(pin: &Path, adopted: Option<Result<(), String>>) -> bool {
    match adopted {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(pin = %pin.display(), error = %e, "pinned link unusable; attaching anew");
            let _ = fs::remove_file(pin);
            false
        }
        None => false,
    }
}

/// Pin a new link so it outlives the daemon.
pub(super) fn pin_link<L>(link: L, pin: &Path, what: &str) -> Result<(), DatapathError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let fd: FdLink = link.try_into().map_err(DatapathError::aya(what))?;
    fd.pin(pin)
        .map_err(DatapathError::aya(format!("{what}: pinning")))?;
    Ok(())
}

/// A program attached to several interfaces is loaded once.
pub(super) fn load_once(
    r: Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    match r {
        Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        other => other,
    }
}

/// The pinned link at `pin`, if any. The pin stays: it is what keeps the
/// link (and so the attachment) alive while no daemon runs.
pub(super) fn adopt_link(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(p) => {
            // `unpin` would delete the pin file; keep it and take an fd.
            let fd: FdLink = p.into();
            Some(fd)
        }
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "cannot open pinned link");
            None
        }
    }
}
