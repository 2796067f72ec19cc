//! The GUID partition table: header at LBA 1 (signature, CRC32 of header and entry
//! array), then the partition entries.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::{Disk, DiskError, Partition};

/// Why the GPT is unusable.
#[derive(Debug, Clone)]
pub enum GptError {
    /// Reading the header or entries failed.
    Read(DiskError),
    /// LBA 1 does not start with `EFI PART`.
    Signature,
    /// The header's CRC32 does not match.
    HeaderCrc,
    /// The entry array's CRC32 does not match.
    EntriesCrc,
    /// Entry size or count out of range.
    BadGeometry,
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::Read(e) => write!(f, "reading the GPT: {e}"),
            GptError::Signature => f.write_str("no `EFI PART` signature at LBA 1"),
            GptError::HeaderCrc => f.write_str("GPT header CRC32 mismatch"),
            GptError::EntriesCrc => f.write_str("GPT partition array CRC32 mismatch"),
            GptError::BadGeometry => f.write_str("GPT entry size or count out of range"),
        }
    }
}

/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320) as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Formats a GPT GUID (mixed-endian) as text.
fn guid_text(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le32(g, 0),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

/// Names of the partition types worth naming, and whether they may hold FAT.
fn type_info(guid: &str) -> (&'static str, bool) {
    match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => ("EFI system", true),
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => ("Microsoft basic data", true),
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => ("Linux filesystem", false),
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => ("Linux swap", false),
        "21686148-6449-6E6F-744E-656564454649" => ("BIOS boot", false),
        _ => ("other", false),
    }
}

/// Reads the primary GPT of `disk`.
pub fn read(disk: &mut Disk) -> Result<Vec<Partition>, GptError> {
    let ss = u64::from(disk.dev.sector_size());
    let hdr = disk.read_bytes(ss, ss as usize).map_err(GptError::Read)?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(GptError::Signature);
    }
    let hsize = le32(&hdr, 12) as usize;
    if !(92..=hdr.len()).contains(&hsize) {
        return Err(GptError::BadGeometry);
    }
    let mut h = hdr[..hsize].to_vec();
    let want = le32(&h, 16);
    h[16..20].fill(0);
    if crc32(&h) != want {
        return Err(GptError::HeaderCrc);
    }
    let entries_lba = le64(&hdr, 72);
    let count = le32(&hdr, 80) as usize;
    let esize = le32(&hdr, 84) as usize;
    if !(128..=4096).contains(&esize) || count > 4096 || count == 0 {
        return Err(GptError::BadGeometry);
    }
    let array = disk
        .read_bytes(entries_lba * ss, count * esize)
        .map_err(GptError::Read)?;
    if crc32(&array) != le32(&hdr, 88) {
        return Err(GptError::EntriesCrc);
    }
    let mut parts = Vec::new();
    for e in array.chunks_exact(esize) {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let t = guid_text(&e[0..16]);
        let (tname, fat_type) = type_info(&t);
        let first = le64(e, 32);
        let last = le64(e, 40);
        let name: String = char::decode_utf16(
            e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0),
        )
        .map(|c| c.unwrap_or('?'))
        .collect();
        parts.push(Partition {
            start: first,
            sectors: last.saturating_sub(first) + 1,
            kind: if tname == "other" { t } else { tname.into() },
            name,
            fat_type,
        });
    }
    Ok(parts)
}
