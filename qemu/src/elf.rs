//! A minimal ELF64 little-endian reader: enough to tell whether a binary is static (no
//! `PT_INTERP`, no `DT_NEEDED`).

use anyhow::{bail, Context, Result};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_LOAD: u32 = 1;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// What a static-ness check needs to know about an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    pub has_dynamic: bool,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b.get(off..off + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes(s.try_into()?))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    let s = b.get(off..off + 8).context("ELF truncated")?;
    Ok(u64::from_le_bytes(s.try_into()?))
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Parses the program headers and the dynamic section of an ELF64 LE file.
pub fn inspect(b: &[u8]) -> Result<ElfInfo> {
    if b.get(0..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        bail!("not ELF64 little-endian");
    }
    let phoff = u64_at(b, 0x20)? as usize;
    let phentsize = u16_at(b, 0x36)? as usize;
    let phnum = u16_at(b, 0x38)? as usize;
    if phentsize < 56 || phnum > 4096 {
        bail!("implausible program header table ({phnum} x {phentsize})");
    }
    let mut phdrs = Vec::new();
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        phdrs.push(Phdr {
            kind: u32_at(b, o)?,
            offset: u64_at(b, o + 8)?,
            vaddr: u64_at(b, o + 16)?,
            filesz: u64_at(b, o + 32)?,
        });
    }
    let mut info = ElfInfo {
        interpreter: None,
        needed: Vec::new(),
        has_dynamic: false,
    };
    for p in &phdrs {
        if p.kind == PT_INTERP {
            let s = b
                .get(p.offset as usize..(p.offset + p.filesz) as usize)
                .context("PT_INTERP out of range")?;
            info.interpreter = Some(
                String::from_utf8_lossy(s)
                    .trim_end_matches('\0')
                    .to_string(),
            );
        }
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else {
        return Ok(info);
    };
    info.has_dynamic = true;
    let mut entries = Vec::new();
    let mut o = dynamic.offset as usize;
    let end = (dynamic.offset + dynamic.filesz) as usize;
    while o + 16 <= end {
        let tag = u64_at(b, o)?;
        let val = u64_at(b, o + 8)?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, val));
        o += 16;
    }
    let strtab_vaddr = entries
        .iter()
        .find(|(t, _)| *t == DT_STRTAB)
        .map(|(_, v)| *v);
    // DT_STRTAB holds a virtual address; map it to a file offset through the PT_LOAD segments.
    let strtab_off = strtab_vaddr.and_then(|va| {
        phdrs
            .iter()
            .find(|p| p.kind == PT_LOAD && va >= p.vaddr && va < p.vaddr + p.filesz)
            .map(|p| (va - p.vaddr + p.offset) as usize)
    });
    for (tag, val) in &entries {
        if *tag == DT_NEEDED {
            let name = match strtab_off {
                Some(s) => {
                    let start = s + *val as usize;
                    let rest = b.get(start..).context("DT_NEEDED name out of range")?;
                    let len = rest.iter().position(|c| *c == 0).unwrap_or(rest.len());
                    String::from_utf8_lossy(&rest[..len]).into_owned()
                }
                None => format!("<string at {val}>"),
            };
            info.needed.push(name);
        }
    }
    Ok(info)
}

/// Fails unless the file is a static executable.
pub fn ensure_static(path: &std::path::Path) -> Result<()> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let info = inspect(&b).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(i) = info.interpreter {
        bail!("{} is dynamic: PT_INTERP {i}", path.display());
    }
    if !info.needed.is_empty() {
        bail!(
            "{} is dynamic: DT_NEEDED {}",
            path.display(),
            info.needed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_host_binary() {
        let b = std::fs::read("/bin/ls").unwrap();
        let i = inspect(&b).unwrap();
        assert!(i.interpreter.unwrap().contains("ld-linux"));
        assert!(
            i.needed.iter().any(|n| n.starts_with("libc.so")),
            "{:?}",
            i.needed
        );
    }

    #[test]
    fn static_busybox() {
        ensure_static(std::path::Path::new("/bin/busybox")).unwrap();
    }

    #[test]
    fn garbage() {
        assert!(inspect(b"nope").is_err());
        assert!(inspect(b"\x7fELF\x02\x01").is_err());
        let mut b = std::fs::read("/bin/ls").unwrap();
        b.truncate(100);
        assert!(inspect(&b).is_err());
    }
}
