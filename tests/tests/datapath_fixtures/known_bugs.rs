//! Cases whose expectation the datapath does not meet yet, grouped by
//! cause: (why the expectation stands, the cases). The table tests skip
//! them; `known_datapath_bugs` (ignored) runs only them, so a fix shows up
//! as that test passing — then delete the group.

pub(crate) const KNOWN_BUGS: &[(&str, &[&str])] = &[
    (
        // The exact-address lookup runs before the host-address check, and
        // a wildcard mapping's key has address 0.
        "a packet to 0.0.0.0 matches wildcard mappings; the stack drops it \
         (martian destination), berth delivers it to the container",
        &[
            "tcp wildcard port to 0.0.0.0",
            "udp wildcard port to 0.0.0.0",
        ],
    ),
    (
        "the IPv4 total length is never compared with the frame: a packet \
         longer than what arrived is translated and forwarded (past the \
         route MTU, translated and dropped) where the stack drops it",
        &[
            "tcp frame cut at 54 bytes: tcp header without its payload",
            "tcp frame cut at 57 bytes: payload less one byte",
            "udp frame cut at 42 bytes: udp header without its payload",
            "tcp total length one more than the frame",
            "tcp total length 65535",
            "udp total length one more than the frame",
            "tracked reply with total length past the frame",
        ],
    ),
    (
        "the UDP length is never checked: a datagram the stack drops \
         (length < 8 or past the IPv4 payload) is translated",
        &[
            "udp length 0",
            "udp length 7",
            "udp length one more than the datagram",
            "udp length 65535",
            "tracked udp reply with udp length 0",
            "tracked udp reply with udp length past the datagram",
        ],
    ),
    (
        "an ICMP error's quote is bounded by the frame's end, not its IPv4 \
         total length: bytes after the packet are rewritten as the quoted \
         checksum, and the ICMP checksum then no longer verifies",
        &[
            "icmp error followed by bytes past its total length",
            "container's icmp error followed by bytes past its total length",
        ],
    ),
    (
        "an ICMP error whose total length does not cover the quoted header \
         and ports is translated",
        &[
            "icmp error whose total length cuts the quoted ports",
            "icmp error whose total length ends at the icmp header",
            "container's icmp error whose total length cuts the quoted ports",
        ],
    ),
    (
        "a quoted non-first fragment has no ports, but its payload bytes \
         are taken for ports and rewritten",
        &[
            "icmp error quoting a later fragment with port-like bytes",
            "container's icmp error quoting a later fragment",
        ],
    ),
];

pub(crate) fn is_known_bug(name: &str) -> bool {
    KNOWN_BUGS.iter().any(|(_, cases)| cases.contains(&name))
}
