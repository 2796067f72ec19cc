//! Kernel symbol lookup for backtraces: GRUB loads the ELF symbol and string tables
//! (multiboot2 ELF-sections tag); return addresses are matched to function symbols and
//! Rust's legacy symbol mangling is undone for printing.

use core::fmt;

use spin::Once;

use super::io::phys_bytes;

/// Where GRUB put the symbol table and its string table (physical ranges).
#[derive(Debug, Clone, Copy)]
pub struct SymbolTables {
    /// `.symtab` address and size.
    pub symtab: (u64, u64),
    /// Matching `.strtab` address and size.
    pub strtab: (u64, u64),
}

static TABLES: Once<SymbolTables> = Once::new();

const SYM_SIZE: usize = 24;
const STT_FUNC: u8 = 2;

/// Reads the section headers GRUB passed and finds the symbol tables it loaded.
pub fn find(info: &multiboot2::BootInformation) -> Option<SymbolTables> {
    // (type, address, size, link) of up to 64 sections; no heap exists yet.
    let mut sections = [(0u32, 0u64, 0u64, 0u32); 64];
    let mut n = 0;
    for h in info.elf_sections_tag()?.sections().take(64) {
        sections[n] = (h.sh_type, h.sh_addr, h.sh_size, h.sh_link);
        n += 1;
    }
    let sections = &sections[..n];
    let &(_, sym_addr, sym_size, link) = sections.iter().find(|s| s.0 == 2 && s.1 != 0)?;
    let &(_, str_addr, str_size, _) = sections.get(link as usize).filter(|s| s.1 != 0)?;
    Some(SymbolTables {
        symtab: (sym_addr, sym_size),
        strtab: (str_addr, str_size),
    })
}

/// Makes the tables available to `lookup` (after their memory was reserved).
pub fn install(t: SymbolTables) {
    TABLES.call_once(|| t);
}

/// The function containing `addr` and the offset into it.
pub fn lookup(addr: u64) -> Option<(Demangled, u64)> {
    let t = TABLES.get()?;
    let syms = phys_bytes(t.symtab.0, t.symtab.1 as usize);
    let strs = phys_bytes(t.strtab.0, t.strtab.1 as usize);
    let mut best: Option<(u64, u32)> = None;
    for s in syms.chunks_exact(SYM_SIZE) {
        if s[4] & 0xf != STT_FUNC {
            continue;
        }
        let value = u64::from_le_bytes(s[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(s[16..24].try_into().ok()?);
        if value <= addr && addr < value + size.max(1) && best.is_none_or(|(v, _)| value > v) {
            best = Some((value, u32::from_le_bytes(s[0..4].try_into().ok()?)));
        }
    }
    let (value, name_off) = best?;
    let name = strs.get(name_off as usize..)?;
    let end = name.iter().position(|&b| b == 0)?;
    Some((Demangled(&name[..end]), addr - value))
}

/// A symbol name, printed demangled (Rust legacy mangling `_ZN...E`).
pub struct Demangled(&'static [u8]);

impl fmt::Display for Demangled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.0;
        let Some(mut rest) = raw.strip_prefix(b"_ZN") else {
            return f.write_str(core::str::from_utf8(raw).unwrap_or("?"));
        };
        let mut first = true;
        while let Some(digits) = rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .filter(|&d| d > 0)
        {
            let len: usize = core::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let Some(part) = rest.get(digits..digits + len) else {
                break;
            };
            rest = &rest[digits + len..];
            // The last component of a legacy symbol is its hash, `h` + 16 hex digits.
            if part.len() == 17 && part[0] == b'h' && part[1..].iter().all(u8::is_ascii_hexdigit) {
                continue;
            }
            if !first {
                f.write_str("::")?;
            }
            first = false;
            write_unescaped(f, part)?;
        }
        Ok(())
    }
}

fn write_unescaped(f: &mut fmt::Formatter<'_>, part: &[u8]) -> fmt::Result {
    let part = part
        .strip_prefix(b"_$")
        .map_or(part, |p| &part[part.len() - p.len() - 1..]);
    let mut i = 0;
    while i < part.len() {
        let rest = &part[i..];
        let table: [(&[u8], &str); 10] = [
            (b"$LT$", "<"),
            (b"$GT$", ">"),
            (b"$RF$", "&"),
            (b"$BP$", "*"),
            (b"$C$", ","),
            (b"$u20$", " "),
            (b"$u27$", "'"),
            (b"$u7b$", "{"),
            (b"$u7d$", "}"),
            (b"..", "::"),
        ];
        if let Some((pat, rep)) = table.iter().find(|(p, _)| rest.starts_with(p)) {
            f.write_str(rep)?;
            i += pat.len();
        } else {
            f.write_str(core::str::from_utf8(&rest[..1]).unwrap_or("?"))?;
            i += 1;
        }
    }
    Ok(())
}
