//! Pinned maps left by another berth version. aya adopts a pinned map by
//! name whatever its shape, and the verifier then rejects the programs with
//! a log and "Permission denied". So before anything is loaded, every
//! pinned map is compared with this build's definition (from the embedded
//! ELF) and with the layout version kept beside the pins (the
//! `layout_version` symlink; bpffs holds no regular files). A map that
//! differs is migrated when the change allows — a new capacity, or a value
//! layout with a registered converter: a new map is filled from the old one
//! and pinned over it — and otherwise the daemon refuses to start in one
//! line naming the map, both shapes and what to do. Nothing is changed
//! unless every map passes.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya_obj::maps::PinningType;

use super::{
    sys::{self, MapShape},
    DatapathError,
};

/// The layout of berth's pinned maps this build writes. 1: every release
/// before the version was recorded (16-byte NAT entries). 2: 40-byte NAT
/// entries (client port, window scale, sequence tracking).
pub const LAYOUT_VERSION: u32 = 2;
/// Pins without a version record come from before versions were recorded.
const UNRECORDED_LAYOUT: u32 = 1;
/// bpffs refuses names with a dot.
pub const LAYOUT_LINK: &str = "layout_version";

/// The pinned-by-name maps of an eBPF object, with capacity overrides.
pub fn expected_shapes(
    object: &[u8],
    max_entries: &[(&str, u32)],
) -> Result<BTreeMap<String, MapShape>, DatapathError> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DatapathError::Other(format!("parsing the eBPF object: {e}")))?;
    Ok(obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == PinningType::ByName)
        .map(|(name, m)| {
            let cap = max_entries
                .iter()
                .find(|(n, _)| n == name)
                .map_or(m.max_entries(), |(_, c)| *c);
            let shape = MapShape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: cap,
                flags: m.map_flags(),
            };
            (name.clone(), shape)
        })
        .collect())
}

/// Turns one old value into a new one; gets the key too (a converted NAT
/// entry takes its client port from the key).
pub type ConvertFn = fn(key: &[u8], old: &[u8]) -> Vec<u8>;

/// A value layout change berth knows how to carry over.
pub struct Converter {
    pub map: &'static str,
    /// (key size, value size) found and wanted.
    pub from: (u32, u32),
    pub to: (u32, u32),
    pub convert: ConvertFn,
}

pub const CONVERTERS: &[Converter] = &[Converter {
    map: berth_maps::NAT_MAP,
    from: (16, migrate::NAT_ENTRY_V1_SIZE),
    to: (16, migrate::NAT_ENTRY_V2_SIZE),
    convert: migrate::nat_entry_v1_to_v2,
}];

/// What to do with one pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// Same layout, another capacity: copy every entry.
    Resize,
    /// Another value layout: copy every entry through a converter.
    Convert(usize),
}

/// Why a pinned map cannot be carried over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub map: String,
    pub found: MapShape,
    pub expected: MapShape,
}

/// The plan for one map, or why there is none.
pub fn plan_map(name: &str, found: &MapShape, expected: &MapShape) -> Result<Plan, Mismatch> {
    if found == expected {
        return Ok(Plan::Keep);
    }
    let mismatch = || Mismatch {
        map: name.to_owned(),
        found: *found,
        expected: *expected,
    };
    if found.map_type != expected.map_type || found.flags != expected.flags {
        return Err(mismatch());
    }
    if (found.key_size, found.value_size) == (expected.key_size, expected.value_size) {
        return Ok(Plan::Resize);
    }
    CONVERTERS
        .iter()
        .position(|c| {
            c.map == name
                && c.from == (found.key_size, found.value_size)
                && c.to == (expected.key_size, expected.value_size)
        })
        .map(Plan::Convert)
        .ok_or_else(mismatch)
}

/// The layout version recorded beside the pins; `None` when nothing is
/// pinned yet.
fn recorded_layout(pin_dir: &Path, any_pins: bool) -> Result<Option<u32>, DatapathError> {
    match fs::read_link(pin_dir.join(LAYOUT_LINK)) {
        Ok(target) => target
            .to_str()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                DatapathError::PinnedLayout(format!(
                    "{} says {:?}, not a layout version; run `berth reset` to start from empty maps",
                    pin_dir.join(LAYOUT_LINK).display(),
                    target
                ))
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(any_pins.then_some(UNRECORDED_LAYOUT))
        }
        Err(e) => Err(bpffs_err(&pin_dir.join(LAYOUT_LINK), e)),
    }
}

fn bpffs_err(path: &Path, e: io::Error) -> DatapathError {
    DatapathError::Bpffs {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// What [`check_and_migrate`] did, for the log and `berth status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinReport {
    /// The layout the pins had (`None`: nothing was pinned).
    pub found_layout: Option<u32>,
    /// "BERTH_NAT: 16-byte values converted (1234 entries)", ...
    pub migrated: Vec<String>,
}

/// Checks every pinned map against `expected`, then migrates what differs
/// and records this build's layout version. Refuses, changing nothing,
/// when any map cannot be carried over or the pins are from a newer layout.
pub fn check_and_migrate(
    pin_dir: &Path,
    expected: &BTreeMap<String, MapShape>,
) -> Result<PinReport, DatapathError> {
    let mut plans = Vec::new();
    for (name, want) in expected {
        let pin = pin_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let fd = sys::obj_get(&pin).map_err(|e| bpffs_err(&pin, e))?;
        let found = sys::map_shape(&fd).map_err(|e| bpffs_err(&pin, e))?;
        match plan_map(name, &found, want) {
            Ok(Plan::Keep) => {}
            Ok(plan) => plans.push((name.clone(), pin, fd, found, *want, plan)),
            Err(m) => return Err(refusal(&m, &pin)),
        }
    }
    let any_pins = expected.keys().any(|n| pin_dir.join(n).exists());
    let found_layout = recorded_layout(pin_dir, any_pins)?;
    if let Some(v) = found_layout.filter(|v| *v > LAYOUT_VERSION) {
        return Err(DatapathError::PinnedLayout(format!(
            "the maps pinned in {} have layout {v}, from a newer berth than this one (layout {LAYOUT_VERSION}); run that berth, or `berth reset` to start from empty maps",
            pin_dir.display()
        )));
    }
    let mut report = PinReport {
        found_layout,
        migrated: Vec::new(),
    };
    for (name, pin, old, found, want, plan) in plans {
        let n = migrate_map(&name, &pin, &old, &found, &want, plan)?;
        let what = match plan {
            Plan::Convert(_) => format!(
                "{}-byte values converted to {} bytes",
                found.value_size, want.value_size
            ),
            _ => format!("capacity {} -> {}", found.max_entries, want.max_entries),
        };
        report
            .migrated
            .push(format!("{name}: {what} ({n} entries kept)"));
    }
    record_layout(pin_dir)?;
    Ok(report)
}

fn refusal(m: &Mismatch, pin: &Path) -> DatapathError {
    DatapathError::PinnedLayout(format!(
        "pinned map {} ({}) is {}, but this berth needs {} and cannot convert it; \
         run `berth reset` to remove the old pins (published ports come back from the store, \
         tracked flows are lost), or run the berth that created them",
        m.map,
        pin.display(),
        m.found,
        m.expected
    ))
}

fn record_layout(pin_dir: &Path) -> Result<(), DatapathError> {
    let link = pin_dir.join(LAYOUT_LINK);
    let tmp = pin_dir.join(format!("{LAYOUT_LINK}_new"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(LAYOUT_VERSION.to_string(), &tmp)
        .and_then(|()| fs::rename(&tmp, &link))
        .map_err(|e| bpffs_err(&link, e))
}

/// Fills a new map from `old` and pins it over `pin`. Programs still
/// attached keep the old map until the daemon swaps the new ones in, so an
/// entry they write in between is lost (a flow seen in that instant is
/// tracked anew). Returns how many entries were carried over.
fn migrate_map(
    name: &str,
    pin: &Path,
    old: &std::os::fd::OwnedFd,
    found: &MapShape,
    want: &MapShape,
    plan: Plan,
) -> Result<usize, DatapathError> {
    let fail = |what: &str, e: io::Error| {
        DatapathError::Other(format!("migrating pinned map {name} ({what}): {e}"))
    };
    let new = sys::map_create(name, want).map_err(|e| fail("creating the new map", e))?;
    let old_len = sys::value_buf_len(found).map_err(|e| fail("sizing values", e))?;
    let keys: Vec<Vec<u8>> = if found.is_array() {
        // Arrays: every index that exists in both.
        (0..found.max_entries.min(want.max_entries))
            .map(|i| i.to_ne_bytes().to_vec())
            .collect()
    } else {
        sys::map_keys(old, found.key_size as usize).map_err(|e| fail("listing keys", e))?
    };
    if !found.is_array() && keys.len() > want.max_entries as usize {
        return Err(DatapathError::PinnedLayout(format!(
            "pinned map {name} holds {} entries, more than the {} this berth gives it; \
             start with a larger capacity, or `berth reset`",
            keys.len(),
            want.max_entries
        )));
    }
    let mut value = vec![0u8; old_len];
    let mut n = 0;
    for key in &keys {
        if !sys::map_lookup(old, key, &mut value).map_err(|e| fail("reading", e))? {
            continue; // removed meanwhile
        }
        let out = match plan {
            Plan::Convert(i) => (CONVERTERS[i].convert)(key, &value),
            _ => value.clone(),
        };
        sys::map_update(&new, key, &out).map_err(|e| fail("writing", e))?;
        n += 1;
    }
    // Pin under a temporary name, then rename over the old pin: the name
    // never points at nothing.
    let tmp = PathBuf::from(format!("{}_migrating", pin.display()));
    let _ = fs::remove_file(&tmp);
    sys::obj_pin(&new, &tmp).map_err(|e| fail("pinning", e))?;
    fs::rename(&tmp, pin).map_err(|e| fail("replacing the pin", e))?;
    tracing::info!(map = name, entries = n, from = %found, to = %want, "migrated a pinned map");
    Ok(n)
}

/// Converters between value layouts of released versions. Written against
/// byte layouts, not `berth_maps` types, so they keep compiling whatever
/// the current types become.
pub mod migrate {
    /// `NatEntry` of layout 1.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NatEntryV1 {
        pub host_addr_be: u32,
        pub host_port_be: u16,
        pub flags: u8,
        pub _pad: u8,
        pub last_seen_ns: u64,
    }

    /// `NatEntry` of layout 2 (`berth_maps::NatEntry` from this release).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NatEntryV2 {
        pub host_addr_be: u32,
        pub host_port_be: u16,
        pub flags: u8,
        pub _pad: u8,
        pub last_seen_ns: u64,
        pub client_port_be: u16,
        pub wscale: [u8; 2],
        pub seq_end: [u32; 2],
        pub max_win: [u32; 2],
        pub _pad2: u32,
    }

    pub const NAT_ENTRY_V1_SIZE: u32 = core::mem::size_of::<NatEntryV1>() as u32;
    pub const NAT_ENTRY_V2_SIZE: u32 = core::mem::size_of::<NatEntryV2>() as u32;
    const _: () = assert!(NAT_ENTRY_V1_SIZE == 16 && NAT_ENTRY_V2_SIZE == 40);

    /// Layout 2's flag for a flow past its handshake (`NAT_F_ESTABLISHED`).
    pub const NAT_F_ESTABLISHED_V2: u8 = 4;
    /// `NatEntry::wscale` when the window scale is unknown.
    pub const WSCALE_UNKNOWN: u8 = 0xff;
    /// `FlowKey::dst_port_be`: after src_addr, dst_addr, src_port.
    const FLOW_KEY_DST_PORT: usize = 10;

    /// A flow tracked by layout 1 was live: established, its client port
    /// the key's destination port (no remap existed), window scale and
    /// sequence state unknown (so not checked until seen again).
    pub fn nat_entry_v1_to_v2(key: &[u8], old: &[u8]) -> Vec<u8> {
        let v1 = read_v1(old);
        let client_port_be = key
            .get(FLOW_KEY_DST_PORT..FLOW_KEY_DST_PORT + 2)
            .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        let v2 = NatEntryV2 {
            host_addr_be: v1.host_addr_be,
            host_port_be: v1.host_port_be,
            flags: v1.flags | NAT_F_ESTABLISHED_V2,
            _pad: 0,
            last_seen_ns: v1.last_seen_ns,
            client_port_be,
            wscale: [WSCALE_UNKNOWN; 2],
            seq_end: [0; 2],
            max_win: [0; 2],
            _pad2: 0,
        };
        v2_bytes(&v2)
    }

    fn read_v1(b: &[u8]) -> NatEntryV1 {
        let mut raw = [0u8; 16];
        let n = b.len().min(16);
        raw[..n].copy_from_slice(&b[..n]);
        NatEntryV1 {
            host_addr_be: u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]),
            host_port_be: u16::from_ne_bytes([raw[4], raw[5]]),
            flags: raw[6],
            _pad: 0,
            last_seen_ns: u64::from_ne_bytes([
                raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
            ]),
        }
    }

    /// The value bytes of an entry, field by field at its repr(C) offsets.
    pub fn v2_bytes(e: &NatEntryV2) -> Vec<u8> {
        let mut b = Vec::with_capacity(NAT_ENTRY_V2_SIZE as usize);
        b.extend(e.host_addr_be.to_ne_bytes());
        b.extend(e.host_port_be.to_ne_bytes());
        b.extend([e.flags, 0]);
        b.extend(e.last_seen_ns.to_ne_bytes());
        b.extend(e.client_port_be.to_ne_bytes());
        b.extend(e.wscale);
        for w in e.seq_end.iter().chain(&e.max_win) {
            b.extend(w.to_ne_bytes());
        }
        b.extend(0u32.to_ne_bytes());
        b
    }

    pub fn v1_bytes(e: &NatEntryV1) -> Vec<u8> {
        let mut b = Vec::with_capacity(16);
        b.extend(e.host_addr_be.to_ne_bytes());
        b.extend(e.host_port_be.to_ne_bytes());
        b.extend([e.flags, 0]);
        b.extend(e.last_seen_ns.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::{migrate::*, *};

    fn shape(map_type: u32, key: u32, value: u32, max: u32, flags: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: key,
            value_size: value,
            max_entries: max,
            flags,
        }
    }

    #[test]
    fn same_shapes_are_kept_and_capacity_changes_resized() {
        let want = shape(1, 16, 16, 262_144, 0);
        assert_eq!(plan_map("BERTH_CT", &want, &want), Ok(Plan::Keep));
        let small = shape(1, 16, 16, 1024, 0);
        assert_eq!(plan_map("BERTH_CT", &small, &want), Ok(Plan::Resize));
    }

    #[test]
    fn type_flags_and_unconvertible_layouts_are_refused() {
        let want = shape(1, 8, 8, 1024, 0);
        for found in [
            shape(9, 8, 8, 1024, 0),
            shape(1, 8, 8, 1024, 1),
            shape(1, 8, 12, 1024, 0),
            shape(1, 4, 8, 1024, 0),
        ] {
            let m = plan_map("BERTH_SERVICES", &found, &want).unwrap_err();
            assert_eq!((m.found, m.expected), (found, want));
        }
    }

    #[test]
    fn old_nat_entries_have_a_converter_to_the_new_layout_only() {
        let v1 = shape(1, 16, 16, 262_144, 0);
        let v2 = shape(1, 16, 40, 262_144, 0);
        assert!(matches!(
            plan_map("BERTH_NAT", &v1, &v2),
            Ok(Plan::Convert(_))
        ));
        assert!(plan_map("BERTH_NAT", &v2, &v1).is_err(), "no way back");
        assert!(plan_map("BERTH_CT", &v1, &v2).is_err(), "NAT only");
    }

    #[test]
    fn the_refusal_names_the_map_both_shapes_and_the_way_out() {
        let m = Mismatch {
            map: "BERTH_SERVICES".into(),
            found: shape(1, 8, 12, 1024, 0),
            expected: shape(1, 8, 8, 131_072, 0),
        };
        assert_eq!(
            refusal(&m, Path::new("/b/berth/BERTH_SERVICES")).to_string(),
            "pinned map BERTH_SERVICES (/b/berth/BERTH_SERVICES) is hash, key 8 B, value 12 B, \
             1024 entries, flags 0x0, but this berth needs hash, key 8 B, value 8 B, 131072 \
             entries, flags 0x0 and cannot convert it; run `berth reset` to remove the old pins \
             (published ports come back from the store, tracked flows are lost), or run the \
             berth that created them"
        );
    }

    #[test]
    fn pins_from_a_newer_layout_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join(LAYOUT_LINK);
        std::os::unix::fs::symlink((LAYOUT_VERSION + 1).to_string(), &link).unwrap();
        let err = check_and_migrate(dir.path(), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the maps pinned in {} have layout {}, from a newer berth than this one (layout {LAYOUT_VERSION}); run that berth, or `berth reset` to start from empty maps",
                dir.path().display(),
                LAYOUT_VERSION + 1
            )
        );
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from((LAYOUT_VERSION + 1).to_string())
        );
    }

    #[test]
    fn a_fresh_pin_directory_gets_this_layout_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let report = check_and_migrate(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(report, PinReport::default());
        assert_eq!(
            fs::read_link(dir.path().join(LAYOUT_LINK)).unwrap(),
            PathBuf::from(LAYOUT_VERSION.to_string())
        );
    }

    #[test]
    fn a_v1_nat_entry_converts_as_agreed() {
        // src 172.17.0.2:80 -> dst 192.0.2.2:40000, tcp.
        let mut key = Vec::new();
        key.extend([172, 17, 0, 2, 192, 0, 2, 2]);
        key.extend(80u16.to_be_bytes());
        key.extend(40000u16.to_be_bytes());
        key.extend([6, 0, 0, 0]);
        let old = NatEntryV1 {
            host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            host_port_be: 8080u16.to_be(),
            flags: 2,
            _pad: 0,
            last_seen_ns: 123_456_789,
        };
        let out = nat_entry_v1_to_v2(&key, &v1_bytes(&old));
        assert_eq!(out.len(), 40);
        // Read back through the repr(C) struct itself, so the byte writer
        // is checked against the compiler's layout.
        let mut v2 = NatEntryV2::default();
        // SAFETY: NatEntryV2 is repr(C) plain data of exactly 40 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(out.as_ptr(), (&mut v2 as *mut NatEntryV2).cast(), 40)
        };
        assert_eq!(
            v2,
            NatEntryV2 {
                host_addr_be: old.host_addr_be,
                host_port_be: old.host_port_be,
                flags: 2 | NAT_F_ESTABLISHED_V2,
                _pad: 0,
                last_seen_ns: 123_456_789,
                client_port_be: 40000u16.to_be(),
                wscale: [0xff, 0xff],
                seq_end: [0, 0],
                max_win: [0, 0],
                _pad2: 0,
            }
        );
    }
}
