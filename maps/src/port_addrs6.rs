//! Each bridge port's own IPv6 addresses, learned as its IPv4 ones
//! ([`crate::PORT_ADDRS_MAP`]) from the port's veth peer in the container's
//! namespace: what a container may claim to its neighbours by neighbour
//! discovery without being any task's (see `ebpf/src/l2.rs`). One entry per
//! (port, address), so the datapath asks with one lookup.

/// (host-side ifindex, global address) -> 1.
pub const PORT_ADDRS6_MAP: &str = "BERTH_PORT_ADDRS6";
/// Two addresses for each of [`crate::PORT_ADDRS_CAPACITY`] ports, on
/// average (a container holds one or two global IPv6 addresses; one port
/// may hold up to [`crate::PORT_ADDRS_MAX`]). Entries are allocated on
/// insert; the kernel's bucket array, 16 bytes a slot of capacity, is what
/// an empty table costs (128 KiB here; 512 at eight a port).
pub const PORT_ADDRS6_CAPACITY: u32 = crate::PORT_ADDRS_CAPACITY * 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortAddr6 {
    pub ifindex: u32,
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<PortAddr6>() == 20);

/// The same addresses as one list per port, so the veth judges find the
/// task a port carries by its IPv6 addresses as by its IPv4 ones (a task
/// registered with IPv6 only): host-side ifindex -> [`PortAddrs6`]. The
/// daemon writes it beside [`PORT_ADDRS6_MAP`]; a port without IPv6
/// addresses has no entry.
pub const PORT_LIST6_MAP: &str = "BERTH_PORT_LIST6";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortAddrs6 {
    /// Valid entries of `addrs`, at most [`crate::PORT_ADDRS_MAX`].
    pub len: u32,
    pub addrs: [[u8; 16]; crate::PORT_ADDRS_MAX],
}

const _: () = assert!(size_of::<PortAddrs6>() == 4 + 16 * crate::PORT_ADDRS_MAX);

#[cfg(feature = "user")]
const _: () = {
    const fn proven<T: bytemuck::Pod>() {}
    proven::<PortAddr6>();
    proven::<PortAddrs6>();
};
// SAFETY: bytemuck::Pod, checked just above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortAddr6 {}
// SAFETY: bytemuck::Pod, checked just above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortAddrs6 {}
