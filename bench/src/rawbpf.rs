//! Tiny hand-assembled programs for the XDP-vs-TC investigation, loaded
//! with the bpf(2) syscall and attached with BPF links (closing the link
//! detaches). They forward frames for one IPv4 destination straight to a
//! device, rewriting only the MAC addresses: the cheapest possible forward
//! through each hook, to compare the hooks themselves.
use std::{
    net::Ipv4Addr,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
const ST_W: u8 = 0x62;
const ST_H: u8 = 0x6a;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const BPF_FUNC_REDIRECT: i32 = 23;

pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_LOAD: i32 = 5;
const BPF_LINK_CREATE: i32 = 28;
pub const ATTACH_XDP: u32 = 37;
pub const ATTACH_TCX_INGRESS: u32 = 46;

const XDP_PASS: i32 = 2;
const TC_ACT_OK: i32 = 0;

/// What a program does with a frame for the chosen destination.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Return the pass verdict for everything.
    Pass,
    /// Rewrite the MACs and `bpf_redirect(ifindex, 0)`.
    Redirect {
        dst: Ipv4Addr,
        ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
}

fn program(prog_type: u32, action: Action) -> Vec<Insn> {
    let (data, data_end, pass) = if prog_type == PROG_TYPE_XDP {
        (0, 4, XDP_PASS)
    } else {
        (76, 80, TC_ACT_OK) // __sk_buff data, data_end
    };
    let Action::Redirect {
        dst,
        ifindex,
        dmac,
        smac,
    } = action
    else {
        return vec![ins(MOV64_K, 0, 0, 0, pass), ins(EXIT, 0, 0, 0, 0)];
    };
    let le32 = |b: &[u8]| i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let le16 = |b: &[u8]| i32::from(u16::from_le_bytes([b[0], b[1]]));
    let body = vec![
        ins(LDX_W, 2, 1, data, 0),
        ins(LDX_W, 3, 1, data_end, 0),
        ins(MOV64_X, 4, 2, 0, 0),
        ins(ADD64_K, 4, 0, 0, 34),
        ins(JGT_X, 4, 3, 12, 0), // -> pass (index 17)
        ins(LDX_H, 5, 2, 12, 0),
        ins(JNE_K, 5, 0, 10, 0x0008), // ethertype 0x0800, read little-endian
        ins(LDX_W, 5, 2, 30, 0),
        ins(JNE_K, 5, 0, 8, le32(&dst.octets())),
        ins(ST_W, 2, 0, 0, le32(&dmac[0..4])),
        ins(ST_H, 2, 0, 4, le16(&dmac[4..6])),
        ins(ST_H, 2, 0, 6, le16(&smac[0..2])),
        ins(ST_W, 2, 0, 8, le32(&smac[2..6])),
        ins(MOV64_K, 1, 0, 0, ifindex as i32),
        ins(MOV64_K, 2, 0, 0, 0),
        ins(CALL, 0, 0, 0, BPF_FUNC_REDIRECT),
        ins(EXIT, 0, 0, 0, 0),
        // pass:
        ins(MOV64_K, 0, 0, 0, pass),
        ins(EXIT, 0, 0, 0, 0),
    ];
    body
}

fn bpf(cmd: i32, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: attr is a zero-padded bpf_attr of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Loads the program; returns its fd.
pub fn load(prog_type: u32, action: Action) -> Result<OwnedFd> {
    let insns = program(prog_type, action);
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&1u32.to_ne_bytes()); // log_level
    attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    attr[48..48 + 10].copy_from_slice(b"berth_veth");
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a fresh fd the kernel gave us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "BPF_PROG_LOAD: {e}: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            )
        }
    }
}

/// Attaches `prog` to `ifindex` (in the calling thread's network
/// namespace) with a BPF link; dropping the returned fd detaches it.
pub fn attach(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    match bpf(BPF_LINK_CREATE, &mut attr) {
        // SAFETY: a fresh fd the kernel gave us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => bail!("BPF_LINK_CREATE (attach type {attach_type}, ifindex {ifindex}): {e}"),
    }
}
