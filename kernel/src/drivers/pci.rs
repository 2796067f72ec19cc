//! PCI: configuration space through legacy port I/O (0xCF8/0xCFC) or the PCI Express
//! ECAM window from ACPI's MCFG table, enumeration of every bus, BARs with their sizes,
//! the capability list (MSI, MSI-X, ...), bus mastering, and the `lspci` listing.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::x86_64::io::{inl, mmio_read32, mmio_write32, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Offsets in the configuration header.
const COMMAND: u16 = 0x04;
const STATUS_CAP_LIST: u32 = 1 << 20;
const CMD_IO: u32 = 1 << 0;
const CMD_MEMORY: u32 = 1 << 1;
const CMD_BUS_MASTER: u32 = 1 << 2;
const CMD_INTX_DISABLE: u32 = 1 << 10;

/// Capability IDs the listing names.
pub const CAP_MSI: u8 = 0x05;
/// Vendor-specific capability (virtio uses it for its structures).
pub const CAP_VENDOR: u8 = 0x09;
/// PCI Express capability.
pub const CAP_PCIE: u8 = 0x10;
/// MSI-X capability.
pub const CAP_MSIX: u8 = 0x11;

/// Bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Bus 0..=255.
    pub bus: u8,
    /// Device 0..32.
    pub device: u8,
    /// Function 0..8.
    pub function: u8,
}

impl core::fmt::Display for Address {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// How configuration space is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ports 0xCF8/0xCFC: 256 bytes per function.
    Legacy,
    /// Memory-mapped (ECAM): 4 KiB per function; base and bus range from MCFG.
    Ecam {
        /// Physical (= virtual) address of bus `first_bus`.
        base: u64,
        /// First bus the window decodes.
        first_bus: u8,
        /// Last bus the window decodes.
        last_bus: u8,
    },
}

impl Access {
    fn ecam_addr(self, a: Address, offset: u16) -> Option<u64> {
        match self {
            Access::Ecam {
                base,
                first_bus,
                last_bus,
            } if (first_bus..=last_bus).contains(&a.bus) => Some(
                base + ((u64::from(a.bus - first_bus) << 20)
                    | (u64::from(a.device) << 15)
                    | (u64::from(a.function) << 12)
                    | u64::from(offset & 0xffc)),
            ),
            _ => None,
        }
    }

    /// Reads the aligned 32-bit word at `offset`.
    pub fn read32(self, a: Address, offset: u16) -> u32 {
        if let Some(addr) = self.ecam_addr(a, offset) {
            return mmio_read32(addr);
        }
        if offset >= 256 {
            return 0xffff_ffff;
        }
        let _guard = PORT_LOCK.lock();
        outl(CONFIG_ADDRESS, legacy_address(a, offset));
        inl(CONFIG_DATA)
    }

    /// Writes the aligned 32-bit word at `offset`.
    pub fn write32(self, a: Address, offset: u16, value: u32) {
        if let Some(addr) = self.ecam_addr(a, offset) {
            mmio_write32(addr, value);
            return;
        }
        if offset >= 256 {
            return;
        }
        let _guard = PORT_LOCK.lock();
        outl(CONFIG_ADDRESS, legacy_address(a, offset));
        outl(CONFIG_DATA, value);
    }
}

/// The address/data port pair is one shared register: one user at a time.
static PORT_LOCK: spin::Mutex<()> = spin::Mutex::new(());

fn legacy_address(a: Address, offset: u16) -> u32 {
    (1 << 31)
        | (u32::from(a.bus) << 16)
        | (u32::from(a.device) << 11)
        | (u32::from(a.function) << 8)
        | u32::from(offset & 0xfc)
}

/// Kind of a base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Mem32,
    /// Memory anywhere (takes two BAR slots).
    Mem64,
}

/// One implemented BAR.
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    /// Slot 0..6.
    pub index: u8,
    /// I/O or memory, width.
    pub kind: BarKind,
    /// Base address (port number for I/O).
    pub addr: u64,
    /// Size in bytes (from writing all ones and reading back).
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// One function found on the bus.
#[derive(Debug, Clone)]
pub struct Device {
    /// Where it is.
    pub addr: Address,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: (u8, u8, u8),
    /// Revision.
    pub revision: u8,
    /// Header type (0 = device, 1 = bridge), without the multi-function bit.
    pub header_type: u8,
    /// Legacy interrupt line and pin (pin 0 = none).
    pub irq: (u8, u8),
    /// Implemented BARs (type-0 headers).
    pub bars: Vec<Bar>,
    /// Capabilities: (ID, offset).
    pub caps: Vec<(u8, u8)>,
    /// MSI-X table size, when the function has MSI-X.
    pub msix_vectors: Option<u16>,
}

impl Device {
    /// The BAR in slot `index`.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// Whether the function lists capability `id`.
    pub fn has_cap(&self, id: u8) -> bool {
        self.caps.iter().any(|c| c.0 == id)
    }
}

/// What `init` found.
struct Bus {
    access: Access,
    devices: Vec<Device>,
}

static BUS: spin::Once<Bus> = spin::Once::new();

/// Configuration access in use (legacy before `init`).
pub fn access() -> Access {
    BUS.get().map_or(Access::Legacy, |b| b.access)
}

/// Every function found (empty before `init`).
pub fn devices() -> &'static [Device] {
    BUS.get().map_or(&[], |b| &b.devices)
}

/// Finds the functions and sizes their BARs (once, boot processor).
pub fn init() {
    BUS.call_once(|| {
        let access = match crate::arch::x86_64::acpi::info().ecam {
            Some((base, first_bus, last_bus)) => {
                crate::arch::x86_64::paging::map_device(
                    base,
                    (u64::from(last_bus - first_bus) + 1) << 20,
                );
                Access::Ecam {
                    base,
                    first_bus,
                    last_bus,
                }
            }
            None => Access::Legacy,
        };
        let mut devices = Vec::new();
        for bus in 0..=255u8 {
            for device in 0..32u8 {
                let a = Address {
                    bus,
                    device,
                    function: 0,
                };
                let id = access.read32(a, 0);
                if id & 0xffff == 0xffff {
                    continue;
                }
                let multi = (access.read32(a, 0x0c) >> 16) & 0x80 != 0;
                for function in 0..if multi { 8 } else { 1 } {
                    let a = Address {
                        bus,
                        device,
                        function,
                    };
                    if access.read32(a, 0) & 0xffff == 0xffff {
                        continue;
                    }
                    devices.push(probe(access, a));
                }
            }
        }
        Bus { access, devices }
    });
}

fn probe(access: Access, a: Address) -> Device {
    let id = access.read32(a, 0);
    let class = access.read32(a, 0x08);
    let header_type = ((access.read32(a, 0x0c) >> 16) & 0x7f) as u8;
    let irq = access.read32(a, 0x3c);
    let mut d = Device {
        addr: a,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: ((class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8),
        revision: class as u8,
        header_type,
        irq: (irq as u8, (irq >> 8) as u8),
        bars: Vec::new(),
        caps: Vec::new(),
        msix_vectors: None,
    };
    if header_type == 0 {
        d.bars = size_bars(access, a);
    }
    if access.read32(a, COMMAND) & STATUS_CAP_LIST != 0 {
        let cap_ptr = if header_type == 2 { 0x14 } else { 0x34 };
        let mut at = (access.read32(a, cap_ptr) & 0xfc) as u8;
        // A broken list could loop: at most 48 entries fit in 192 bytes.
        for _ in 0..48 {
            if at < 0x40 {
                break;
            }
            let w = access.read32(a, u16::from(at));
            let cap_id = w as u8;
            d.caps.push((cap_id, at));
            if cap_id == CAP_MSIX {
                d.msix_vectors = Some((((w >> 16) & 0x7ff) + 1) as u16);
            }
            at = ((w >> 8) & 0xfc) as u8;
        }
    }
    d
}

/// Sizes each BAR by writing all ones and reading back, with decoding off meanwhile
/// (so the probe value never decodes as a live address).
fn size_bars(access: Access, a: Address) -> Vec<Bar> {
    let command = access.read32(a, COMMAND);
    access.write32(a, COMMAND, (command & 0xffff) & !(CMD_IO | CMD_MEMORY));
    let mut bars = Vec::new();
    let mut i = 0u8;
    while i < 6 {
        let off = 0x10 + u16::from(i) * 4;
        let orig = access.read32(a, off);
        access.write32(a, off, 0xffff_ffff);
        let probe = access.read32(a, off);
        access.write32(a, off, orig);
        if orig & 1 == 1 {
            let mask = probe & !0x3;
            if mask != 0 {
                bars.push(Bar {
                    index: i,
                    kind: BarKind::Io,
                    addr: u64::from(orig & !0x3),
                    size: u64::from((!mask | 0xffff_0000).wrapping_add(1) & 0xffff),
                    prefetchable: false,
                });
            }
            i += 1;
            continue;
        }
        let prefetchable = orig & 0x8 != 0;
        if (orig >> 1) & 3 == 2 && i < 5 {
            let off_hi = off + 4;
            let orig_hi = access.read32(a, off_hi);
            access.write32(a, off_hi, 0xffff_ffff);
            let probe_hi = access.read32(a, off_hi);
            access.write32(a, off_hi, orig_hi);
            let mask = (u64::from(probe_hi) << 32) | u64::from(probe & !0xf);
            if mask != 0 {
                bars.push(Bar {
                    index: i,
                    kind: BarKind::Mem64,
                    addr: (u64::from(orig_hi) << 32) | u64::from(orig & !0xf),
                    size: (!mask).wrapping_add(1),
                    prefetchable,
                });
            }
            i += 2;
            continue;
        }
        let mask = probe & !0xf;
        if mask != 0 {
            bars.push(Bar {
                index: i,
                kind: BarKind::Mem32,
                addr: u64::from(orig & !0xf),
                size: u64::from((!mask).wrapping_add(1)),
                prefetchable,
            });
        }
        i += 1;
    }
    access.write32(a, COMMAND, command & 0xffff);
    bars
}

/// Turns on memory and I/O decoding and bus mastering (DMA), and masks the legacy
/// interrupt line (drivers here poll).
pub fn enable(d: &Device) {
    let access = access();
    let command = access.read32(d.addr, COMMAND) & 0xffff;
    access.write32(
        d.addr,
        COMMAND,
        command | CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE,
    );
}

/// A vendor's name, for the ones a PC or QEMU commonly has.
pub fn vendor_name(vendor: u16) -> Option<&'static str> {
    Some(match vendor {
        0x8086 => "Intel",
        0x1af4 => "Red Hat (virtio)",
        0x1b36 => "Red Hat (QEMU)",
        0x1234 => "QEMU",
        0x10ec => "Realtek",
        0x14e4 => "Broadcom",
        0x1022 => "AMD",
        0x10de => "NVIDIA",
        0x15ad => "VMware",
        0x80ee => "VirtualBox",
        0x144d => "Samsung",
        _ => return None,
    })
}

/// A device's name, for common chipset, network, storage and display functions.
pub fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    Some(match (vendor, device) {
        (0x8086, 0x1237) => "440FX host bridge",
        (0x8086, 0x7000) => "PIIX3 ISA bridge",
        (0x8086, 0x7010) => "PIIX3 IDE",
        (0x8086, 0x7020) => "PIIX3 USB",
        (0x8086, 0x7113) => "PIIX4 ACPI",
        (0x8086, 0x29c0) => "Q35 DRAM controller",
        (0x8086, 0x2918) => "ICH9 LPC bridge",
        (0x8086, 0x2922) => "ICH9 AHCI SATA",
        (0x8086, 0x2930) => "ICH9 SMBus",
        (0x8086, 0x100e) => "82540EM Gigabit Ethernet (e1000)",
        (0x8086, 0x100f) => "82545EM Gigabit Ethernet (e1000)",
        (0x8086, 0x10d3) => "82574L Gigabit Ethernet (e1000e)",
        (0x8086, 0x153a) => "I217-LM Ethernet",
        (0x8086, 0x15b8) => "I219-V Ethernet",
        (0x1af4, 0x1000) | (0x1af4, 0x1041) => "virtio network",
        (0x1af4, 0x1001) | (0x1af4, 0x1042) => "virtio block",
        (0x1af4, 0x1002) | (0x1af4, 0x1045) => "virtio balloon",
        (0x1af4, 0x1003) | (0x1af4, 0x1043) => "virtio console",
        (0x1af4, 0x1005) | (0x1af4, 0x1044) => "virtio entropy",
        (0x1af4, 0x1050) => "virtio GPU",
        (0x1234, 0x1111) => "standard VGA",
        (0x1b36, 0x000d) => "xHCI USB controller",
        (0x1b36, 0x0010) => "NVMe controller",
        (0x10ec, 0x8139) => "RTL8139 Ethernet",
        (0x10ec, 0x8168) => "RTL8111/8168 Ethernet",
        _ => return None,
    })
}

/// A class name from class and subclass.
pub fn class_name(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x01, 0x01) => "IDE controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "NVMe controller",
        (0x01, _) => "storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "network controller",
        (0x03, 0x00) => "VGA controller",
        (0x03, _) => "display controller",
        (0x04, _) => "multimedia controller",
        (0x05, _) => "memory controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x07, _) => "communication controller",
        (0x08, _) => "system peripheral",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "serial bus controller",
        (0xff, _) => "unassigned class",
        _ => "device",
    }
}

fn cap_name(id: u8) -> String {
    match id {
        0x01 => "PM".into(),
        CAP_MSI => "MSI".into(),
        CAP_VENDOR => "vendor".into(),
        CAP_PCIE => "PCIe".into(),
        CAP_MSIX => "MSI-X".into(),
        0x12 => "SATA".into(),
        other => format!("cap{other:02x}"),
    }
}

/// Lines of the `lspci` listing (`-v` adds BARs and capabilities).
pub fn listing(verbose: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if verbose {
        lines.push(match access() {
            Access::Legacy => "configuration space: legacy port I/O (0xCF8/0xCFC)".into(),
            Access::Ecam {
                base,
                first_bus,
                last_bus,
            } => format!(
                "configuration space: ECAM at {base:#x}, buses {first_bus}-{last_bus} (ACPI MCFG)"
            ),
        });
    }
    for d in devices() {
        let name = match (device_name(d.vendor, d.device), vendor_name(d.vendor)) {
            (Some(n), Some(v)) => format!("{v} {n}"),
            (None, Some(v)) => format!("{v} device {:04x}", d.device),
            _ => format!("device {:04x}", d.device),
        };
        lines.push(format!(
            "{} {}: {} [{:04x}:{:04x}] (rev {:02x})",
            d.addr,
            class_name(d.class.0, d.class.1),
            name,
            d.vendor,
            d.device,
            d.revision
        ));
        if verbose {
            for b in &d.bars {
                let kind = match b.kind {
                    BarKind::Io => "I/O ports",
                    BarKind::Mem32 => "memory (32-bit)",
                    BarKind::Mem64 => "memory (64-bit)",
                };
                lines.push(format!(
                    "    BAR{} {kind}{} at {:#x}, size {:#x}",
                    b.index,
                    if b.prefetchable { ", prefetchable" } else { "" },
                    b.addr,
                    b.size
                ));
            }
            if !d.caps.is_empty() {
                let mut caps: Vec<String> = d.caps.iter().map(|c| cap_name(c.0)).collect();
                caps.dedup();
                let msix = d
                    .msix_vectors
                    .map_or(String::new(), |n| format!(" (MSI-X table: {n} vectors)"));
                lines.push(format!("    capabilities: {}{msix}", caps.join(", ")));
            }
            if (1..=4).contains(&d.irq.1) {
                lines.push(format!(
                    "    interrupt: pin {} line {}",
                    (b'A' + d.irq.1 - 1) as char,
                    d.irq.0
                ));
            }
        }
    }
    lines
}
