//! Builds the eBPF crate (nightly, bpfel-unknown-none, build-std) and leaves
//! the object in `OUT_DIR` for `include_bytes_aligned!`. `cargo xtask
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
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../maps")
    );
    Ok(())
}

/// Drops the DWARF sections (and their relocations) from the linked object.
/// The loader and the verifier use its BTF, which bpf-linker made from the
/// DWARF; the DWARF itself is most of the object's size, which the binary
/// would embed and every daemon start would page in while parsing it.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path)?;
    if data.is_empty() {
        return Ok(());
    }
    let mut elf = object::build::elf::Builder::read(&*data)?;
    let mut dropped = false;
    for s in &mut elf.sections {
        let name = s.name.as_slice();
        if name.starts_with(b".debug") || name.starts_with(b".rel.debug") {
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
