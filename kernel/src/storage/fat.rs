//! Read-only FAT16/FAT32 file systems: the boot sector's parameters, cluster chains,
//! directories with long (VFAT) file names, and reading a whole file into a buffer in
//! large contiguous runs.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::{Disk, DiskError};

/// Why a FAT operation failed.
#[derive(Debug, Clone)]
pub enum FatError {
    /// The disk read failed.
    Read(DiskError),
    /// The boot sector is not a FAT boot sector (which field is wrong).
    NotFat(&'static str),
    /// FAT12 volumes are not supported.
    Fat12,
    /// No such file or directory.
    NotFound(String),
    /// A path component is a file.
    NotADirectory(String),
    /// A directory was named where a file is needed.
    IsADirectory(String),
    /// The cluster chain is broken (free, bad or out-of-range cluster, or a loop).
    BadChain(u32),
    /// The destination buffer is smaller than the file.
    BufferTooSmall,
}

impl fmt::Display for FatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatError::Read(e) => write!(f, "disk read failed: {e}"),
            FatError::NotFat(why) => write!(f, "not a FAT file system ({why})"),
            FatError::Fat12 => f.write_str("FAT12 is not supported (FAT16 and FAT32 are)"),
            FatError::NotFound(p) => write!(f, "`{p}`: no such file or directory"),
            FatError::NotADirectory(p) => write!(f, "`{p}` is not a directory"),
            FatError::IsADirectory(p) => write!(f, "`{p}` is a directory"),
            FatError::BadChain(c) => write!(f, "broken cluster chain at cluster {c}"),
            FatError::BufferTooSmall => f.write_str("buffer smaller than the file"),
        }
    }
}

impl From<DiskError> for FatError {
    fn from(e: DiskError) -> Self {
        FatError::Read(e)
    }
}

/// FAT variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 16-bit FAT entries, fixed root directory.
    Fat16,
    /// 28-bit FAT entries, root directory in clusters.
    Fat32,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Long name if present, else the 8.3 name.
    pub name: String,
    /// Whether it is a directory.
    pub dir: bool,
    /// Size in bytes (files).
    pub size: u32,
    /// First cluster.
    pub cluster: u32,
}

/// A mounted (read-only) FAT volume: only parameters; every call takes the disk.
#[derive(Debug, Clone, Copy)]
pub struct Volume {
    /// Variant.
    pub kind: Kind,
    /// Byte offset of the volume on the disk.
    base: u64,
    /// Bytes per cluster.
    cluster_bytes: u64,
    /// Byte offset (from the disk start) of the first FAT.
    fat_at: u64,
    /// Byte offset of cluster 2.
    data_at: u64,
    /// FAT16: byte offset and size of the fixed root directory.
    root16: (u64, u64),
    /// FAT32: first cluster of the root directory.
    root32: u32,
    /// Highest valid cluster number + 1.
    cluster_end: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Quick test whether a sector looks like a FAT boot sector (jump, sector size,
/// signature).
pub fn looks_like_fat(s: &[u8]) -> bool {
    s.len() >= 512
        && (s[0] == 0xeb || s[0] == 0xe9)
        && s[510] == 0x55
        && s[511] == 0xaa
        && matches!(le16(s, 11), 512 | 1024 | 2048 | 4096)
        && s[13].is_power_of_two()
        && s[16] >= 1
}

impl Volume {
    /// Reads and checks the boot sector at disk sector `start`.
    pub fn open(disk: &mut Disk, start: u64) -> Result<Volume, FatError> {
        let base = start * u64::from(disk.dev.sector_size());
        let bs = disk.read_bytes(base, 512)?;
        if bs[510] != 0x55 || bs[511] != 0xaa {
            return Err(FatError::NotFat("no boot sector signature"));
        }
        let bps = u64::from(le16(&bs, 11));
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(FatError::NotFat("bytes per sector"));
        }
        let spc = u64::from(bs[13]);
        if spc == 0 || !spc.is_power_of_two() {
            return Err(FatError::NotFat("sectors per cluster"));
        }
        let reserved = u64::from(le16(&bs, 14));
        let fats = u64::from(bs[16]);
        if reserved == 0 || fats == 0 {
            return Err(FatError::NotFat("reserved sectors or FAT count"));
        }
        let root_entries = u64::from(le16(&bs, 17));
        let total = match le16(&bs, 19) {
            0 => u64::from(le32(&bs, 32)),
            n => u64::from(n),
        };
        let fat_size = match le16(&bs, 22) {
            0 => u64::from(le32(&bs, 36)),
            n => u64::from(n),
        };
        if fat_size == 0 || total == 0 {
            return Err(FatError::NotFat("FAT size or total sectors"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let first_data = reserved + fats * fat_size + root_sectors;
        if first_data >= total {
            return Err(FatError::NotFat("data region outside the volume"));
        }
        let clusters = (total - first_data) / spc;
        let kind = if clusters < 4085 {
            return Err(FatError::Fat12);
        } else if clusters < 65525 {
            Kind::Fat16
        } else {
            Kind::Fat32
        };
        let max_by_fat = match kind {
            Kind::Fat16 => fat_size * bps / 2,
            Kind::Fat32 => fat_size * bps / 4,
        };
        if clusters + 2 > max_by_fat {
            return Err(FatError::NotFat("FAT too small for the cluster count"));
        }
        Ok(Volume {
            kind,
            base,
            cluster_bytes: spc * bps,
            fat_at: base + reserved * bps,
            data_at: base + first_data * bps,
            root16: (
                base + (reserved + fats * fat_size) * bps,
                root_sectors * bps,
            ),
            root32: le32(&bs, 44),
            cluster_end: (clusters + 2) as u32,
        })
    }

    /// `FAT16` / `FAT32`.
    pub fn kind_text(&self) -> &'static str {
        match self.kind {
            Kind::Fat16 => "FAT16",
            Kind::Fat32 => "FAT32",
        }
    }

    fn cluster_at(&self, c: u32) -> u64 {
        self.data_at + u64::from(c - 2) * self.cluster_bytes
    }

    /// The chain of clusters from `first`, as runs (first cluster, count) of
    /// consecutive clusters.
    fn runs(&self, disk: &mut Disk, first: u32) -> Result<Vec<(u32, u32)>, FatError> {
        const CHUNK: u64 = 64 << 10;
        let width: u64 = match self.kind {
            Kind::Fat16 => 2,
            Kind::Fat32 => 4,
        };
        let mut cache: Option<(u64, Vec<u8>)> = None;
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let mut c = first;
        let mut steps = 0u32;
        loop {
            if c < 2 || c >= self.cluster_end || steps >= self.cluster_end {
                return Err(FatError::BadChain(c));
            }
            steps += 1;
            match runs.last_mut() {
                Some((s, n)) if *s + *n == c => *n += 1,
                _ => runs.push((c, 1)),
            }
            let off = u64::from(c) * width;
            let chunk = off / CHUNK;
            if cache.as_ref().is_none_or(|(k, _)| *k != chunk) {
                cache = Some((
                    chunk,
                    disk.read_bytes(self.fat_at + chunk * CHUNK, CHUNK as usize)?,
                ));
            }
            let data = &cache.as_ref().map_or(&[][..], |(_, d)| d.as_slice());
            let i = (off % CHUNK) as usize;
            let next = match self.kind {
                Kind::Fat16 => {
                    let v = u32::from(le16(data, i));
                    if v >= 0xfff8 {
                        break;
                    }
                    v
                }
                Kind::Fat32 => {
                    let v = le32(data, i) & 0x0fff_ffff;
                    if v >= 0x0fff_fff8 {
                        break;
                    }
                    v
                }
            };
            c = next;
        }
        Ok(runs)
    }

    /// Raw bytes of a directory (the FAT16 root, or a cluster chain).
    fn dir_bytes(&self, disk: &mut Disk, cluster: u32) -> Result<Vec<u8>, FatError> {
        if cluster == 0 && self.kind == Kind::Fat16 {
            return Ok(disk.read_bytes(self.root16.0, self.root16.1 as usize)?);
        }
        let first = if cluster == 0 { self.root32 } else { cluster };
        let mut out = Vec::new();
        for (s, n) in self.runs(disk, first)? {
            let bytes = disk.read_bytes(
                self.cluster_at(s),
                (u64::from(n) * self.cluster_bytes) as usize,
            )?;
            out.extend_from_slice(&bytes);
            if out.len() > 4 << 20 {
                break;
            }
        }
        Ok(out)
    }

    /// Entries of the directory starting at `cluster` (0 = root), without `.`/`..`
    /// and volume labels.
    fn read_dir(&self, disk: &mut Disk, cluster: u32) -> Result<Vec<Entry>, FatError> {
        let raw = self.dir_bytes(disk, cluster)?;
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
        let mut lfn_sum = 0u8;
        for e in raw.chunks_exact(32) {
            match e[0] {
                0 => break,
                0xe5 => {
                    lfn.clear();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3f == 0x0f {
                let mut part = [0u16; 13];
                for (k, at) in (1..11)
                    .step_by(2)
                    .chain((14..26).step_by(2))
                    .chain((28..32).step_by(2))
                    .enumerate()
                {
                    part[k] = le16(e, at);
                }
                if e[0] & 0x40 != 0 {
                    lfn.clear();
                }
                lfn_sum = e[13];
                lfn.push((e[0] & 0x1f, part));
                continue;
            }
            if attr & 0x08 != 0 {
                lfn.clear();
                continue;
            }
            let short = &e[0..11];
            let sum = short.iter().fold(0u8, |s, &b| {
                ((s & 1) << 7).wrapping_add(s >> 1).wrapping_add(b)
            });
            let name = if !lfn.is_empty() && sum == lfn_sum {
                lfn.sort_by_key(|(o, _)| *o);
                let units: Vec<u16> = lfn
                    .iter()
                    .flat_map(|(_, p)| p.iter().copied())
                    .take_while(|&u| u != 0 && u != 0xffff)
                    .collect();
                char::decode_utf16(units)
                    .map(|c| c.unwrap_or('?'))
                    .collect()
            } else {
                short_name(e)
            };
            lfn.clear();
            if name == "." || name == ".." {
                continue;
            }
            let hi = match self.kind {
                Kind::Fat32 => u32::from(le16(e, 20)) << 16,
                Kind::Fat16 => 0,
            };
            out.push(Entry {
                name,
                dir: attr & 0x10 != 0,
                size: le32(e, 28),
                cluster: hi | u32::from(le16(e, 26)),
            });
        }
        Ok(out)
    }

    /// Follows `path` (case-insensitive) from the root; the root itself is a
    /// directory entry with cluster 0.
    pub fn lookup(&self, disk: &mut Disk, path: &str) -> Result<Entry, FatError> {
        let mut cur = Entry {
            name: String::from("/"),
            dir: true,
            size: 0,
            cluster: 0,
        };
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            walked.push('/');
            walked.push_str(part);
            if !cur.dir {
                return Err(FatError::NotADirectory(walked));
            }
            let entries = self.read_dir(disk, cur.cluster)?;
            cur = entries
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(part))
                .ok_or_else(|| FatError::NotFound(walked.clone()))?;
        }
        Ok(cur)
    }

    /// The entries of the directory at `path`.
    pub fn list(&self, disk: &mut Disk, path: &str) -> Result<Vec<Entry>, FatError> {
        let e = self.lookup(disk, path)?;
        if !e.dir {
            return Err(FatError::NotADirectory(String::from(path)));
        }
        self.read_dir(disk, e.cluster)
    }

    /// Reads a whole small file into a new vector.
    pub fn read_small(&self, disk: &mut Disk, path: &str, max: u32) -> Result<Vec<u8>, FatError> {
        let e = self.lookup(disk, path)?;
        if e.dir {
            return Err(FatError::IsADirectory(String::from(path)));
        }
        if e.size > max {
            return Err(FatError::BufferTooSmall);
        }
        let mut buf = vec![0u8; e.size as usize];
        self.read_file(disk, &e, &mut buf, &mut |_| {})?;
        Ok(buf)
    }

    /// Reads the file `e` into `dst` (at least `e.size` bytes) in large reads, one per
    /// run of consecutive clusters (split in pieces of `PIECE` bytes so `progress`
    /// is called with the bytes done as it goes).
    pub fn read_file(
        &self,
        disk: &mut Disk,
        e: &Entry,
        dst: &mut [u8],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), FatError> {
        const PIECE: u64 = 8 << 20;
        let size = u64::from(e.size);
        if (dst.len() as u64) < size {
            return Err(FatError::BufferTooSmall);
        }
        if size == 0 {
            return Ok(());
        }
        let ss = u64::from(disk.dev.sector_size());
        let runs = self.runs(disk, e.cluster)?;
        let mut done = 0u64;
        for (s, n) in runs {
            let mut at = self.cluster_at(s);
            let mut left = (u64::from(n) * self.cluster_bytes).min(size - done);
            while left > 0 {
                let piece = left.min(PIECE);
                // Whole sectors straight into the destination; a partial last sector
                // through a small buffer.
                let whole = piece / ss * ss;
                if whole > 0 {
                    let d = &mut dst[done as usize..(done + whole) as usize];
                    disk.dev.read(at / ss, d)?;
                }
                if piece > whole {
                    let tail = disk.read_bytes(at + whole, (piece - whole) as usize)?;
                    dst[(done + whole) as usize..(done + piece) as usize].copy_from_slice(&tail);
                }
                at += piece;
                done += piece;
                left -= piece;
                progress(done);
            }
            if done >= size {
                break;
            }
        }
        if done < size {
            return Err(FatError::BadChain(0));
        }
        Ok(())
    }

    /// Byte offset of the volume on its disk.
    pub fn base(&self) -> u64 {
        self.base
    }
}

/// The 8.3 name of a short entry (`NAME.EXT`, lower case where the entry says so).
fn short_name(e: &[u8]) -> String {
    let lower_base = e[12] & 0x08 != 0;
    let lower_ext = e[12] & 0x10 != 0;
    let conv = |b: &[u8], lower: bool| -> String {
        let s: String = b
            .iter()
            .map(|&c| if c == 0x05 { 0xe5 } else { c })
            .map(|c| c as char)
            .collect::<String>()
            .trim_end()
            .into();
        if lower {
            s.to_ascii_lowercase()
        } else {
            s
        }
    };
    let base = conv(&e[0..8], lower_base);
    let ext = conv(&e[8..11], lower_ext);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}
