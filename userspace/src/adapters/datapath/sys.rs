//! The few bpf(2) commands berth needs on maps and links it did not load
//! itself (pins of another version, `berth status`), on raw bytes: a map
//! whose layout differs from this build's cannot go through typed aya maps.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
/// `map_flags`: allocate each entry when it is inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// `union bpf_attr` is 8-byte aligned; 128 bytes cover every command here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn put_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable bpf_attr of the size given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size_of::<Attr>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A map's or link's fd from its pin.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64)
        .put_u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// What `bpf_map_info` says of a map's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    pub fn type_name(&self) -> String {
        match self.map_type {
            BPF_MAP_TYPE_HASH => "hash".into(),
            BPF_MAP_TYPE_ARRAY => "array".into(),
            BPF_MAP_TYPE_PROG_ARRAY => "prog_array".into(),
            BPF_MAP_TYPE_PERCPU_HASH => "percpu_hash".into(),
            BPF_MAP_TYPE_PERCPU_ARRAY => "percpu_array".into(),
            BPF_MAP_TYPE_LRU_HASH => "lru_hash".into(),
            BPF_MAP_TYPE_LRU_PERCPU_HASH => "lru_percpu_hash".into(),
            t => format!("type {t}"),
        }
    }

    pub fn is_array(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY
        )
    }

    /// An LRU hash makes room by evicting instead of refusing.
    pub fn is_lru(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_LRU_HASH | BPF_MAP_TYPE_LRU_PERCPU_HASH
        )
    }

    pub fn is_percpu(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH
        )
    }
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, key {} B, value {} B, {} entries, flags {:#x}",
            self.type_name(),
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags
        )
    }
}

pub fn map_shape(fd: &OwnedFd) -> io::Result<MapShape> {
    // bpf_map_info: type, id, key_size, value_size, max_entries, map_flags.
    let mut info = [0u32; 24];
    info_by_fd(fd, info.as_mut_ptr().cast(), size_of_val(&info))?;
    Ok(MapShape {
        map_type: info[0],
        key_size: info[2],
        value_size: info[3],
        max_entries: info[4],
        flags: info[5],
    })
}

/// The head of `bpf_link_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// tcx / xdp: the interface (0 once it is gone). cgroup: the low half
    /// of the cgroup id.
    pub target: u64,
}

pub const BPF_LINK_TYPE_CGROUP: u32 = 3;
pub const BPF_LINK_TYPE_XDP: u32 = 6;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

pub fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    let mut info = [0u64; 16];
    info_by_fd(fd, info.as_mut_ptr().cast(), size_of_val(&info))?;
    let head = info[0].to_ne_bytes();
    let second = info[1].to_ne_bytes();
    let link_type = u32::from_ne_bytes(head[0..4].try_into().unwrap_or_default());
    let id = u32::from_ne_bytes(head[4..8].try_into().unwrap_or_default());
    let prog_id = u32::from_ne_bytes(second[0..4].try_into().unwrap_or_default());
    // The union starts at offset 16: u64 cgroup_id, or u32 ifindex.
    let target = match link_type {
        BPF_LINK_TYPE_CGROUP => info[2],
        _ => u64::from(info[2] as u32),
    };
    Ok(LinkInfo {
        link_type,
        id,
        prog_id,
        target,
    })
}

fn info_by_fd(fd: &OwnedFd, buf: *mut u8, len: usize) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u32(4, len as u32)
        .put_u64(8, buf as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map(drop)
}

pub fn map_create(name: &str, shape: &MapShape) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, shape.map_type)
        .put_u32(4, shape.key_size)
        .put_u32(8, shape.value_size)
        .put_u32(12, shape.max_entries)
        .put_u32(16, shape.flags);
    // map_name[16] at offset 28, NUL-terminated.
    let n = name.len().min(15);
    a.0[28..28 + n].copy_from_slice(&name.as_bytes()[..n]);
    let fd = bpf(BPF_MAP_CREATE, &mut a)?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The key after `key` (the first with `None`); `None` at the end.
pub fn map_next_key(fd: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u64(8, key.map_or(0, |k| k.as_ptr() as u64))
        .put_u64(16, next.as_mut_ptr() as u64);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `value` must hold the value (per-CPU maps: one 8-byte-aligned slot per
/// possible CPU). Returns false when the key is absent.
pub fn map_lookup(fd: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u64(8, key.as_ptr() as u64)
        .put_u64(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn map_update(fd: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u64(8, key.as_ptr() as u64)
        .put_u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Inserts only when the key is absent (`BPF_NOEXIST`); false when present.
pub fn map_insert_new(fd: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<bool> {
    const BPF_NOEXIST: u64 = 1;
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32)
        .put_u64(8, key.as_ptr() as u64)
        .put_u64(16, value.as_ptr() as u64)
        .put_u64(24, BPF_NOEXIST);
    match bpf(BPF_MAP_UPDATE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key of a map, as raw bytes.
pub fn map_keys(fd: &OwnedFd, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut next = vec![0u8; key_size];
    while map_next_key(fd, keys.last().map(Vec::as_slice), &mut next)? {
        keys.push(next.clone());
    }
    Ok(keys)
}

/// How many entries a hash map holds (one syscall per entry).
pub fn map_count(fd: &OwnedFd, key_size: usize) -> io::Result<u64> {
    let mut n = 0u64;
    let mut cur = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    while map_next_key(fd, (!first).then_some(cur.as_slice()), &mut next)? {
        std::mem::swap(&mut cur, &mut next);
        first = false;
        n += 1;
    }
    Ok(n)
}

/// The bytes a lookup of one value fills.
pub fn value_buf_len(shape: &MapShape) -> io::Result<usize> {
    let v = shape.value_size as usize;
    if shape.is_percpu() {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(v.div_ceil(8) * 8 * cpus)
    } else {
        Ok(v)
    }
}
