//! ACPI tables, parsed by hand: the MADT for the CPU list, I/O APIC and interrupt
//! overrides; the FADT (and the `\_S5` object in the DSDT) for power-off and reboot.

use super::boot::AcpiRoot;
use super::io::{inb, outb, outw, phys_bytes};

/// Most CPUs the kernel tracks.
pub const MAX_CPUS: usize = 64;

/// Facts taken from the ACPI tables.
#[derive(Debug, Clone, Copy)]
pub struct AcpiInfo {
    /// APIC IDs of the usable CPUs (boot processor included).
    pub cpu_apic_ids: [u32; MAX_CPUS],
    /// Number of valid entries in `cpu_apic_ids`.
    pub cpu_count: usize,
    /// First I/O APIC: (MMIO address, first GSI).
    pub ioapic: Option<(u64, u32)>,
    /// ISA IRQ overrides: (irq, gsi, flags).
    pub overrides: [(u8, u32, u16); 16],
    /// Number of valid entries in `overrides`.
    pub override_count: usize,
    /// PM1a control port.
    pub pm1a_cnt: Option<u16>,
    /// SLP_TYPa value for S5 (soft off).
    pub s5_slp_typ: Option<u16>,
    /// Reset register in I/O space: (port, value).
    pub reset: Option<(u16, u8)>,
    /// PCI Express ECAM window from the MCFG table (segment 0): (base, first bus,
    /// last bus).
    pub ecam: Option<(u64, u8, u8)>,
}

impl AcpiInfo {
    const EMPTY: AcpiInfo = AcpiInfo {
        cpu_apic_ids: [0; MAX_CPUS],
        cpu_count: 0,
        ioapic: None,
        overrides: [(0, 0, 0); 16],
        override_count: 0,
        pm1a_cnt: None,
        s5_slp_typ: None,
        reset: None,
        ecam: None,
    };

    /// APIC IDs of the CPUs ACPI lists.
    pub fn cpus(&self) -> &[u32] {
        &self.cpu_apic_ids[..self.cpu_count]
    }

    /// GSI and flags for ISA IRQ `irq`.
    pub fn isa_irq(&self, irq: u8) -> (u32, u16) {
        self.overrides[..self.override_count]
            .iter()
            .find(|o| o.0 == irq)
            .map(|o| (o.1, o.2))
            .unwrap_or((u32::from(irq), 0))
    }
}

static INFO: spin::Once<AcpiInfo> = spin::Once::new();

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A table (header included) with a valid checksum, or None.
fn table(addr: u64) -> Option<&'static [u8]> {
    if addr == 0 {
        return None;
    }
    let header = phys_bytes(addr, 36);
    let len = u32_at(header, 4) as usize;
    if !(36..=16 << 20).contains(&len) {
        return None;
    }
    let t = phys_bytes(addr, len);
    (t.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0).then_some(t)
}

/// Looks for the RSDP in the BIOS area when the boot loader gave none.
fn scan_rsdp() -> Option<AcpiRoot> {
    let area = phys_bytes(0xe0000, 0x20000);
    (0..area.len() - 20).step_by(16).find_map(|o| {
        let r = &area[o..o + 20];
        if &r[..8] != b"RSD PTR " || r.iter().fold(0u8, |a, &b| a.wrapping_add(b)) != 0 {
            return None;
        }
        if area[o + 15] >= 2 && o + 36 <= area.len() {
            let x = u64_at(area, o + 24);
            if x != 0 {
                return Some(AcpiRoot::Xsdt(x));
            }
        }
        Some(AcpiRoot::Rsdt(u64::from(u32_at(area, o + 16))))
    })
}

/// Parses the tables (boot processor, once).
pub fn init(root: Option<AcpiRoot>) -> &'static AcpiInfo {
    INFO.call_once(|| parse(root.or_else(scan_rsdp)))
}

/// The parsed tables (empty before `init`).
pub fn info() -> &'static AcpiInfo {
    INFO.get().unwrap_or(&AcpiInfo::EMPTY)
}

fn parse(root: Option<AcpiRoot>) -> AcpiInfo {
    let mut info = AcpiInfo::EMPTY;
    let (root_addr, entry_size) = match root {
        Some(AcpiRoot::Xsdt(a)) => (a, 8),
        Some(AcpiRoot::Rsdt(a)) => (a, 4),
        None => return info,
    };
    let Some(root) = table(root_addr) else {
        return info;
    };
    for o in (36..root.len()).step_by(entry_size) {
        if o + entry_size > root.len() {
            break;
        }
        let addr = if entry_size == 8 {
            u64_at(root, o)
        } else {
            u64::from(u32_at(root, o))
        };
        let Some(t) = table(addr) else { continue };
        match &t[..4] {
            b"APIC" => parse_madt(t, &mut info),
            b"FACP" => parse_fadt(t, &mut info),
            b"MCFG" => parse_mcfg(t, &mut info),
            _ => {}
        }
    }
    info
}

/// MCFG: after the header and 8 reserved bytes, 16-byte entries (base address,
/// segment, first bus, last bus, reserved); the kernel uses segment 0.
fn parse_mcfg(t: &[u8], info: &mut AcpiInfo) {
    let mut o = 44;
    while o + 16 <= t.len() {
        let base = u64_at(t, o);
        if u16_at(t, o + 8) == 0 && base != 0 && info.ecam.is_none() {
            info.ecam = Some((base, t[o + 10], t[o + 11]));
        }
        o += 16;
    }
}

fn parse_madt(t: &[u8], info: &mut AcpiInfo) {
    let mut o = 44;
    while o + 2 <= t.len() {
        let (kind, len) = (t[o], t[o + 1] as usize);
        if len < 2 || o + len > t.len() {
            break;
        }
        let e = &t[o..o + len];
        match kind {
            // Processor local APIC: enabled or online-capable.
            0 if len >= 8 && u32_at(e, 4) & 3 != 0 => add_cpu(info, u32::from(e[3])),
            // Processor local x2APIC.
            9 if len >= 16 && u32_at(e, 8) & 3 != 0 => add_cpu(info, u32_at(e, 4)),
            1 if len >= 12 && info.ioapic.is_none() => {
                info.ioapic = Some((u64::from(u32_at(e, 4)), u32_at(e, 8)));
            }
            2 if len >= 10 && info.override_count < info.overrides.len() => {
                info.overrides[info.override_count] = (e[3], u32_at(e, 4), u16_at(e, 8));
                info.override_count += 1;
            }
            _ => {}
        }
        o += len;
    }
}

fn add_cpu(info: &mut AcpiInfo, apic_id: u32) {
    if info.cpu_count < MAX_CPUS && !info.cpus().contains(&apic_id) {
        info.cpu_apic_ids[info.cpu_count] = apic_id;
        info.cpu_count += 1;
    }
}

fn parse_fadt(t: &[u8], info: &mut AcpiInfo) {
    if t.len() >= 68 {
        let pm1a = u32_at(t, 64);
        if pm1a != 0 && pm1a <= 0xffff {
            info.pm1a_cnt = Some(pm1a as u16);
        }
    }
    // Reset register (FADT revision 2+): flag bit 10, I/O space only.
    if t.len() >= 129 && u32_at(t, 112) & (1 << 10) != 0 && t[116] == 1 {
        let port = u64_at(t, 120);
        if port <= 0xffff {
            info.reset = Some((port as u16, t[128]));
        }
    }
    let mut dsdt = if t.len() >= 44 {
        u64::from(u32_at(t, 40))
    } else {
        0
    };
    if t.len() >= 148 && u64_at(t, 140) != 0 {
        dsdt = u64_at(t, 140);
    }
    if let Some(d) = table(dsdt) {
        info.s5_slp_typ = find_s5(d);
    }
}

/// Finds `Name(_S5, Package(){a, ...})` in AML and returns SLP_TYPa.
fn find_s5(aml: &[u8]) -> Option<u16> {
    let pos = aml.windows(4).position(|w| w == b"_S5_")?;
    let mut o = pos + 4;
    if *aml.get(o)? != 0x12 {
        return None; // not a PackageOp
    }
    o += 1;
    let lead = *aml.get(o)?;
    o += 1 + usize::from(lead >> 6); // PkgLength bytes
    o += 1; // NumElements
    match *aml.get(o)? {
        0x0a => aml.get(o + 1).map(|&v| u16::from(v)), // BytePrefix
        0x00 => Some(0),                               // ZeroOp
        0x01 => Some(1),                               // OneOp
        v if v < 0x0a => Some(u16::from(v)),
        _ => None,
    }
}

/// Powers the machine off (ACPI S5); returns if that did not work.
pub fn power_off() {
    let i = info();
    if let (Some(port), Some(typ)) = (i.pm1a_cnt, i.s5_slp_typ) {
        outw(port, (typ << 10) | (1 << 13));
        super::time::delay_us(100_000);
    }
}

/// Resets the machine: ACPI reset register, then the 8042 keyboard controller, then a
/// triple fault.
pub fn reboot() -> ! {
    if let Some((port, value)) = info().reset {
        outb(port, value);
        super::time::delay_us(50_000);
    }
    for _ in 0..1000 {
        if inb(0x64) & 0x02 == 0 {
            break;
        }
    }
    outb(0x64, 0xfe);
    super::time::delay_us(50_000);
    super::triple_fault()
}
