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
    collections::{BTreeMap, HashSet},
    fs, io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya_obj::maps::PinningType;

use super::{
    sys::{self, MapShape},
    DatapathError,
};

/// The layout of berth's pinned maps this build writes. 1: every release
/// before the version was recorded (16-byte NAT and CT entries). 2: 40-byte
/// NAT and 32-byte CT entries (client port, window scale, sequence
/// tracking), tables of unestablished flows, port remaps, fragments,
/// source checks and the port gate. 3: 12-byte service values carrying the
/// mapping's per-binding counters slot, the per-binding counters array, and
/// 88-byte NAT entries (the slot in layout 2's padding, then the flow-log
/// counters: packets, bytes and TCP flags per direction, the opening time
/// and the uplink). 4: fragment tables keyed by the veth too (16-byte
/// `BERTH_FRAGS`, 44-byte `BERTH_FRAGS6` keys; made anew, see
/// [`DISPOSABLE`]).
pub const LAYOUT_VERSION: u32 = 4;
/// Pins without a version record come from before versions were recorded.
const UNRECORDED_LAYOUT: u32 = 1;
/// bpffs refuses names with a dot.
pub const LAYOUT_LINK: &str = "layout_version";

/// The pinned-by-name maps of an eBPF object, with capacity overrides.
pub fn expected_shapes(
    object: &[u8],
    max_entries: &[(&str, u32)],
) -> Result<BTreeMap<String, MapShape>, DatapathError> {
    let obj =
        aya_obj::Object::parse(object).map_err(DatapathError::aya("parsing the eBPF object"))?;
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

/// One [`Converter`] a row: `MAP: KEY_SIZE, OLD_VALUE_SIZE -> NEW_VALUE_SIZE
/// by function` (the key keeps its size), names from `berth_maps` and
/// [`migrate`].
macro_rules! converters {
    ($($map:ident: $key:ident, $from:ident -> $to:ident by $convert:ident;)*) => {
        &[$(Converter {
            map: berth_maps::$map,
            from: (migrate::$key, migrate::$from),
            to: (migrate::$key, migrate::$to),
            convert: migrate::$convert,
        }),*]
    };
}

pub const CONVERTERS: &[Converter] = converters![
    NAT_MAP: FLOW_KEY_SIZE, NAT_ENTRY_V1_SIZE -> NAT_ENTRY_V3_SIZE by nat_entry_v1_to_v3;
    NAT_MAP: FLOW_KEY_SIZE, NAT_ENTRY_V2_SIZE -> NAT_ENTRY_V3_SIZE by nat_entry_v2_to_v3;
    NAT_NEW_MAP: FLOW_KEY_SIZE, NAT_ENTRY_V2_SIZE -> NAT_ENTRY_V3_SIZE by nat_entry_v2_to_v3;
    CT_MAP: FLOW_KEY_SIZE, CT_ENTRY_V1_SIZE -> CT_ENTRY_V2_SIZE by ct_entry_v1_to_v2;
    SERVICES_MAP: SERVICE_KEY_SIZE, BACKEND_V2_SIZE -> BACKEND_V3_SIZE by backend_v2_to_v3;
];

/// Maps whose entries live seconds and cost one datagram each when lost
/// (a later fragment with no first fragment's verdict): one of another
/// key or value layout is made anew, empty, rather than refused.
pub const DISPOSABLE: &[&str] = &[
    berth_maps::FRAGS_MAP,
    berth_maps::FRAGS6_MAP,
    berth_maps::FRAGS_DENY_MAP,
    berth_maps::FRAGS6_DENY_MAP,
];

/// Hash maps the daemon fills again from the host right after the load
/// (the host's addresses): one made smaller than its fill keeps what fits,
/// non-link-local addresses first ([`refill_keys`]), rather than being
/// refused as a table of live flows is.
pub const REFILLED: &[&str] = &[berth_maps::HOST_ADDRS_MAP, berth_maps::HOST_ADDRS6_MAP];

/// The keys of a [`REFILLED`] map to copy into one of `capacity` entries:
/// all when they fit, else the addresses that matter most (IPv6
/// link-local ones last, as the daemon's own push orders them).
pub fn refill_keys(mut keys: Vec<Vec<u8>>, capacity: u32) -> Vec<Vec<u8>> {
    if keys.len() > capacity as usize {
        keys.sort_by_key(|k| {
            (
                k.len() == 16 && k[0] == 0xfe && k[1] & 0xc0 == 0x80,
                k.clone(),
            )
        });
        keys.truncate(capacity as usize);
    }
    keys
}

/// What to do with one pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// Same layout, another capacity or allocation (`BPF_F_NO_PREALLOC)`:
    /// copy every entry.
    Resize,
    /// Another value layout: copy every entry through a converter.
    Convert(usize),
    /// A program array of another shape: unpinned, so the loader makes a
    /// new one, which it fills with this build's programs. Its entries are
    /// programs of the load that put them there (read back they are ids,
    /// not the fds an update takes), so none is copied. Also a
    /// [`DISPOSABLE`] map of another layout, made anew empty.
    Fresh,
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
    // Whether entries are preallocated changes nothing an entry holds;
    // berth before 0.2 preallocated every hash map.
    let other_flags = (found.flags ^ expected.flags) & !sys::BPF_F_NO_PREALLOC;
    if found.map_type == sys::BPF_MAP_TYPE_PROG_ARRAY
        && expected.map_type == sys::BPF_MAP_TYPE_PROG_ARRAY
    {
        return Ok(Plan::Fresh);
    }
    if found.map_type != expected.map_type || other_flags != 0 {
        return Err(mismatch());
    }
    if (found.key_size, found.value_size) == (expected.key_size, expected.value_size) {
        return Ok(Plan::Resize);
    }
    if DISPOSABLE.contains(&name) {
        return Ok(Plan::Fresh);
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
    /// "`BERTH_NAT`: 16-byte values converted (1234 entries)", ...
    pub migrated: Vec<String>,
}

/// Checks every pinned map against `expected`, then migrates what differs
/// and records this build's layout version. Refuses, changing nothing,
/// when any map cannot be carried over or the pins are from a newer layout.
pub fn check_and_migrate(
    pin_dir: &Path,
    expected: &BTreeMap<String, MapShape>,
) -> Result<PinReport, DatapathError> {
    check_and_migrate_keeping_old(pin_dir, expected).map(|(report, _)| report)
}

/// The old copy of each migrated table, kept while the programs still
/// attached write to it: they track the flows that open between the copy
/// and the swap there, and a TCP flow the new programs do not know is
/// dropped past its SYN.
#[derive(Default)]
pub struct OldMaps {
    maps: Vec<OldMap>,
}

struct OldMap {
    name: String,
    old: OwnedFd,
    new: OwnedFd,
    found: MapShape,
    plan: Plan,
    /// The keys the migration copied: what the new programs did with
    /// those since (an entry promoted away, say) stands.
    copied: HashSet<Vec<u8>>,
}

impl OldMaps {
    /// Copies the entries the old maps gained after their migration (or
    /// the last call) into the new ones, converted, never over an entry the
    /// new programs made. Call as the programs are swapped in, and once
    /// all are. Returns how many.
    pub fn carry_over(&mut self) -> usize {
        let mut n = 0;
        for m in &mut self.maps {
            match carry_map(m) {
                Ok(k) => n += k,
                Err(e) => {
                    tracing::warn!(map = %m.name, error = %e, "carrying over entries added during the migration")
                }
            }
        }
        n
    }
}

fn carry_map(m: &mut OldMap) -> io::Result<usize> {
    let mut value = vec![0u8; sys::value_buf_len(&m.found)?];
    let mut n = 0;
    for key in sys::map_keys(&m.old, m.found.key_size as usize)? {
        if m.copied.contains(&key) || !sys::map_lookup(&m.old, &key, &mut value)? {
            continue;
        }
        let out = match m.plan {
            Plan::Convert(i) => (CONVERTERS[i].convert)(&key, &value),
            _ => value.clone(),
        };
        match sys::map_insert_new(&m.new, &key, &out) {
            Ok(true) => n += 1,
            Ok(false) => {}
            // A host address table made smaller than its fill: the daemon
            // pushes the host's addresses in their order next.
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) && REFILLED.contains(&&*m.name) => {
                break
            }
            Err(e) => return Err(e),
        }
        m.copied.insert(key);
    }
    Ok(n)
}

/// [`check_and_migrate`], also handing back the old copy of each migrated
/// hash table for [`OldMaps::carry_over`].
pub fn check_and_migrate_keeping_old(
    pin_dir: &Path,
    expected: &BTreeMap<String, MapShape>,
) -> Result<(PinReport, OldMaps), DatapathError> {
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
            Ok(Plan::Fresh) => plans.push((name.clone(), pin, fd, found, *want, Plan::Fresh)),
            Ok(plan) => {
                check_fits(name, &fd, &found, want)?;
                plans.push((name.clone(), pin, fd, found, *want, plan))
            }
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
    let mut old_maps = OldMaps::default();
    for (name, pin, old, found, want, plan) in plans {
        if plan == Plan::Fresh {
            fs::remove_file(&pin).map_err(|e| bpffs_err(&pin, e))?;
            let what = if found.map_type == sys::BPF_MAP_TYPE_PROG_ARRAY {
                "its programs put in again"
            } else {
                "empty (fragments in flight are dropped)"
            };
            report
                .migrated
                .push(format!("{name}: {found} made anew as {want}, {what}"));
            continue;
        }
        let Migrated {
            new,
            copied,
            evicted: dropped,
            left_out,
        } = migrate_map(&name, &pin, &old, &found, &want, plan)?;
        let kept = copied.len() - dropped;
        let what = match plan {
            Plan::Convert(_) => format!(
                "{}-byte values converted to {} bytes",
                found.value_size, want.value_size
            ),
            _ => resized(&found, &want),
        };
        let dropped = if left_out > 0 {
            format!(", {left_out} left out of the smaller table, link-local ones first")
        } else if dropped > 0 {
            format!(", {dropped} evicted by the smaller LRU table")
        } else {
            String::new()
        };
        report
            .migrated
            .push(format!("{name}: {what} ({kept} entries kept{dropped})"));
        // Arrays: settings and counters, which the daemon rewrites or which
        // may lose a few increments.
        if !found.is_array() {
            old_maps.maps.push(OldMap {
                name,
                old,
                new,
                found,
                plan,
                copied,
            });
        }
    }
    record_layout(pin_dir)?;
    Ok((report, old_maps))
}

/// "capacity 262144 -> 16384, allocated on use": what a [`Plan::Resize`]
/// changes.
fn resized(found: &MapShape, want: &MapShape) -> String {
    let mut what = Vec::new();
    if found.max_entries != want.max_entries {
        what.push(format!(
            "capacity {} -> {}",
            found.max_entries, want.max_entries
        ));
    }
    let on_use = |s: &MapShape| s.flags & sys::BPF_F_NO_PREALLOC != 0;
    match (on_use(found), on_use(want)) {
        (false, true) => what.push("allocated on use".into()),
        (true, false) => what.push("preallocated".into()),
        _ => {}
    }
    what.join(", ")
}

/// Refuses a hash table (live flows, which berth never evicts) made
/// smaller than the entries it holds, before any map is migrated. An LRU
/// table keeps what fits; an array keeps the indexes both have.
fn check_fits(
    name: &str,
    fd: &OwnedFd,
    found: &MapShape,
    want: &MapShape,
) -> Result<(), DatapathError> {
    if found.is_array()
        || found.is_lru()
        || REFILLED.contains(&name)
        || want.max_entries >= found.max_entries
    {
        return Ok(());
    }
    let n = sys::map_count(fd, found.key_size as usize).map_err(DatapathError::io(format!(
        "counting the entries of pinned map {name}"
    )))?;
    if n > u64::from(want.max_entries) {
        return Err(too_full(name, n, want.max_entries));
    }
    Ok(())
}

fn too_full(name: &str, entries: u64, capacity: u32) -> DatapathError {
    DatapathError::PinnedLayout(format!(
        "pinned map {name} holds {entries} entries, more than the {capacity} this berth gives it; \
         start with a larger capacity, or `berth reset`"
    ))
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

/// What [`migrate_map`] made: the new map, the keys copied, how many of
/// them an LRU table evicted and how many a [`REFILLED`] one left out.
struct Migrated {
    new: OwnedFd,
    copied: HashSet<Vec<u8>>,
    evicted: usize,
    left_out: usize,
}

/// Fills a new map from `old` and pins it over `pin`. Programs still
/// attached keep the old map until the daemon swaps the new ones in; what
/// they write in between is for [`OldMaps::carry_over`]. A hash that would not hold every entry is refused (it
/// holds live flows, which berth never evicts); an LRU table (unestablished
/// flows, which it may lose anyway) shrunk below its fill keeps what fits.
/// A [`REFILLED`] map keeps what fits.
fn migrate_map(
    name: &str,
    pin: &Path,
    old: &OwnedFd,
    found: &MapShape,
    want: &MapShape,
    plan: Plan,
) -> Result<Migrated, DatapathError> {
    let fail = |what: &str, e: io::Error| {
        DatapathError::io(format!("migrating pinned map {name} ({what})"))(e)
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
    let listed = keys.len();
    let keys = if REFILLED.contains(&name) {
        refill_keys(keys, want.max_entries)
    } else {
        keys
    };
    let left_out = listed - keys.len();
    // Checked before any map was migrated; the datapath may have added
    // flows since.
    if !found.is_array() && !found.is_lru() && keys.len() > want.max_entries as usize {
        return Err(too_full(name, keys.len() as u64, want.max_entries));
    }
    let mut value = vec![0u8; old_len];
    let mut copied = HashSet::with_capacity(keys.len());
    for key in keys {
        if !sys::map_lookup(old, &key, &mut value).map_err(|e| fail("reading", e))? {
            continue; // removed meanwhile
        }
        let out = match plan {
            Plan::Convert(i) => (CONVERTERS[i].convert)(&key, &value),
            _ => value.clone(),
        };
        sys::map_update(&new, &key, &out).map_err(|e| fail("writing", e))?;
        copied.insert(key);
    }
    let n = copied.len();
    // An LRU may evict before it is full (its free lists are per CPU).
    let kept = if found.is_lru() {
        sys::map_count(&new, want.key_size as usize).map_err(|e| fail("counting", e))? as usize
    } else {
        n
    };
    if left_out > 0 {
        tracing::warn!(
            map = name,
            kept,
            left_out,
            "a host address table was made smaller than the addresses it held; the daemon pushes the host's addresses again, those that matter most first"
        );
    }
    // Pin under a temporary name, then rename over the old pin: the name
    // never points at nothing.
    let tmp = PathBuf::from(format!("{}_migrating", pin.display()));
    let _ = fs::remove_file(&tmp);
    sys::obj_pin(&new, &tmp).map_err(|e| fail("pinning", e))?;
    fs::rename(&tmp, pin).map_err(|e| fail("replacing the pin", e))?;
    tracing::info!(map = name, entries = kept, evicted = n - kept, from = %found, to = %want, "migrated a pinned map");
    Ok(Migrated {
        new,
        copied,
        evicted: n - kept,
        left_out,
    })
}

/// Converters between value layouts of released versions. The old layouts
/// are written against bytes, not `berth_maps` types, so they keep
/// compiling whatever the current types become; the layout a converter
/// writes is tied to this build's type by compile-time checks (same size,
/// same fields with the same types at the same offsets, same flag values),
/// so changing `berth_maps::NatEntry` or `CtEntry` without a converter for
/// the pins of the release before fails the build rather than an upgrade.
pub mod migrate {
    use core::mem::{offset_of, size_of};

    use berth_maps as cur;

    // ------------------------------------------------------------ layout 1
    // Release 8071dfd and before: one NAT table and one policy table, each
    // entry created by a flow's first packet, flags CLOSING and REPLIED.

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

    /// `CtEntry` of layout 1.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CtEntryV1 {
        pub last_seen_ns: u64,
        pub flags: u8,
        pub _pad: [u8; 7],
    }

    /// Layout 1's flag bits (NAT and CT alike): a RST or FIN was seen; the
    /// other side answered. Carried over as they are; any other bit is not
    /// layout 1's and is dropped.
    pub const F_CLOSING_V1: u8 = 1;
    pub const F_REPLIED_V1: u8 = 2;
    const F_KNOWN_V1: u8 = F_CLOSING_V1 | F_REPLIED_V1;

    pub const NAT_ENTRY_V1_SIZE: u32 = size_of::<NatEntryV1>() as u32;
    pub const CT_ENTRY_V1_SIZE: u32 = size_of::<CtEntryV1>() as u32;

    // ------------------------------------------------------------ layout 2
    // This build: established and unestablished tables, TCP sequence state.

    /// `NatEntry` of layout 2.
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
        /// Padding in layout 2 (always 0); from layout 3 the same bytes hold
        /// the mapping's per-binding counters slot, 0 being none.
        pub binding: u32,
    }

    /// `CtEntry` of layout 2.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CtEntryV2 {
        pub last_seen_ns: u64,
        pub flags: u8,
        pub _pad: u8,
        pub wscale: [u8; 2],
        pub seq_end: [u32; 2],
        pub max_win: [u32; 2],
        pub _pad2: u32,
    }

    pub const NAT_ENTRY_V2_SIZE: u32 = size_of::<NatEntryV2>() as u32;

    // ------------------------------------------------------------ layout 3
    // This build: flow-log counters at the end of each NAT entry.

    /// `NatEntry` of layout 3: layout 2's, then the flow-log counters.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NatEntryV3 {
        pub host_addr_be: u32,
        pub host_port_be: u16,
        pub flags: u8,
        pub _pad: u8,
        pub last_seen_ns: u64,
        pub client_port_be: u16,
        pub wscale: [u8; 2],
        pub seq_end: [u32; 2],
        pub max_win: [u32; 2],
        pub binding: u32,
        pub packets: [u64; 2],
        pub bytes: [u64; 2],
        pub opened_ns: u64,
        pub ifindex: u32,
        pub tcp_flags: [u8; 2],
        pub _pad3: u16,
    }

    pub const NAT_ENTRY_V3_SIZE: u32 = size_of::<NatEntryV3>() as u32;
    const _: () = assert!(NAT_ENTRY_V3_SIZE == 88);
    // Layout 3 appends: the first 40 bytes are layout 2's.
    const _: () = assert!(offset_of!(NatEntryV3, packets) == NAT_ENTRY_V2_SIZE as usize);
    pub const CT_ENTRY_V2_SIZE: u32 = size_of::<CtEntryV2>() as u32;

    /// Layout 2's flag for a flow in the established table (NAT and CT).
    pub const F_ESTABLISHED_V2: u8 = 4;
    /// Layout 2's sequence-tracking flags, which no converted entry gets:
    /// berth learns a flow's sequence state from its SYN and SYN-ACK only.
    const F_SEQ_V2: u8 = 8 | 16;
    /// `wscale` of a direction whose window scale is unknown.
    pub const WSCALE_UNKNOWN: u8 = 0xff;
    /// `FlowKey::dst_port_be`: after `src_addr`, `dst_addr`, `src_port`.
    pub const FLOW_KEY_DST_PORT: usize = 10;
    /// Both layouts key the flow tables by `FlowKey`.
    pub const FLOW_KEY_SIZE: u32 = 16;

    const _: () = assert!(NAT_ENTRY_V1_SIZE == 16 && CT_ENTRY_V1_SIZE == 16);
    const _: () = assert!(NAT_ENTRY_V2_SIZE == 40 && CT_ENTRY_V2_SIZE == 32);

    /// Fails the build unless `$ours` has `$theirs`'s size and each listed
    /// field at the same offset; with the field-by-field moves below (which
    /// name every field of both, so a new field or another type does not
    /// compile), the byte layout is the same.
    macro_rules! same_layout {
        ($ours:ty, $theirs:ty, [$($f:ident),+ $(,)?]) => {
            const _: () = {
                assert!(size_of::<$ours>() == size_of::<$theirs>());
                $(assert!(offset_of!($ours, $f) == offset_of!($theirs, $f));)+
            };
        };
    }
    same_layout!(
        NatEntryV3,
        cur::NatEntry,
        [
            host_addr_be,
            host_port_be,
            flags,
            _pad,
            last_seen_ns,
            client_port_be,
            wscale,
            seq_end,
            max_win,
            binding,
            packets,
            bytes,
            opened_ns,
            ifindex,
            tcp_flags,
            _pad3
        ]
    );
    same_layout!(
        CtEntryV2,
        cur::CtEntry,
        [last_seen_ns, flags, _pad, wscale, seq_end, max_win, _pad2]
    );
    const _: () = {
        assert!(size_of::<cur::FlowKey>() == FLOW_KEY_SIZE as usize);
        assert!(offset_of!(cur::FlowKey, dst_port_be) == FLOW_KEY_DST_PORT);
        // What the converters set and carry means the same in this build.
        assert!(F_ESTABLISHED_V2 == cur::NAT_F_ESTABLISHED);
        assert!(F_ESTABLISHED_V2 == cur::CT_F_ESTABLISHED);
        assert!(F_CLOSING_V1 == cur::NAT_F_CLOSING && F_CLOSING_V1 == cur::CT_F_CLOSING);
        assert!(F_REPLIED_V1 == cur::NAT_F_REPLIED && F_REPLIED_V1 == cur::CT_F_REPLIED);
        assert!(F_SEQ_V2 == cur::NAT_F_SEQ_KNOWN | cur::NAT_F_SEQ_FWD);
        assert!(F_SEQ_V2 == cur::CT_F_SEQ_KNOWN | cur::CT_F_SEQ_FWD);
        assert!(F_KNOWN_V1 & (F_ESTABLISHED_V2 | F_SEQ_V2) == 0);
    };

    /// Compiles only while `NatEntryV3` and `berth_maps::NatEntry` have the
    /// same fields of the same types.
    #[expect(dead_code)]
    const fn nat_v3_is_current(e: cur::NatEntry) -> NatEntryV3 {
        let cur::NatEntry {
            host_addr_be,
            host_port_be,
            flags,
            _pad,
            last_seen_ns,
            client_port_be,
            wscale,
            seq_end,
            max_win,
            binding,
            packets,
            bytes,
            opened_ns,
            ifindex,
            tcp_flags,
            _pad3,
        } = e;
        NatEntryV3 {
            host_addr_be,
            host_port_be,
            flags,
            _pad,
            last_seen_ns,
            client_port_be,
            wscale,
            seq_end,
            max_win,
            binding,
            packets,
            bytes,
            opened_ns,
            ifindex,
            tcp_flags,
            _pad3,
        }
    }

    /// Compiles only while `CtEntryV2` and `berth_maps::CtEntry` have the
    /// same fields of the same types.
    #[expect(dead_code)]
    const fn ct_v2_is_current(e: cur::CtEntry) -> CtEntryV2 {
        let cur::CtEntry {
            last_seen_ns,
            flags,
            _pad,
            wscale,
            seq_end,
            max_win,
            _pad2,
        } = e;
        CtEntryV2 {
            last_seen_ns,
            flags,
            _pad,
            wscale,
            seq_end,
            max_win,
            _pad2,
        }
    }

    // ------------------------------------------------------------ layout 3
    // Service values carry the mapping's per-binding counters slot.

    /// `ServiceKey`: unchanged since layout 1.
    pub const SERVICE_KEY_SIZE: u32 = 8;
    /// `Backend` of layouts 1 and 2: container address, port, padding.
    pub const BACKEND_V2_SIZE: u32 = 8;
    /// `Backend` of layout 3: the same, then the counters slot.
    pub const BACKEND_V3_SIZE: u32 = 12;
    const _: () = {
        assert!(size_of::<cur::ServiceKey>() == SERVICE_KEY_SIZE as usize);
        assert!(size_of::<cur::Backend>() == BACKEND_V3_SIZE as usize);
        assert!(offset_of!(cur::Backend, binding) == BACKEND_V2_SIZE as usize);
    };

    /// A mapping published by layout 2 keeps its container and gets slot 0
    /// (counted nowhere) until the daemon, reconciling, numbers it.
    pub fn backend_v2_to_v3(_key: &[u8], old: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BACKEND_V3_SIZE as usize];
        let n = old.len().min(BACKEND_V2_SIZE as usize);
        b[..n].copy_from_slice(&old[..n]);
        b
    }

    // --------------------------------------------------------- converters

    /// A flow tracked by layout 1 was live: established (layout 1 had no
    /// other table), its client port the key's destination port (no remap
    /// existed), window scale and sequence state unknown (see
    /// [`ct_entry_v1_to_v2`] for what that leaves out).
    pub fn nat_entry_v1_to_v2(key: &[u8], old: &[u8]) -> Vec<u8> {
        let v1 = nat_v1_read(old);
        let client_port_be = key
            .get(FLOW_KEY_DST_PORT..FLOW_KEY_DST_PORT + 2)
            .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        nat_v2_bytes(&NatEntryV2 {
            host_addr_be: v1.host_addr_be,
            host_port_be: v1.host_port_be,
            flags: (v1.flags & F_KNOWN_V1) | F_ESTABLISHED_V2,
            _pad: 0,
            last_seen_ns: v1.last_seen_ns,
            client_port_be,
            wscale: [WSCALE_UNKNOWN; 2],
            seq_end: [0; 2],
            max_win: [0; 2],
            binding: 0,
        })
    }

    /// A flow tracked by layout 2 keeps everything it had; its flow-log
    /// counters start at zero (the flow log counts it from the upgrade on),
    /// its opening time and uplink unknown (0).
    pub fn nat_entry_v2_to_v3(_key: &[u8], old: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; NAT_ENTRY_V3_SIZE as usize];
        let n = old.len().min(NAT_ENTRY_V2_SIZE as usize);
        b[..n].copy_from_slice(&old[..n]);
        b
    }

    /// Layout 1 to 2, then 2 to 3.
    pub fn nat_entry_v1_to_v3(key: &[u8], old: &[u8]) -> Vec<u8> {
        nat_entry_v2_to_v3(key, &nat_entry_v1_to_v2(key, old))
    }

    /// A policy flow tracked by layout 1 was live and allowed: established,
    /// so it stays in `BERTH_CT` and its packets pass as before. Its TCP
    /// sequence state is unknown and is never learnt (only a SYN and its
    /// SYN-ACK teach it), so the tracker forwards the flow's segments
    /// without window checks and believes none of its RSTs or FINs: they
    /// pass, count `tcp_out_of_window`, and do not mark the flow closing;
    /// the entry then lives out the established idle timeout (as layout 1's
    /// did) unless it was closing already. A SYN reopening a closing flow
    /// is tracked from scratch, as any.
    pub fn ct_entry_v1_to_v2(_key: &[u8], old: &[u8]) -> Vec<u8> {
        let v1 = ct_v1_read(old);
        ct_v2_bytes(&CtEntryV2 {
            last_seen_ns: v1.last_seen_ns,
            flags: (v1.flags & F_KNOWN_V1) | F_ESTABLISHED_V2,
            _pad: 0,
            wscale: [WSCALE_UNKNOWN; 2],
            seq_end: [0; 2],
            max_win: [0; 2],
            _pad2: 0,
        })
    }

    // ------------------------------------------------ bytes at the offsets

    fn put(b: &mut [u8], off: usize, v: &[u8]) {
        b[off..off + v.len()].copy_from_slice(v);
    }

    fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = b.get(off..off + N) {
            out.copy_from_slice(src);
        }
        out
    }

    fn nat_v1_read(b: &[u8]) -> NatEntryV1 {
        NatEntryV1 {
            host_addr_be: u32::from_ne_bytes(get(b, offset_of!(NatEntryV1, host_addr_be))),
            host_port_be: u16::from_ne_bytes(get(b, offset_of!(NatEntryV1, host_port_be))),
            flags: get::<1>(b, offset_of!(NatEntryV1, flags))[0],
            _pad: 0,
            last_seen_ns: u64::from_ne_bytes(get(b, offset_of!(NatEntryV1, last_seen_ns))),
        }
    }

    fn ct_v1_read(b: &[u8]) -> CtEntryV1 {
        CtEntryV1 {
            last_seen_ns: u64::from_ne_bytes(get(b, offset_of!(CtEntryV1, last_seen_ns))),
            flags: get::<1>(b, offset_of!(CtEntryV1, flags))[0],
            _pad: [0; 7],
        }
    }

    /// The value bytes of an entry, each field at its repr(C) offset,
    /// padding zero.
    pub fn nat_v1_bytes(e: &NatEntryV1) -> Vec<u8> {
        let mut b = vec![0u8; NAT_ENTRY_V1_SIZE as usize];
        put(
            &mut b,
            offset_of!(NatEntryV1, host_addr_be),
            &e.host_addr_be.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(NatEntryV1, host_port_be),
            &e.host_port_be.to_ne_bytes(),
        );
        put(&mut b, offset_of!(NatEntryV1, flags), &[e.flags]);
        put(
            &mut b,
            offset_of!(NatEntryV1, last_seen_ns),
            &e.last_seen_ns.to_ne_bytes(),
        );
        b
    }

    pub fn ct_v1_bytes(e: &CtEntryV1) -> Vec<u8> {
        let mut b = vec![0u8; CT_ENTRY_V1_SIZE as usize];
        put(
            &mut b,
            offset_of!(CtEntryV1, last_seen_ns),
            &e.last_seen_ns.to_ne_bytes(),
        );
        put(&mut b, offset_of!(CtEntryV1, flags), &[e.flags]);
        b
    }

    pub fn nat_v2_bytes(e: &NatEntryV2) -> Vec<u8> {
        let mut b = vec![0u8; NAT_ENTRY_V2_SIZE as usize];
        put(
            &mut b,
            offset_of!(NatEntryV2, host_addr_be),
            &e.host_addr_be.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(NatEntryV2, host_port_be),
            &e.host_port_be.to_ne_bytes(),
        );
        put(&mut b, offset_of!(NatEntryV2, flags), &[e.flags]);
        put(
            &mut b,
            offset_of!(NatEntryV2, last_seen_ns),
            &e.last_seen_ns.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(NatEntryV2, client_port_be),
            &e.client_port_be.to_ne_bytes(),
        );
        put(&mut b, offset_of!(NatEntryV2, wscale), &e.wscale);
        seq_win_put(&mut b, offset_of!(NatEntryV2, seq_end), &e.seq_end);
        seq_win_put(&mut b, offset_of!(NatEntryV2, max_win), &e.max_win);
        put(
            &mut b,
            offset_of!(NatEntryV2, binding),
            &e.binding.to_ne_bytes(),
        );
        b
    }

    pub fn ct_v2_bytes(e: &CtEntryV2) -> Vec<u8> {
        let mut b = vec![0u8; CT_ENTRY_V2_SIZE as usize];
        put(
            &mut b,
            offset_of!(CtEntryV2, last_seen_ns),
            &e.last_seen_ns.to_ne_bytes(),
        );
        put(&mut b, offset_of!(CtEntryV2, flags), &[e.flags]);
        put(&mut b, offset_of!(CtEntryV2, wscale), &e.wscale);
        seq_win_put(&mut b, offset_of!(CtEntryV2, seq_end), &e.seq_end);
        seq_win_put(&mut b, offset_of!(CtEntryV2, max_win), &e.max_win);
        b
    }

    fn seq_win_put(b: &mut [u8], off: usize, v: &[u32; 2]) {
        put(b, off, &v[0].to_ne_bytes());
        put(b, off + 4, &v[1].to_ne_bytes());
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
    fn a_program_array_of_another_shape_is_made_anew_never_copied() {
        let want = shape(sys::BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 8, 0);
        assert_eq!(plan_map("BERTH_TAILS", &want, &want), Ok(Plan::Keep));
        let smaller = shape(sys::BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 4, 0);
        assert_eq!(plan_map("BERTH_TAILS", &smaller, &want), Ok(Plan::Fresh));
        // Another kind of map under its name is still refused.
        let array = shape(sys::BPF_MAP_TYPE_ARRAY, 4, 4, 8, 0);
        plan_map("BERTH_TAILS", &array, &want).unwrap_err();
    }

    #[test]
    fn fragment_tables_of_another_layout_are_made_anew_others_refused() {
        // Layout 3's `BERTH_FRAGS` (12-byte keys) and `BERTH_FRAGS6` (40).
        for (name, old_key, new_key, value) in
            [("BERTH_FRAGS", 12, 16, 16), ("BERTH_FRAGS6", 40, 44, 32)]
        {
            let want = shape(9, new_key, value, 1024, 0);
            let old = shape(9, old_key, value, 1024, 0);
            assert_eq!(plan_map(name, &old, &want), Ok(Plan::Fresh), "{name}");
            assert_eq!(plan_map(name, &want, &want), Ok(Plan::Keep));
            // Another kind of map under the name is still refused.
            plan_map(name, &shape(1, old_key, value, 1024, 0), &want).unwrap_err();
        }
        // The refusal tables share their keys and values: made anew too
        // when those change, resized when only their capacity does.
        for (name, key, value) in [("BERTH_FRAGS_DENY", 16, 16), ("BERTH_FRAGS6_DENY", 44, 32)] {
            let want = shape(9, key, value, 2048, 0);
            let other = shape(9, key + 4, value, 2048, 0);
            assert_eq!(plan_map(name, &other, &want), Ok(Plan::Fresh), "{name}");
            let smaller = shape(9, key, value, 128, 0);
            assert_eq!(plan_map(name, &smaller, &want), Ok(Plan::Resize), "{name}");
        }
        // A table that holds flows is never dropped for a new key.
        let want = shape(1, 16, 88, 1024, 0);
        plan_map("BERTH_NAT", &shape(1, 12, 88, 1024, 0), &want).unwrap_err();
    }

    #[test]
    fn a_host_address_table_made_smaller_keeps_what_fits_link_local_last() {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
        let keys = vec![
            v6("fe80::1"),
            v6("2001:db8::9"),
            v6("febf::2"),
            v6("::1"),
            v6("2001:db8::1"),
        ];
        assert_eq!(
            refill_keys(keys.clone(), 5),
            keys,
            "all fit: kept as listed"
        );
        assert_eq!(
            refill_keys(keys.clone(), 3),
            [v6("::1"), v6("2001:db8::1"), v6("2001:db8::9")]
        );
        assert_eq!(refill_keys(keys, 4)[3], v6("fe80::1"));
        // IPv4 keys (4 bytes) are never link-local by this rule.
        let v4 = vec![vec![10, 0, 0, 2], vec![10, 0, 0, 1], vec![0xfe, 0x80, 0, 1]];
        assert_eq!(
            refill_keys(v4, 2),
            [vec![10, 0, 0, 1], vec![10, 0, 0, 2]],
            "the lowest kept, no family rule"
        );
    }

    #[test]
    fn same_shapes_are_kept_and_capacity_changes_resized() {
        let want = shape(1, 16, 16, 262_144, 0);
        assert_eq!(plan_map("BERTH_CT", &want, &want), Ok(Plan::Keep));
        let small = shape(1, 16, 16, 1024, 0);
        assert_eq!(plan_map("BERTH_CT", &small, &want), Ok(Plan::Resize));
    }

    #[test]
    fn preallocated_tables_are_copied_into_tables_allocated_on_use() {
        let want = shape(1, 16, 88, 16_384, sys::BPF_F_NO_PREALLOC);
        let old = shape(1, 16, 88, 262_144, 0);
        assert_eq!(plan_map("BERTH_NAT", &old, &want), Ok(Plan::Resize));
        assert_eq!(
            resized(&old, &want),
            "capacity 262144 -> 16384, allocated on use"
        );
        let same_size = shape(1, 16, 88, 16_384, 0);
        assert_eq!(resized(&same_size, &want), "allocated on use");
        assert_eq!(resized(&want, &same_size), "preallocated");
        let v1 = shape(1, 16, 16, 262_144, 0);
        assert!(matches!(
            plan_map("BERTH_NAT", &v1, &want),
            Ok(Plan::Convert(_))
        ));
    }

    #[test]
    fn type_flags_and_unconvertible_layouts_are_refused() {
        let want = shape(1, 8, 8, 1024, 0);
        for found in [
            shape(9, 8, 8, 1024, 0),
            // BPF_F_NUMA_NODE: a flag other than preallocation.
            shape(1, 8, 8, 1024, 4),
            shape(1, 8, 12, 1024, 0),
            shape(1, 4, 8, 1024, 0),
        ] {
            let m = plan_map("BERTH_SERVICES", &found, &want).unwrap_err();
            assert_eq!((m.found, m.expected), (found, want));
        }
    }

    #[test]
    fn old_nat_and_ct_entries_have_converters_to_the_new_layouts_only() {
        let v1 = shape(1, 16, 16, 262_144, 0);
        let nat_v2 = shape(1, 16, 40, 262_144, 0);
        let nat_v3 = shape(1, 16, 88, 262_144, 0);
        let ct_v2 = shape(1, 16, 32, 262_144, 0);
        assert!(matches!(
            plan_map("BERTH_NAT", &v1, &nat_v3),
            Ok(Plan::Convert(_))
        ));
        assert!(matches!(
            plan_map("BERTH_NAT", &nat_v2, &nat_v3),
            Ok(Plan::Convert(_))
        ));
        let lru = |v| shape(9, 16, v, 2048, 0);
        assert!(matches!(
            plan_map("BERTH_NAT_NEW", &lru(40), &lru(88)),
            Ok(Plan::Convert(_))
        ));
        assert!(
            plan_map("BERTH_NAT", &nat_v3, &nat_v2).is_err(),
            "no way back"
        );
        assert!(
            plan_map("BERTH_NAT", &v1, &nat_v2).is_err(),
            "only to this build's layout"
        );
        assert!(matches!(
            plan_map("BERTH_CT", &v1, &ct_v2),
            Ok(Plan::Convert(_))
        ));
        assert!(plan_map("BERTH_NAT", &nat_v2, &v1).is_err(), "no way back");
        assert!(plan_map("BERTH_CT", &ct_v2, &v1).is_err(), "no way back");
        assert!(plan_map("BERTH_CT", &v1, &nat_v2).is_err(), "each its own");
        assert!(plan_map("BERTH_NAT", &v1, &ct_v2).is_err(), "each its own");
        let lru = |v| shape(9, 16, v, 131_072, 0);
        assert!(
            plan_map("BERTH_CT_NEW", &lru(16), &lru(32)).is_err(),
            "layout 1 had no table of unestablished flows"
        );
    }

    /// The layout a converter writes, read back through this build's own
    /// types (the compile-time checks tie them; this reads real bytes).
    fn as_current<T: Copy + Default>(bytes: &[u8]) -> T {
        assert_eq!(bytes.len(), size_of::<T>());
        // SAFETY: the length is T's; berth_maps types are repr(C) plain data.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
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

    fn reply_key() -> Vec<u8> {
        // src 172.17.0.2:80 -> dst 192.0.2.2:40000, tcp.
        let mut key = Vec::new();
        key.extend([172, 17, 0, 2, 192, 0, 2, 2]);
        key.extend(80u16.to_be_bytes());
        key.extend(40000u16.to_be_bytes());
        key.extend([6, 0, 0, 0]);
        key
    }

    #[test]
    fn a_v1_nat_entry_converts_as_agreed() {
        let old = NatEntryV1 {
            host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            host_port_be: 8080u16.to_be(),
            flags: 2,
            _pad: 0,
            last_seen_ns: 123_456_789,
        };
        let out = nat_entry_v1_to_v2(&reply_key(), &nat_v1_bytes(&old));
        assert_eq!(
            as_current::<NatEntryV2>(&out),
            NatEntryV2 {
                host_addr_be: old.host_addr_be,
                host_port_be: old.host_port_be,
                flags: berth_maps::NAT_F_REPLIED | berth_maps::NAT_F_ESTABLISHED,
                _pad: 0,
                last_seen_ns: 123_456_789,
                client_port_be: 40000u16.to_be(),
                wscale: [0xff, 0xff],
                seq_end: [0, 0],
                max_win: [0, 0],
                binding: 0,
            }
        );
    }

    #[test]
    fn a_v2_nat_entry_keeps_everything_and_starts_its_flow_log_counters_at_zero() {
        let v2 = NatEntryV2 {
            host_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            host_port_be: 8080u16.to_be(),
            flags: berth_maps::NAT_F_ESTABLISHED | berth_maps::NAT_F_SEQ_KNOWN,
            _pad: 0,
            last_seen_ns: 555,
            client_port_be: 40000u16.to_be(),
            wscale: [7, 9],
            seq_end: [100, 200],
            max_win: [300, 400],
            binding: 0,
        };
        let out = nat_entry_v2_to_v3(&reply_key(), &nat_v2_bytes(&v2));
        assert_eq!(
            as_current::<berth_maps::NatEntry>(&out),
            berth_maps::NatEntry {
                host_addr_be: v2.host_addr_be,
                host_port_be: v2.host_port_be,
                flags: v2.flags,
                _pad: 0,
                last_seen_ns: 555,
                client_port_be: v2.client_port_be,
                wscale: [7, 9],
                seq_end: [100, 200],
                max_win: [300, 400],
                binding: 0,
                packets: [0, 0],
                bytes: [0, 0],
                opened_ns: 0,
                ifindex: 0,
                tcp_flags: [0, 0],
                _pad3: 0,
            }
        );
    }

    #[test]
    fn a_v1_ct_entry_converts_as_agreed() {
        for (v1_flags, want) in [
            (0, berth_maps::CT_F_ESTABLISHED),
            (2, berth_maps::CT_F_REPLIED | berth_maps::CT_F_ESTABLISHED),
            (
                1 | 2,
                berth_maps::CT_F_CLOSING | berth_maps::CT_F_REPLIED | berth_maps::CT_F_ESTABLISHED,
            ),
        ] {
            let old = CtEntryV1 {
                last_seen_ns: 987_654_321,
                flags: v1_flags,
                _pad: [0; 7],
            };
            let out = ct_entry_v1_to_v2(&reply_key(), &ct_v1_bytes(&old));
            assert_eq!(
                as_current::<berth_maps::CtEntry>(&out),
                berth_maps::CtEntry {
                    last_seen_ns: 987_654_321,
                    flags: want,
                    _pad: 0,
                    wscale: [0xff, 0xff],
                    seq_end: [0, 0],
                    max_win: [0, 0],
                    _pad2: 0,
                },
                "layout 1 flags {v1_flags:#x}"
            );
        }
    }

    #[test]
    fn bits_layout_1_never_had_are_not_carried_into_sequence_tracking() {
        // A converted flow must not claim sequence state it does not have
        // (SEQ_KNOWN with zero windows would make every segment out of
        // window), whatever junk the old entry held.
        let nat = nat_v1_bytes(&NatEntryV1 {
            flags: 0xff,
            ..NatEntryV1::default()
        });
        let nat = as_current::<berth_maps::NatEntry>(&nat_entry_v1_to_v3(&reply_key(), &nat));
        assert_eq!(
            nat.flags,
            berth_maps::NAT_F_CLOSING | berth_maps::NAT_F_REPLIED | berth_maps::NAT_F_ESTABLISHED
        );
        let ct = ct_v1_bytes(&CtEntryV1 {
            flags: 0xff,
            ..CtEntryV1::default()
        });
        let ct = as_current::<berth_maps::CtEntry>(&ct_entry_v1_to_v2(&reply_key(), &ct));
        assert_eq!(
            ct.flags,
            berth_maps::CT_F_CLOSING | berth_maps::CT_F_REPLIED | berth_maps::CT_F_ESTABLISHED
        );
    }

    #[test]
    fn a_layout_2_service_value_keeps_its_container_and_gets_no_counters_slot() {
        let old = [172, 17, 0, 2, 0, 80, 0, 0];
        let out = backend_v2_to_v3(&[0; 8], &old);
        assert_eq!(
            as_current::<berth_maps::Backend>(&out),
            berth_maps::Backend {
                addr_be: u32::from_ne_bytes([172, 17, 0, 2]),
                port_be: 80u16.to_be(),
                _pad: 0,
                binding: 0,
            }
        );
        let found = shape(1, 8, 8, 4096, sys::BPF_F_NO_PREALLOC);
        let want = shape(1, 8, 12, 4096, sys::BPF_F_NO_PREALLOC);
        assert!(matches!(
            plan_map(berth_maps::SERVICES_MAP, &found, &want),
            Ok(Plan::Convert(_))
        ));
    }

    #[test]
    fn the_byte_writers_follow_the_repr_c_layouts() {
        let v2 = NatEntryV2 {
            host_addr_be: 0x0102_0304,
            host_port_be: 0x0506,
            flags: 7,
            _pad: 0,
            last_seen_ns: 0x1112_1314_1516_1718,
            client_port_be: 0x2122,
            wscale: [3, 4],
            seq_end: [0x3132_3334, 0x3536_3738],
            max_win: [0x4142_4344, 0x4546_4748],
            binding: 0x5152_5354,
        };
        assert_eq!(as_current::<NatEntryV2>(&nat_v2_bytes(&v2)), v2);
        let ct = CtEntryV2 {
            last_seen_ns: 0x1112_1314_1516_1718,
            flags: 9,
            _pad: 0,
            wscale: [5, 6],
            seq_end: [0x3132_3334, 0x3536_3738],
            max_win: [0x4142_4344, 0x4546_4748],
            _pad2: 0,
        };
        assert_eq!(as_current::<CtEntryV2>(&ct_v2_bytes(&ct)), ct);
        let v1 = NatEntryV1 {
            host_addr_be: 0x0102_0304,
            host_port_be: 0x0506,
            flags: 2,
            _pad: 0,
            last_seen_ns: 0x1112_1314_1516_1718,
        };
        assert_eq!(as_current::<NatEntryV1>(&nat_v1_bytes(&v1)), v1);
        let c1 = CtEntryV1 {
            last_seen_ns: 0x1112_1314_1516_1718,
            flags: 3,
            _pad: [0; 7],
        };
        assert_eq!(as_current::<CtEntryV1>(&ct_v1_bytes(&c1)), c1);
    }
}
