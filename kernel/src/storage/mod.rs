//! Block storage: the disks the drivers found (virtio-blk, NVMe), their partition
//! tables (GPT, MBR), read-only FAT file systems on them, and the shell's `disks` and
//! `ls` listings.

pub mod fat;
pub mod gpt;
pub mod load;
pub mod mbr;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::drivers::{nvme, pci, virtio_blk};
use crate::models::human_bytes;

/// Why a disk read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskError {
    /// The device did not finish a command in time.
    Timeout {
        /// What was waited for.
        what: &'static str,
    },
    /// An NVMe command completed with an error status.
    NvmeStatus {
        /// Status code type.
        sct: u8,
        /// Status code.
        sc: u8,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    ControllerFatal,
    /// The virtio device or its queue refused the request.
    Virtio(String),
    /// The request runs past the end of the disk.
    OutOfRange {
        /// First sector asked for.
        lba: u64,
        /// Sectors asked for.
        count: u64,
        /// Sectors the disk has.
        sectors: u64,
    },
    /// The buffer is not a whole number of sectors.
    BadLength(usize),
    /// No memory for queues or transfer lists.
    OutOfMemory,
    /// The device lacks something this driver needs.
    Unsupported(String),
    /// A read command failed: which sectors, and the device's answer.
    Failed {
        /// First sector of the failed command.
        lba: u64,
        /// Sectors it asked for.
        count: u64,
        /// What the device said.
        cause: Box<DiskError>,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Timeout { what } => write!(f, "device timed out ({what})"),
            DiskError::NvmeStatus { sct, sc } => {
                write!(
                    f,
                    "NVMe command failed: status type {sct:#x}, code {sc:#04x}"
                )?;
                if let Some(t) = nvme::status_text(*sct, *sc) {
                    write!(f, " ({t})")?;
                }
                Ok(())
            }
            DiskError::ControllerFatal => f.write_str("NVMe controller fatal status"),
            DiskError::Virtio(e) => write!(f, "virtio-blk: {e}"),
            DiskError::OutOfRange {
                lba,
                count,
                sectors,
            } => write!(
                f,
                "read of {count} sectors at {lba} is past the end of the disk ({sectors} sectors)"
            ),
            DiskError::BadLength(n) => write!(f, "{n} bytes is not a whole number of sectors"),
            DiskError::OutOfMemory => f.write_str("out of memory for the transfer"),
            DiskError::Unsupported(why) => write!(f, "unsupported device: {why}"),
            DiskError::Failed { lba, count, cause } => write!(
                f,
                "{cause} (reading sectors {lba}..{})",
                lba.saturating_add(*count)
            ),
        }
    }
}

/// A disk the kernel can read sectors from.
pub trait BlockDevice: Send {
    /// Driver name (`virtio-blk`, `nvme`).
    fn driver(&self) -> &'static str;
    /// Model / serial text the device reports.
    fn model(&self) -> String;
    /// Number of sectors.
    fn sectors(&self) -> u64;
    /// Bytes per sector.
    fn sector_size(&self) -> u32;
    /// Reads `buf.len() / sector_size` sectors from `lba` into `buf`; large buffers are
    /// split into several commands kept in flight together.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError>;
}

/// A partition found in a partition table.
#[derive(Debug, Clone)]
pub struct Partition {
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub sectors: u64,
    /// Type as text (GPT type name or MBR type byte).
    pub kind: String,
    /// GPT partition name, if any.
    pub name: String,
    /// Whether its type says it may hold a FAT file system.
    pub fat_type: bool,
}

/// What is on a disk.
#[derive(Debug, Clone)]
pub enum Layout {
    /// A GPT with these partitions.
    Gpt(Vec<Partition>),
    /// An MBR with these partitions.
    Mbr(Vec<Partition>),
    /// A FAT file system on the whole disk (no partition table).
    WholeDiskFat,
    /// Nothing recognised.
    Unknown(String),
}

/// One disk.
pub struct Disk {
    /// Shell name: `disk0`, `disk1`, ...
    pub name: String,
    /// PCI address of the controller.
    pub pci: pci::Address,
    /// The device.
    pub dev: Box<dyn BlockDevice>,
    /// Partition table found at boot.
    pub layout: Layout,
}

impl Disk {
    /// Reads `count` bytes at byte `offset` of the disk (any alignment).
    pub fn read_bytes(&mut self, offset: u64, count: usize) -> Result<Vec<u8>, DiskError> {
        let ss = u64::from(self.dev.sector_size());
        let first = offset / ss;
        let end = (offset + count as u64).div_ceil(ss);
        let mut buf = vec![0u8; ((end - first) * ss) as usize];
        self.dev.read(first, &mut buf)?;
        let skip = (offset - first * ss) as usize;
        Ok(buf[skip..skip + count].to_vec())
    }
}

static DISKS: spin::Mutex<Vec<Disk>> = spin::Mutex::new(Vec::new());

/// Runs `f` on the disk list.
pub fn with_disks<R>(f: impl FnOnce(&mut Vec<Disk>) -> R) -> R {
    f(&mut DISKS.lock())
}

/// Finds and starts every disk controller on PCI (after `pci::init`) and reads the
/// partition tables. Errors are printed; nothing here stops the boot.
pub fn init(quiet: bool) {
    let mut disks = DISKS.lock();
    for d in pci::devices() {
        let dev: Box<dyn BlockDevice> = if virtio_blk::matches(d) {
            match virtio_blk::probe(d) {
                Ok(b) => Box::new(b),
                Err(e) => {
                    println!("disk: virtio-blk at {}: {e}", d.addr);
                    continue;
                }
            }
        } else if nvme::matches(d) {
            match nvme::probe(d) {
                Ok(n) => Box::new(n),
                Err(e) => {
                    println!("disk: NVMe at {}: {e}", d.addr);
                    continue;
                }
            }
        } else {
            continue;
        };
        let mut disk = Disk {
            name: format!("disk{}", disks.len()),
            pci: d.addr,
            dev,
            layout: Layout::Unknown(String::new()),
        };
        disk.layout = probe_layout(&mut disk);
        if !quiet {
            println!(
                "disk: {} {} {} ({}), {}",
                disk.name,
                disk.dev.driver(),
                disk.dev.model(),
                human_bytes(disk.dev.sectors() * u64::from(disk.dev.sector_size())),
                layout_text(&disk.layout)
            );
        }
        disks.push(disk);
    }
}

/// Reads the partition table (GPT first, then MBR, then a bare FAT boot sector).
fn probe_layout(disk: &mut Disk) -> Layout {
    let ss = disk.dev.sector_size() as usize;
    let mut s0 = vec![0u8; ss];
    if let Err(e) = disk.dev.read(0, &mut s0) {
        return Layout::Unknown(format!("sector 0 unreadable: {e}"));
    }
    let mbr = mbr::parse(&s0);
    if mbr.as_ref().is_some_and(|m| m.protective) {
        match gpt::read(disk) {
            Ok(parts) => return Layout::Gpt(parts),
            Err(e) => return Layout::Unknown(format!("protective MBR but bad GPT: {e}")),
        }
    }
    if fat::looks_like_fat(&s0) {
        return Layout::WholeDiskFat;
    }
    match mbr {
        Some(m) => Layout::Mbr(m.partitions),
        None => Layout::Unknown("no partition table (no MBR signature, no GPT)".to_string()),
    }
}

fn layout_text(l: &Layout) -> String {
    match l {
        Layout::Gpt(p) => format!("GPT, {} partition(s)", p.len()),
        Layout::Mbr(p) => format!("MBR, {} partition(s)", p.len()),
        Layout::WholeDiskFat => "FAT on the whole disk".to_string(),
        Layout::Unknown(why) => why.clone(),
    }
}

/// `disks`: every disk, its controller, model, size and partitions.
pub fn print_disks() {
    let mut disks = DISKS.lock();
    if disks.is_empty() {
        println!("no disks (virtio-blk and NVMe controllers are supported)");
        return;
    }
    for disk in disks.iter_mut() {
        let ss = disk.dev.sector_size();
        println!(
            "{}  {} at {}  model {}  {} ({} sectors of {} bytes)  {}",
            disk.name,
            disk.dev.driver(),
            disk.pci,
            disk.dev.model(),
            human_bytes(disk.dev.sectors() * u64::from(ss)),
            disk.dev.sectors(),
            ss,
            layout_text(&disk.layout)
        );
        let parts = match &disk.layout {
            Layout::Gpt(p) | Layout::Mbr(p) => p.clone(),
            _ => Vec::new(),
        };
        for (i, p) in parts.iter().enumerate() {
            let fs = match fat::Volume::open(disk, p.start) {
                Ok(v) => v.kind_text().to_string(),
                Err(e) => format!("no file system here ({e})"),
            };
            println!(
                "  part{}  start {}  {}  {}{}  {}",
                i + 1,
                p.start,
                human_bytes(p.sectors * u64::from(ss)),
                p.kind,
                if p.name.is_empty() {
                    String::new()
                } else {
                    format!(" \"{}\"", p.name)
                },
                fs
            );
        }
    }
}

/// Why a `disk:/path` could not be used.
#[derive(Debug, Clone)]
pub enum PathError {
    /// No such disk.
    NoDisk(String),
    /// No FAT file system found on the disk.
    NoFileSystem(String),
    /// The file system says no.
    Fs(fat::FatError),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NoDisk(d) => write!(f, "no disk `{d}` (`disks` lists them)"),
            PathError::NoFileSystem(why) => write!(f, "{why}"),
            PathError::Fs(e) => write!(f, "{e}"),
        }
    }
}

/// Splits `disk0:/a/b` into (`disk0`, `/a/b`); a bare `/a/b` or `disk:/a/b` means the
/// first disk with a FAT file system.
pub fn split_path(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once(':') {
        Some(("disk", p)) | Some(("", p)) => (None, p),
        Some((d, p)) => (Some(d), p),
        None => (None, spec),
    }
}

/// Start sector of the first FAT volume on `disk`.
pub fn fat_start(disk: &mut Disk) -> Result<u64, String> {
    let candidates: Vec<u64> = match &disk.layout {
        Layout::Gpt(p) | Layout::Mbr(p) => p.iter().map(|p| p.start).collect(),
        Layout::WholeDiskFat => vec![0],
        Layout::Unknown(why) => return Err(format!("{}: {why}", disk.name)),
    };
    let mut last = format!("{}: no partitions", disk.name);
    for start in candidates {
        match fat::Volume::open(disk, start) {
            Ok(_) => return Ok(start),
            Err(e) => last = format!("{}: partition at sector {start}: {e}", disk.name),
        }
    }
    Err(last)
}

/// Runs `f` on the FAT volume that `spec` (`[diskN:]/path`) names, with the path.
pub fn with_volume<R>(
    spec: &str,
    f: impl FnOnce(&mut Disk, fat::Volume, &str) -> Result<R, PathError>,
) -> Result<R, PathError> {
    let (name, path) = split_path(spec);
    let mut disks = DISKS.lock();
    let idx = match name {
        Some(n) => disks
            .iter()
            .position(|d| d.name == n)
            .ok_or_else(|| PathError::NoDisk(n.to_string()))?,
        None => {
            let mut found = None;
            let mut why = String::from("no disks");
            for (i, d) in disks.iter_mut().enumerate() {
                match fat_start(d) {
                    Ok(_) => {
                        found = Some(i);
                        break;
                    }
                    Err(e) => why = e,
                }
            }
            found.ok_or(PathError::NoFileSystem(why))?
        }
    };
    let disk = &mut disks[idx];
    let start = fat_start(disk).map_err(PathError::NoFileSystem)?;
    let vol = fat::Volume::open(disk, start).map_err(PathError::Fs)?;
    f(disk, vol, path)
}

/// `ls [disk:/path]`.
pub fn ls(spec: &str) {
    let r = with_volume(spec, |disk, vol, path| {
        let entries = vol.list(disk, path).map_err(PathError::Fs)?;
        println!("{}:{} ({})", disk.name, path, vol.kind_text());
        for e in &entries {
            if e.dir {
                println!("  {:>10}  {}/", "<dir>", e.name);
            } else {
                println!("  {:>10}  {}", e.size, e.name);
            }
        }
        println!("{} entries", entries.len());
        Ok(())
    });
    if let Err(e) = r {
        println!("ls: {e}");
    }
}

/// Every `.gguf` file under `/models` on every disk: (`diskN:/models/x.gguf`, size).
pub fn model_files() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut disks = DISKS.lock();
    for disk in disks.iter_mut() {
        let Ok(start) = fat_start(disk) else { continue };
        let Ok(vol) = fat::Volume::open(disk, start) else {
            continue;
        };
        let Ok(entries) = vol.list(disk, "/models") else {
            continue;
        };
        for e in entries {
            if !e.dir && e.name.to_ascii_lowercase().ends_with(".gguf") {
                out.push((
                    format!("{}:/models/{}", disk.name, e.name),
                    u64::from(e.size),
                ));
            }
        }
    }
    out
}
