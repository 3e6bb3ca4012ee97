//! Which (protocol, host port) have a mapping on a specific host address:
//! the daemon's side of `BERTH_EXACT_PORTS`. Counts per port decide when a
//! bit may be cleared; the words mirror the map so only a changed word is
//! written.
use std::collections::HashMap;

use berth_maps::{exact_ports_slot, EXACT_PORTS_LEN};

/// A word to write: (index, value).
pub(super) type Write = (u32, u64);

pub(super) struct ExactPorts {
    counts: HashMap<(u8, u16), usize>,
    words: Vec<u64>,
}

impl Default for ExactPorts {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
            words: vec![0; EXACT_PORTS_LEN as usize],
        }
    }
}

impl ExactPorts {
    /// Rebuilt from the exact mappings' keys (protocol, host port in host
    /// order); every word is to be written, since a pinned map may hold
    /// bits of mappings gone while no daemon ran.
    pub(super) fn rebuild(keys: impl IntoIterator<Item = (u8, u16)>) -> (Self, Vec<Write>) {
        let mut book = Self::default();
        for (proto, port) in keys {
            book.add(proto, port);
        }
        let writes = (0..EXACT_PORTS_LEN)
            .zip(book.words.iter().copied())
            .collect();
        (book, writes)
    }

    /// One more exact mapping on the port: the word to write, if its bit
    /// was clear. Call before inserting the mapping, so no packet finds it
    /// unprobed.
    pub(super) fn add(&mut self, proto: u8, port: u16) -> Option<Write> {
        let n = self.counts.entry((proto, port)).or_insert(0);
        *n += 1;
        (*n == 1).then(|| self.flip(proto, port, true))
    }

    /// One exact mapping fewer on the port: the word to write, if it was
    /// the last. Call after removing the mapping.
    pub(super) fn remove(&mut self, proto: u8, port: u16) -> Option<Write> {
        let n = self.counts.get_mut(&(proto, port))?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.counts.remove(&(proto, port));
        Some(self.flip(proto, port, false))
    }

    fn flip(&mut self, proto: u8, port: u16, on: bool) -> Write {
        let (i, bit) = exact_ports_slot(proto, port);
        let w = &mut self.words[i as usize];
        if on {
            *w |= bit;
        } else {
            *w &= !bit;
        }
        (i, *w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_maps::{PROTO_TCP, PROTO_UDP};

    fn bit(w: Write, proto: u8, port: u16) -> bool {
        let (i, b) = exact_ports_slot(proto, port);
        assert_eq!(w.0, i);
        w.1 & b != 0
    }

    #[test]
    fn a_bit_is_set_by_the_first_mapping_and_cleared_after_the_last() {
        let mut e = ExactPorts::default();
        let w = e.add(PROTO_TCP, 8080).expect("first sets the bit");
        assert!(bit(w, PROTO_TCP, 8080));
        assert_eq!(e.add(PROTO_TCP, 8080), None, "second: already set");
        assert_eq!(e.remove(PROTO_TCP, 8080), None, "one mapping left");
        let w = e.remove(PROTO_TCP, 8080).expect("last clears the bit");
        assert!(!bit(w, PROTO_TCP, 8080));
        assert_eq!(e.remove(PROTO_TCP, 8080), None, "nothing to remove");
    }

    #[test]
    fn ports_and_protocols_sharing_a_word_keep_their_own_bits() {
        let mut e = ExactPorts::default();
        e.add(PROTO_TCP, 64);
        let w = e.add(PROTO_TCP, 65).unwrap();
        assert!(bit(w, PROTO_TCP, 64) && bit(w, PROTO_TCP, 65));
        let u = e.add(PROTO_UDP, 64).unwrap();
        assert_ne!(u.0, w.0, "UDP has its own words");
        assert!(bit(u, PROTO_UDP, 64) && !bit(u, PROTO_UDP, 65));
        let w = e.remove(PROTO_TCP, 64).unwrap();
        assert!(!bit(w, PROTO_TCP, 64) && bit(w, PROTO_TCP, 65));
        let w = e.add(PROTO_TCP, 65535).unwrap();
        assert_eq!(w.0, 1023, "the last TCP word");
    }

    #[test]
    fn a_rebuild_writes_every_word_from_the_mappings() {
        let (mut e, writes) =
            ExactPorts::rebuild([(PROTO_TCP, 80), (PROTO_TCP, 80), (PROTO_UDP, 53)]);
        assert_eq!(writes.len(), EXACT_PORTS_LEN as usize);
        let set: Vec<_> = writes.iter().filter(|w| w.1 != 0).collect();
        assert_eq!(set.len(), 2);
        assert!(bit(*set[0], PROTO_TCP, 80) && bit(*set[1], PROTO_UDP, 53));
        assert_eq!(e.remove(PROTO_TCP, 80), None, "counted twice");
        assert!(e.remove(PROTO_TCP, 80).is_some());
    }
}
