//! Multiboot2 boot information: memory map, command line, modules, framebuffer and
//! ACPI RSDP, copied into fixed-size storage before the heap exists.

use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};

/// Magic value GRUB leaves in EAX for a multiboot2 kernel.
pub const MULTIBOOT2_BOOT_MAGIC: u32 = 0x36d7_6289;

const MAX_REGIONS: usize = 128;
const MAX_MODULES: usize = 8;

/// Kind of a physical memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM.
    Usable,
    /// RAM holding ACPI tables (reclaimable after parsing).
    AcpiReclaimable,
    /// ACPI NVS, reserved, defective or unknown.
    Reserved,
}

/// One entry of the firmware memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Physical start address.
    pub start: u64,
    /// Physical end address (exclusive).
    pub end: u64,
    /// What the firmware says it is.
    pub kind: RegionKind,
}

/// A boot module GRUB loaded (e.g. a model file).
#[derive(Debug, Clone, Copy, Default)]
pub struct Module {
    /// Physical start address.
    pub start: u64,
    /// Physical end address (exclusive).
    pub end: u64,
    /// Its command line (GRUB's `module2` arguments), truncated to 64 bytes.
    pub name: FixedStr<64>,
}

/// Framebuffer GRUB set up, if any.
#[derive(Debug, Clone, Copy)]
pub struct Framebuffer {
    /// Physical address of the first pixel.
    pub addr: u64,
    /// Bytes per row.
    pub pitch: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bits per pixel.
    pub bpp: u8,
    /// Bit positions of red, green and blue (None: not a direct-RGB framebuffer).
    pub rgb: Option<(u8, u8, u8)>,
}

/// Physical address of the ACPI root system description table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiRoot {
    /// 32-bit entries (ACPI 1.0 RSDP).
    Rsdt(u64),
    /// 64-bit entries (ACPI 2.0+ RSDP).
    Xsdt(u64),
}

/// A short string stored inline.
#[derive(Clone, Copy)]
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> FixedStr<N> {
    /// Copies `s`, cutting at a character boundary when it is too long.
    pub fn new(s: &str) -> Self {
        let mut len = s.len().min(N);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0; N];
        buf[..len].copy_from_slice(&s.as_bytes()[..len]);
        Self { buf, len }
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> core::fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Everything the kernel keeps from the boot loader.
#[derive(Debug)]
pub struct BootInfo {
    /// Kernel command line.
    pub cmdline: FixedStr<2048>,
    /// Boot loader name (e.g. "GRUB 2.06").
    pub loader: FixedStr<64>,
    /// Memory map entries, sorted by start address.
    pub regions: [Region; MAX_REGIONS],
    /// Number of valid entries in `regions`.
    pub region_count: usize,
    /// Boot modules.
    pub modules: [Module; MAX_MODULES],
    /// Number of valid entries in `modules`.
    pub module_count: usize,
    /// Framebuffer, if GRUB set one up.
    pub framebuffer: Option<Framebuffer>,
    /// ACPI root table from the RSDP GRUB copied into the boot information.
    pub acpi_root: Option<AcpiRoot>,
    /// Physical range of the multiboot2 information itself.
    pub info_range: (u64, u64),
    /// True when GRUB booted us through UEFI (an EFI memory map tag was present).
    pub uefi: bool,
    /// The kernel's ELF symbol tables, if GRUB loaded them.
    pub symbols: Option<super::symbols::SymbolTables>,
}

impl BootInfo {
    /// The valid memory map entries.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.region_count]
    }

    /// The valid modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }
}

/// Reads the multiboot2 information. Stops the machine with a message if the kernel was
/// not started by a multiboot2 loader.
pub fn init(magic: u32, info_addr: u32) -> BootInfo {
    if magic != MULTIBOOT2_BOOT_MAGIC {
        panic!("not started by a multiboot2 loader (magic {magic:#x})");
    }
    // SAFETY: GRUB passes the physical address of a valid multiboot2 information block;
    // the boot page tables identity-map the first 4 GiB, where it lives, and nothing
    // writes to it before we have copied what we need.
    let info = unsafe { BootInformation::load(info_addr as usize as *const BootInformationHeader) }
        .unwrap_or_else(|e| panic!("bad multiboot2 information: {e:?}"));
    let mut boot = BootInfo {
        cmdline: FixedStr::default(),
        loader: FixedStr::default(),
        regions: [Region {
            start: 0,
            end: 0,
            kind: RegionKind::Reserved,
        }; MAX_REGIONS],
        region_count: 0,
        modules: [Module::default(); MAX_MODULES],
        module_count: 0,
        framebuffer: None,
        acpi_root: None,
        info_range: (info.start_address() as u64, info.end_address() as u64),
        uefi: info.efi_memory_map_tag().is_some() || info.efi_sdt64_tag().is_some(),
        symbols: super::symbols::find(&info),
    };
    if let Some(cmd) = info.command_line_tag().and_then(|t| t.cmdline().ok()) {
        boot.cmdline = FixedStr::new(cmd);
    }
    if let Some(name) = info.boot_loader_name_tag().and_then(|t| t.name().ok()) {
        boot.loader = FixedStr::new(name);
    }
    let map = info
        .memory_map_tag()
        .expect("boot loader gave no memory map");
    for area in map.memory_areas() {
        if boot.region_count == MAX_REGIONS || area.size() == 0 {
            continue;
        }
        let kind = match area.typ() {
            MemoryAreaType::Available => RegionKind::Usable,
            MemoryAreaType::AcpiAvailable => RegionKind::AcpiReclaimable,
            _ => RegionKind::Reserved,
        };
        boot.regions[boot.region_count] = Region {
            start: area.start_address(),
            end: area.end_address(),
            kind,
        };
        boot.region_count += 1;
    }
    boot.regions[..boot.region_count].sort_unstable_by_key(|r| r.start);
    for m in info.module_tags() {
        if boot.module_count == MAX_MODULES {
            break;
        }
        boot.modules[boot.module_count] = Module {
            start: u64::from(m.start_address()),
            end: u64::from(m.end_address()),
            name: FixedStr::new(m.cmdline().unwrap_or("")),
        };
        boot.module_count += 1;
    }
    if let Some(Ok(fb)) = info.framebuffer_tag() {
        boot.framebuffer = Some(Framebuffer {
            addr: fb.address(),
            pitch: fb.pitch(),
            width: fb.width(),
            height: fb.height(),
            bpp: fb.bpp(),
            rgb: match fb.buffer_type() {
                Ok(multiboot2::FramebufferType::RGB { red, green, blue }) => {
                    Some((red.position, green.position, blue.position))
                }
                _ => None,
            },
        });
    }
    if let Some(r) = info
        .rsdp_v2_tag()
        .filter(|r| r.checksum_is_valid() && r.xsdt_address() != 0)
    {
        boot.acpi_root = Some(AcpiRoot::Xsdt(r.xsdt_address() as u64));
    } else if let Some(r) = info.rsdp_v1_tag().filter(|r| r.checksum_is_valid()) {
        boot.acpi_root = Some(AcpiRoot::Rsdt(r.rsdt_address() as u64));
    }
    boot
}
