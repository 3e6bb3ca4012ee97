//! Builds the eBPF crate (nightly, bpfel-unknown-none, build-std) and leaves
//! the object in `OUT_DIR`, and a deflated copy (`berth.deflate`) for the
//! binary to embed. `cargo xtask
//! bootstrap` installs the pieces; their location is added to PATH here so a
//! plain `cargo build` works once bootstrapped.
use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    if let Some(home) = env::var_os("HOME") {
        let cache = PathBuf::from(home).join(".cache/berth");
        if let Ok(entries) = std::fs::read_dir(&cache) {
            let mut dirs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("bpf-linker").exists())
                .collect();
            dirs.sort();
            if let Some(dir) = dirs.pop() {
                let path = env::var_os("PATH").unwrap_or_default();
                let mut all = vec![dir];
                all.extend(env::split_paths(&path));
                env::set_var("PATH", env::join_paths(all)?);
            }
        }
    }
    let ebpf = aya_build::Package {
        name: "berth-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())?;
    // AYA_BUILD_SKIP=1 (for quick checks of userspace code) builds nothing;
    // leave an empty object so the crate still compiles. Loading it fails.
    let obj = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("berth");
    if !obj.exists() {
        std::fs::write(&obj, b"")?;
    }
    strip_dwarf(&obj)?;
    deflate(&obj)?;
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../maps")
    );
    Ok(())
}

/// Writes `<object>.deflate`, what the binary embeds. The daemon reads
/// the object once, when it loads the programs; embedded as it is, its
/// pages would stay in the daemon's resident memory for good (issue 11).
/// Deflated, the binary carries a quarter of it, and the inflated copy
/// is heap the daemon frees as soon as the programs are loaded.
fn deflate(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path)?;
    let packed = miniz_oxide::deflate::compress_to_vec(&data, 10);
    std::fs::write(path.with_extension("deflate"), packed)?;
    Ok(())
}

/// Drops what no loader reads from the linked object: the DWARF sections
/// (and their relocations), and the relocations of `.BTF` and `.BTF.ext`.
/// The loader and the verifier use the BTF, which bpf-linker made from the
/// DWARF; the DWARF itself is most of the object's size, which the binary
/// would embed and every daemon start would page in while parsing it.
/// `.BTF.ext` locates its function and line records by section offsets,
/// not through relocations (libbpf skips `.rel.BTF.ext` by name; aya reads
/// none): its relocation section, a quarter of what is left, is dead
/// weight in the daemon's memory.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path)?;
    if data.is_empty() {
        return Ok(());
    }
    let mut elf = object::build::elf::Builder::read(&*data)?;
    let mut dropped = false;
    for s in &mut elf.sections {
        let name = s.name.as_slice();
        if name.starts_with(b".debug")
            || name.starts_with(b".rel.debug")
            || name == b".rel.BTF"
            || name == b".rel.BTF.ext"
        {
            s.delete = true;
            dropped = true;
        }
    }
    if !dropped {
        return Ok(());
    }
    elf.delete_orphans();
    // LLVM keeps section names in .strtab; the writer wants their own table.
    if !elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let names = elf.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut out = Vec::new();
    elf.write(&mut out)?;
    std::fs::write(path, out)?;
    Ok(())
}
