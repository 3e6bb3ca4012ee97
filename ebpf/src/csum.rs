//! Incremental Internet checksum updates (RFC 1624, eqn. 3) for XDP, where
//! the skb checksum helpers do not exist. Values are in network byte order,
//! read as native integers; one's-complement sums do not care about order as
//! long as 16-bit words are taken consistently.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 16-bit word of the covered data changed.
#[inline(always)]
pub(crate) fn replace2(check: u16, from: u16, to: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!from) + u32::from(to))
}

/// New checksum after a 32-bit word of the covered data changed.
#[inline(always)]
pub(crate) fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(from as u16))
        + u32::from(!((from >> 16) as u16))
        + u32::from(to as u16)
        + u32::from((to >> 16) as u16);
    !fold(sum)
}
