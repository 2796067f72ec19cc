//! The MBR partition table in sector 0: four primary entries, and whether it is the
//! protective MBR in front of a GPT.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::Partition;

/// A parsed MBR.
#[derive(Debug, Clone)]
pub struct Mbr {
    /// Whether an entry has type 0xEE (a GPT follows).
    pub protective: bool,
    /// Used primary partitions (type non-zero, size non-zero).
    pub partitions: Vec<Partition>,
}

/// A name for the common partition type bytes.
pub fn type_name(t: u8) -> &'static str {
    match t {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x0b | 0x0c => "FAT32",
        0x07 => "NTFS/exFAT",
        0x05 | 0x0f => "extended",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0xee => "GPT protective",
        0xef => "EFI system",
        _ => "other",
    }
}

/// Parses sector 0; `None` without the 0x55AA signature.
pub fn parse(sector: &[u8]) -> Option<Mbr> {
    if sector.len() < 512 || sector[510] != 0x55 || sector[511] != 0xaa {
        return None;
    }
    let mut protective = false;
    let mut partitions = Vec::new();
    for i in 0..4 {
        let e = &sector[446 + i * 16..462 + i * 16];
        let kind = e[4];
        let start = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        let sectors = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
        if kind == 0 || sectors == 0 {
            continue;
        }
        if kind == 0xee {
            protective = true;
        }
        partitions.push(Partition {
            start,
            sectors,
            kind: format!("{} (type {kind:#04x})", type_name(kind)),
            name: String::new(),
            fat_type: matches!(kind, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef),
        });
    }
    Some(Mbr {
        protective,
        partitions,
    })
}
