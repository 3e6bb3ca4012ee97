//! What berth keeps of a TCP flow so that a RST or FIN is believed only
//! when it lies within the sequence window of its direction (a spoofed one
//! with a guessed 4-tuple must not cut the flow's tracking short), and so
//! that only a real handshake promotes a flow to the established table.
//!
//! Per direction `d` (0: the flow's first packet's, 1: the reply):
//! - `seq_end[d]`: sequence number just past the furthest segment seen from
//!   `d`'s sender (SYN and FIN count one);
//! - `max_win[d]`: the largest window `d`'s receiver advertised, scaled by
//!   the shift it announced in its SYN (when both SYNs carried the option);
//! - `wscale[d]`: the shift `d`'s sender announced (0xff: none/unknown).
//!
//! A segment from `d` is in window when its end is no more than
//! `max_win[d]` before `seq_end[d]` and its sequence number no more than
//! `max_win[d]` past it (netfilter's bounds, with the receiver's largest
//! window standing in for the current one). Only in-window segments move
//! the state. A RST is also believed when it acknowledges exactly what the
//! other side has sent (the answer to a SYN nobody listens for).
use aya_ebpf::{cty::c_void, helpers::bpf_loop};
use berth_maps::{NAT_F_CLOSING, NAT_F_SEQ_FWD, NAT_F_SEQ_KNOWN};

use crate::parse::{ptr_at, Flow, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN};

pub(crate) const WSCALE_NONE: u8 = 0xff;
/// RFC 7323: larger shifts are taken as 14.
const WSCALE_MAX: u8 = 14;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WSCALE: u8 = 3;
/// Bytes of TCP options at most (data offset 15).
const TCP_OPTS_MAX: usize = 40;

/// One TCP segment as the tracker sees it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Seg {
    pub flags: u8,
    /// Window-scale option of a SYN; [`WSCALE_NONE`] otherwise.
    pub wscale: u8,
    pub win: u16,
    pub seq: u32,
    /// `seq` + payload + SYN + FIN.
    pub end: u32,
    pub ack: u32,
}

impl Seg {
    /// A SYN without ACK, RST or FIN: the only TCP packet that opens a flow.
    #[inline(always)]
    pub(crate) fn opens(&self) -> bool {
        self.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN) == TCP_FLAG_SYN
    }

    /// A plain ACK (no SYN, no RST): what completes a handshake.
    #[inline(always)]
    fn acks(&self) -> bool {
        self.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST) == TCP_FLAG_ACK
    }
}

/// The segment of a parsed TCP packet in `[data, data_end)` (the parser
/// checked its header; a packet too short for it reads as an empty one).
#[inline(always)]
pub(crate) fn tcp_seg(flow: &Flow, data: usize, data_end: usize) -> Seg {
    tcp_seg_at(
        data,
        data_end,
        flow.l4_off,
        flow.tcp_hdr_len,
        flow.tcp_payload_len(),
        flow.tcp_flags,
    )
}

/// [`tcp_seg`] for either family: the TCP header at `l4_off`, `hdr_len`
/// bytes long, carrying `payload_len` bytes.
#[inline(always)]
pub(crate) fn tcp_seg_at(
    data: usize,
    data_end: usize,
    l4_off: usize,
    hdr_len: u8,
    payload_len: u32,
    flags: u8,
) -> Seg {
    let Some(tcp) = ptr_at::<[u8; 16]>(data, data_end, l4_off) else {
        return Seg::default();
    };
    let tcp = unsafe { &*tcp };
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let win = u16::from_be_bytes([tcp[14], tcp[15]]);
    let mut end = seq.wrapping_add(payload_len);
    if flags & TCP_FLAG_SYN != 0 {
        end = end.wrapping_add(1);
    }
    if flags & TCP_FLAG_FIN != 0 {
        end = end.wrapping_add(1);
    }
    let wscale = if flags & TCP_FLAG_SYN != 0 {
        tcp_opt_wscale(data, data_end, l4_off, hdr_len)
    } else {
        WSCALE_NONE
    };
    Seg {
        flags,
        wscale,
        win,
        seq,
        end,
        ack,
    }
}

/// State of one option walk, shared with the `bpf_loop` callback.
#[repr(C)]
struct OptWalk {
    opts: [u8; TCP_OPTS_MAX],
    len: u32,
    off: u32,
    wscale: u8,
    _pad: [u8; 7],
}

/// One option of the walk; 1 stops it. A subprogram run by `bpf_loop`,
/// so the verifier checks it once rather than once per option byte.
#[inline(never)]
extern "C" fn tcp_opt_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<OptWalk>() };
    let off = w.off as usize;
    if off >= w.len as usize || off >= TCP_OPTS_MAX {
        return 1;
    }
    let kind = w.opts[off];
    if kind == TCPOPT_EOL {
        return 1;
    }
    if kind == TCPOPT_NOP {
        w.off += 1;
        return 0;
    }
    if off + 1 >= TCP_OPTS_MAX {
        return 1;
    }
    let olen = w.opts[off + 1] as usize;
    if kind == TCPOPT_WSCALE && olen == 3 && off + 2 < TCP_OPTS_MAX && off + 3 <= w.len as usize {
        let shift = w.opts[off + 2];
        w.wscale = if shift > WSCALE_MAX {
            WSCALE_MAX
        } else {
            shift
        };
        return 1;
    }
    if olen < 2 {
        return 1;
    }
    w.off += olen as u32;
    0
}

/// The window-scale option of a SYN: the options are copied to the stack
/// four bytes at a time (their length is a multiple of four), then walked.
#[inline(always)]
fn tcp_opt_wscale(data: usize, data_end: usize, l4_off: usize, hdr_len: u8) -> u8 {
    let opts = (l4_off & 0xff) + 20;
    let len = (hdr_len as usize).saturating_sub(20) & 0x3c;
    let mut w = OptWalk {
        opts: [0; TCP_OPTS_MAX],
        len: 0,
        off: 0,
        wscale: WSCALE_NONE,
        _pad: [0; 7],
    };
    for i in 0..TCP_OPTS_MAX / 4 {
        if i * 4 >= len {
            break;
        }
        let Some(chunk) = ptr_at::<[u8; 4]>(data, data_end, opts + i * 4) else {
            break;
        };
        let chunk = unsafe { *chunk };
        w.opts[i * 4..i * 4 + 4].copy_from_slice(&chunk);
        w.len = (i as u32 + 1) * 4;
    }
    if w.len == 0 {
        return WSCALE_NONE;
    }
    unsafe {
        bpf_loop(
            TCP_OPTS_MAX as u32,
            tcp_opt_step as *const () as *mut c_void,
            (&raw mut w).cast(),
            0,
        );
    }
    w.wscale
}

/// The tracking fields of a flow entry (NAT or policy table; their flag
/// bits have the same values).
pub(crate) struct Track<'a> {
    pub flags: &'a mut u8,
    pub wscale: &'a mut [u8; 2],
    pub seq_end: &'a mut [u32; 2],
    pub max_win: &'a mut [u32; 2],
}

/// Tracking state of a flow opened by the SYN `s` (direction 0).
#[inline(always)]
pub(crate) fn tcp_init(s: &Seg) -> ([u8; 2], [u32; 2], [u32; 2]) {
    // A SYN's window is never scaled; it is what the client can receive.
    ([s.wscale, WSCALE_NONE], [s.end, 0], [0, u32::from(s.win)])
}

/// What a segment did to a flow's tracking.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpEvent {
    None,
    /// A RST or FIN outside the window: forwarded, the flow not marked.
    OutOfWindow,
}

#[inline(always)]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline(always)]
fn in_window(t: &Track, d: usize, s: &Seg) -> bool {
    let (end, win) = (t.seq_end[d & 1], t.max_win[d & 1]);
    !before(s.end, end.wrapping_sub(win)) && !before(end.wrapping_add(win), s.seq)
}

/// The shift windows from direction `d`'s sender are scaled by: its own,
/// when both SYNs announced one (RFC 7323), else none.
#[inline(always)]
fn shift(t: &Track, d: usize) -> u32 {
    if t.wscale[0] == WSCALE_NONE || t.wscale[1] == WSCALE_NONE {
        0
    } else {
        u32::from(t.wscale[d & 1] & 0x0f)
    }
}

/// Whether direction `d`'s sequence is tracked.
#[inline(always)]
fn known(t: &Track, d: usize) -> bool {
    if d == 0 {
        *t.flags & (NAT_F_SEQ_FWD | NAT_F_SEQ_KNOWN) != 0
    } else {
        *t.flags & NAT_F_SEQ_KNOWN != 0
    }
}

/// Account segment `s` travelling in direction `d` of a tracked flow.
#[inline(always)]
pub(crate) fn tcp_update(t: &mut Track, d: usize, s: &Seg) -> TcpEvent {
    let d = d & 1;
    let o = d ^ 1;
    if s.flags & TCP_FLAG_RST != 0 {
        let answers = s.flags & TCP_FLAG_ACK != 0 && known(t, o) && s.ack == t.seq_end[o];
        if (known(t, d) && in_window(t, d, s)) || answers {
            *t.flags |= NAT_F_CLOSING;
            return TcpEvent::None;
        }
        return TcpEvent::OutOfWindow;
    }
    // A closed flow opened again from the same ports (TIME_WAIT reuse):
    // track the new connection from its SYN.
    if d == 0 && s.opens() && *t.flags & NAT_F_CLOSING != 0 {
        let (w, e, m) = tcp_init(s);
        *t.wscale = w;
        *t.seq_end = e;
        *t.max_win = m;
        *t.flags = (*t.flags & !(NAT_F_CLOSING | NAT_F_SEQ_KNOWN)) | NAT_F_SEQ_FWD;
        return TcpEvent::None;
    }
    if !known(t, d) {
        // Only the reply direction is ever learnt: from the SYN-ACK that
        // answers the SYN berth saw.
        let syn_ack = s.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK;
        if d == 1 && syn_ack && known(t, 0) && s.ack == t.seq_end[0] {
            t.seq_end[1] = s.end;
            t.wscale[1] = s.wscale;
            t.max_win[0] = u32::from(s.win);
            *t.flags |= NAT_F_SEQ_KNOWN;
        }
        return TcpEvent::None;
    }
    if !in_window(t, d, s) {
        return if s.flags & TCP_FLAG_FIN != 0 {
            TcpEvent::OutOfWindow
        } else {
            TcpEvent::None
        };
    }
    if before(t.seq_end[d], s.end) {
        t.seq_end[d] = s.end;
    }
    let win = if s.flags & TCP_FLAG_SYN != 0 {
        u32::from(s.win)
    } else {
        u32::from(s.win) << shift(t, d)
    };
    if win > t.max_win[o] {
        t.max_win[o] = win;
    }
    if s.flags & TCP_FLAG_FIN != 0 {
        *t.flags |= NAT_F_CLOSING;
    }
    TcpEvent::None
}

/// Whether `s` from the client (direction 0) completes the handshake of a
/// not yet established flow: a plain ACK of everything the container has
/// sent, after berth saw the container's SYN-ACK. A spoofing flooder never
/// sees the SYN-ACK, so cannot promote its flows.
#[inline(always)]
pub(crate) fn tcp_completes(t: &Track, s: &Seg) -> bool {
    *t.flags & NAT_F_SEQ_KNOWN != 0 && s.acks() && s.ack == t.seq_end[1]
}
