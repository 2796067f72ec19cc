//! Intel 8254x ("e1000", 82540EM as QEMU emulates it) and 82574L ("e1000e") network
//! controllers, polled: legacy receive and transmit descriptor rings in frames from the
//! frame allocator, registers in BAR 0 (memory-mapped, uncached). Facts from Intel's
//! 8254x and 82574 software developer's manuals.

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use super::pci;
use crate::arch::x86_64::io::{mmio_read32, mmio_write32};
use crate::arch::x86_64::time;
use crate::mem::frame;

// Register offsets in BAR 0.
const CTRL: u64 = 0x0000;
const STATUS: u64 = 0x0008;
const IMC: u64 = 0x00d8;
const ICR: u64 = 0x00c0;
const RCTL: u64 = 0x0100;
const TCTL: u64 = 0x0400;
const TIPG: u64 = 0x0410;
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const MTA: u64 = 0x5200;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;

const CTRL_SLU: u32 = 1 << 6;
const CTRL_ASDE: u32 = 1 << 5;
const CTRL_RST: u32 = 1 << 26;
const STATUS_LU: u32 = 1 << 1;

const RCTL_EN: u32 = 1 << 1;
const RCTL_BAM: u32 = 1 << 15;
/// Strip the Ethernet CRC so frames reach the stack without it.
const RCTL_SECRC: u32 = 1 << 26;
const TCTL_EN: u32 = 1 << 1;
const TCTL_PSP: u32 = 1 << 3;
/// Collision threshold 0x0F and collision distance 0x40 (full duplex), the values
/// the manuals recommend.
const TCTL_CT_COLD: u32 = (0x0f << 4) | (0x40 << 12);

const TX_CMD_EOP: u8 = 1 << 0;
const TX_CMD_IFCS: u8 = 1 << 1;
const TX_CMD_RS: u8 = 1 << 3;
const DESC_DD: u8 = 1 << 0;
const RX_EOP: u8 = 1 << 1;

/// Descriptors per ring (the ring length must be a multiple of 128 bytes: 8 descriptors).
const RING: usize = 64;
/// Buffer per descriptor (RCTL.BSIZE = 0 means 2048 bytes).
const BUF: usize = 2048;

/// One 16-byte legacy descriptor, used for both rings (fields differ by direction).
#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    length: u16,
    /// RX: checksum. TX: CSO (low byte) and CMD (high byte).
    word1: u16,
    status: u8,
    /// RX: errors. TX: CSS.
    errors: u8,
    special: u16,
}

/// Why an e1000 could not be used.
#[derive(Debug)]
pub enum E1000Error {
    /// BAR 0 is missing or not memory.
    NoRegisters,
    /// No frames for rings or buffers.
    OutOfMemory,
    /// The reset bit never cleared.
    ResetTimeout,
}

impl core::fmt::Display for E1000Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            E1000Error::NoRegisters => write!(f, "BAR 0 is not a memory BAR"),
            E1000Error::OutOfMemory => write!(f, "no memory for descriptor rings"),
            E1000Error::ResetTimeout => write!(f, "device reset did not complete"),
        }
    }
}

/// A polled e1000/e1000e.
pub struct E1000 {
    regs: u64,
    model: &'static str,
    mac: [u8; 6],
    rx_ring: u64,
    tx_ring: u64,
    rx_bufs: u64,
    tx_bufs: u64,
    rx_next: usize,
    tx_next: usize,
}

/// Whether `d` is an Intel controller this driver handles.
pub fn matches(d: &pci::Device) -> bool {
    d.vendor == 0x8086 && matches!(d.device, 0x100e | 0x100f | 0x10d3)
}

impl E1000 {
    fn read(&self, reg: u64) -> u32 {
        mmio_read32(self.regs + reg)
    }

    fn write(&self, reg: u64, v: u32) {
        mmio_write32(self.regs + reg, v)
    }

    fn desc(&self, ring: u64, i: usize) -> *mut Desc {
        (ring + (i * core::mem::size_of::<Desc>()) as u64) as *mut Desc
    }

    fn read_desc(&self, ring: u64, i: usize) -> Desc {
        // SAFETY: `ring` is one of our ring frames (identity-mapped, owned by this
        // driver) and i < RING; volatile because the device writes it by DMA.
        unsafe { core::ptr::read_volatile(self.desc(ring, i)) }
    }

    fn write_desc(&self, ring: u64, i: usize, d: Desc) {
        // SAFETY: as for `read_desc`.
        unsafe { core::ptr::write_volatile(self.desc(ring, i), d) }
    }
}

/// Resets the controller at `d` and starts both rings.
pub fn probe(d: &pci::Device) -> Result<E1000, E1000Error> {
    let bar = d
        .bar(0)
        .filter(|b| b.kind != pci::BarKind::Io && b.addr != 0)
        .ok_or(E1000Error::NoRegisters)?;
    crate::arch::x86_64::paging::map_device(bar.addr, bar.size);
    pci::enable(d);
    let ring_frames = ((RING * 16) as u64).div_ceil(4096);
    let buf_frames = ((RING * BUF) as u64).div_ceil(4096);
    let alloc = |n| frame::alloc(n, 1).map_err(|_| E1000Error::OutOfMemory);
    let mut nic = E1000 {
        regs: bar.addr,
        model: if d.device == 0x10d3 {
            "e1000e (82574L)"
        } else {
            "e1000 (8254x)"
        },
        mac: [0; 6],
        rx_ring: alloc(ring_frames)?,
        tx_ring: alloc(ring_frames)?,
        rx_bufs: alloc(buf_frames)?,
        tx_bufs: alloc(buf_frames)?,
        rx_next: 0,
        tx_next: 0,
    };

    // Reset, then mask every interrupt (this driver polls).
    nic.write(IMC, 0xffff_ffff);
    nic.write(CTRL, nic.read(CTRL) | CTRL_RST);
    time::delay_us(1000);
    let t0 = time::uptime_ms();
    while nic.read(CTRL) & CTRL_RST != 0 {
        if time::uptime_ms() - t0 > 500 {
            return Err(E1000Error::ResetTimeout);
        }
    }
    nic.write(IMC, 0xffff_ffff);
    let _ = nic.read(ICR);
    nic.write(CTRL, nic.read(CTRL) | CTRL_SLU | CTRL_ASDE);

    // The EEPROM's address is loaded into receive address 0 at reset.
    let lo = nic.read(RAL0);
    let hi = nic.read(RAH0);
    nic.mac = [
        lo as u8,
        (lo >> 8) as u8,
        (lo >> 16) as u8,
        (lo >> 24) as u8,
        hi as u8,
        (hi >> 8) as u8,
    ];
    // Address valid bit, so the filter accepts frames for us.
    nic.write(RAH0, (hi & 0xffff) | (1 << 31));
    for i in 0..128 {
        nic.write(MTA + i * 4, 0);
    }

    // Receive ring: every descriptor owns one buffer.
    for i in 0..RING {
        nic.write_desc(
            nic.rx_ring,
            i,
            Desc {
                addr: nic.rx_bufs + (i * BUF) as u64,
                length: 0,
                word1: 0,
                status: 0,
                errors: 0,
                special: 0,
            },
        );
    }
    nic.write(RDBAL, nic.rx_ring as u32);
    nic.write(RDBAH, (nic.rx_ring >> 32) as u32);
    nic.write(RDLEN, (RING * 16) as u32);
    nic.write(RDH, 0);
    nic.write(RDT, (RING - 1) as u32);
    nic.write(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);

    // Transmit ring: descriptors start "done" so each slot reads as free.
    for i in 0..RING {
        nic.write_desc(
            nic.tx_ring,
            i,
            Desc {
                addr: nic.tx_bufs + (i * BUF) as u64,
                length: 0,
                word1: 0,
                status: DESC_DD,
                errors: 0,
                special: 0,
            },
        );
    }
    nic.write(TDBAL, nic.tx_ring as u32);
    nic.write(TDBAH, (nic.tx_ring >> 32) as u32);
    nic.write(TDLEN, (RING * 16) as u32);
    nic.write(TDH, 0);
    nic.write(TDT, 0);
    nic.write(TIPG, 10 | (8 << 10) | (6 << 20));
    nic.write(TCTL, TCTL_EN | TCTL_PSP | TCTL_CT_COLD);
    Ok(nic)
}

impl crate::net::Nic for E1000 {
    fn name(&self) -> &'static str {
        self.model
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        self.read(STATUS) & STATUS_LU != 0
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        loop {
            let i = self.rx_next;
            let d = self.read_desc(self.rx_ring, i);
            if d.status & DESC_DD == 0 {
                return None;
            }
            fence(Ordering::Acquire);
            let len = usize::from(d.length).min(BUF);
            // A frame spanning several buffers cannot happen with 2 KiB buffers and
            // long packets off; drop anything odd rather than pass half a frame on.
            let frame = (d.status & RX_EOP != 0 && d.errors == 0).then(|| {
                // SAFETY: the buffer belongs to descriptor i, the device has finished
                // writing it (DD set) and will not touch it until we return it below.
                unsafe {
                    core::slice::from_raw_parts((self.rx_bufs + (i * BUF) as u64) as *const u8, len)
                }
                .to_vec()
            });
            self.write_desc(
                self.rx_ring,
                i,
                Desc {
                    status: 0,
                    length: 0,
                    errors: 0,
                    ..d
                },
            );
            fence(Ordering::Release);
            // Give the descriptor back: the tail marks the last one the device may fill.
            self.write(RDT, i as u32);
            self.rx_next = (i + 1) % RING;
            if frame.is_some() {
                return frame;
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        let i = self.tx_next;
        let d = self.read_desc(self.tx_ring, i);
        if d.status & DESC_DD == 0 || frame.len() > BUF {
            return false;
        }
        let buf = self.tx_bufs + (i * BUF) as u64;
        // SAFETY: the buffer belongs to descriptor i, which the device has finished
        // with (DD set), so nothing else reads or writes it now.
        unsafe {
            core::ptr::copy_nonoverlapping(frame.as_ptr(), buf as *mut u8, frame.len());
        }
        self.write_desc(
            self.tx_ring,
            i,
            Desc {
                addr: buf,
                length: frame.len() as u16,
                word1: u16::from(TX_CMD_EOP | TX_CMD_IFCS | TX_CMD_RS) << 8,
                status: 0,
                errors: 0,
                special: 0,
            },
        );
        fence(Ordering::Release);
        self.tx_next = (i + 1) % RING;
        self.write(TDT, self.tx_next as u32);
        true
    }
}
