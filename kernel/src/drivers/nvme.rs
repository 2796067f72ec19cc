//! NVMe over PCI, written here from the NVM Express base specification: controller
//! reset and enable, the admin queue, Identify (controller, namespace list,
//! namespace), one I/O submission/completion queue pair, and polled reads described
//! by PRP entries or PRP lists, with several commands in flight. Error statuses and
//! timeouts are reported as [`DiskError`]s.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use super::pci;
use crate::arch::x86_64::{paging, time};
use crate::mem::frame;
use crate::storage::{BlockDevice, DiskError};

const PAGE: u64 = 4096;

// Controller registers (offsets into BAR0).
const REG_CAP: u64 = 0x00;
const REG_VS: u64 = 0x08;
const REG_INTMS: u64 = 0x0c;
const REG_CC: u64 = 0x14;
const REG_CSTS: u64 = 0x1c;
const REG_AQA: u64 = 0x24;
const REG_ASQ: u64 = 0x28;
const REG_ACQ: u64 = 0x30;
const DOORBELLS: u64 = 0x1000;

const CC_EN: u32 = 1;
/// I/O submission entries are 2^6 = 64 bytes, completion entries 2^4 = 16 bytes.
const CC_QUEUE_SIZES: u32 = (6 << 16) | (4 << 20);
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 2;

// Admin opcodes.
const ADMIN_CREATE_SQ: u32 = 0x01;
const ADMIN_CREATE_CQ: u32 = 0x05;
const ADMIN_IDENTIFY: u32 = 0x06;
// NVM opcode.
const NVM_READ: u32 = 0x02;

const ADMIN_ENTRIES: u16 = 32;
const IO_ENTRIES: u16 = 64;
/// Read commands in flight at once (each has its own PRP list page).
const DEPTH: usize = 8;
/// Largest transfer per command (further capped by the controller's MDTS).
const MAX_TRANSFER: u64 = 1 << 20;
/// How long one command may take.
const COMMAND_TIMEOUT_MS: u64 = 5_000;

/// Whether `d` is an NVMe controller (class 01, subclass 08, interface 02).
pub fn matches(d: &pci::Device) -> bool {
    d.class == (0x01, 0x08, 0x02)
}

/// Text for the common status codes (type, code).
pub fn status_text(sct: u8, sc: u8) -> Option<&'static str> {
    Some(match (sct, sc) {
        (0, 0x01) => "invalid command opcode",
        (0, 0x02) => "invalid field in command",
        (0, 0x03) => "command ID conflict",
        (0, 0x04) => "data transfer error",
        (0, 0x06) => "internal error",
        (0, 0x07) => "command abort requested",
        (0, 0x0b) => "invalid namespace or format",
        (0, 0x13) => "invalid PRP offset",
        (0, 0x80) => "LBA out of range",
        (0, 0x81) => "capacity exceeded",
        (0, 0x82) => "namespace not ready",
        (1, 0x01) => "invalid completion queue",
        (1, 0x02) => "invalid queue identifier",
        (1, 0x03) => "invalid queue size",
        (2, 0x81) => "unrecovered read error",
        (2, 0x86) => "access denied",
        _ => return None,
    })
}

/// One submission/completion queue pair.
struct Queue {
    id: u16,
    entries: u16,
    sq: u64,
    cq: u64,
    tail: u16,
    head: u16,
    phase: bool,
}

/// A completion: command ID and status field (0 = success).
struct Completion {
    cid: u16,
    status: u16,
    dw0: u32,
}

/// An NVMe controller with its first active namespace.
pub struct Nvme {
    regs: u64,
    stride: u64,
    admin: Queue,
    io: Queue,
    nsid: u32,
    sectors: u64,
    lba_size: u32,
    model: String,
    serial: String,
    version: u32,
    max_transfer: u64,
    prp_pages: [u64; DEPTH],
    bounce: u64,
    /// Set after a read timed out: the controller was disabled (which ends every
    /// outstanding command, so nothing writes into memory the caller frees) and is
    /// not used again.
    disabled: bool,
}

fn status_error(status: u16) -> DiskError {
    DiskError::NvmeStatus {
        sct: ((status >> 8) & 7) as u8,
        sc: (status & 0xff) as u8,
    }
}

fn alloc_zeroed(pages: u64) -> Result<u64, DiskError> {
    let a = frame::alloc(pages, 1).map_err(|_| DiskError::OutOfMemory)?;
    // SAFETY: fresh frames from the allocator, identity-mapped read-write, owned here.
    unsafe { core::ptr::write_bytes(a as *mut u8, 0, (pages * PAGE) as usize) };
    Ok(a)
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().into()
}

impl Nvme {
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: `regs` is BAR0, mapped uncached by `probe`; offsets are registers
        // inside it.
        unsafe { core::ptr::read_volatile((self.regs + off) as *const u32) }
    }

    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { core::ptr::write_volatile((self.regs + off) as *mut u32, v) }
    }

    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    fn cap(&self) -> u64 {
        u64::from(self.r32(REG_CAP)) | (u64::from(self.r32(REG_CAP + 4)) << 32)
    }

    fn wait_ready(&self, ready: bool, timeout_ms: u64) -> Result<(), DiskError> {
        let t0 = time::uptime_ms();
        loop {
            let csts = self.r32(REG_CSTS);
            if csts & CSTS_CFS != 0 && ready {
                return Err(DiskError::ControllerFatal);
            }
            if (csts & CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if time::uptime_ms() - t0 > timeout_ms {
                return Err(DiskError::Timeout {
                    what: if ready {
                        "controller enable (CSTS.RDY=1)"
                    } else {
                        "controller reset (CSTS.RDY=0)"
                    },
                });
            }
            time::delay_us(100);
        }
    }

    fn submit(&mut self, io: bool, cmd: &[u32; 16]) {
        let stride = self.stride;
        let regs = self.regs;
        let q = if io { &mut self.io } else { &mut self.admin };
        let slot = q.sq + u64::from(q.tail) * 64;
        for (i, w) in cmd.iter().enumerate() {
            // SAFETY: `slot` is an entry of this queue's submission ring (frames owned
            // by the driver); the controller reads it only after the doorbell below.
            unsafe { core::ptr::write_volatile((slot + i as u64 * 4) as *mut u32, *w) };
        }
        q.tail = (q.tail + 1) % q.entries;
        fence(Ordering::SeqCst);
        let db = DOORBELLS + u64::from(2 * q.id) * stride;
        // SAFETY: the submission tail doorbell of this queue, inside BAR0.
        unsafe { core::ptr::write_volatile((regs + db) as *mut u32, u32::from(q.tail)) };
    }

    fn poll(&mut self, io: bool) -> Option<Completion> {
        let stride = self.stride;
        let regs = self.regs;
        let q = if io { &mut self.io } else { &mut self.admin };
        let e = q.cq + u64::from(q.head) * 16;
        // SAFETY: `e` is an entry of this queue's completion ring (driver-owned frames
        // the controller writes); volatile because the device changes it.
        let dw3 = unsafe { core::ptr::read_volatile((e + 12) as *const u32) };
        if ((dw3 >> 16) & 1 == 1) != q.phase {
            return None;
        }
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        let dw0 = unsafe { core::ptr::read_volatile(e as *const u32) };
        q.head += 1;
        if q.head == q.entries {
            q.head = 0;
            q.phase = !q.phase;
        }
        let db = DOORBELLS + u64::from(2 * q.id + 1) * stride;
        // SAFETY: the completion head doorbell of this queue, inside BAR0.
        unsafe { core::ptr::write_volatile((regs + db) as *mut u32, u32::from(q.head)) };
        Some(Completion {
            cid: (dw3 & 0xffff) as u16,
            status: ((dw3 >> 17) & 0x7fff) as u16,
            dw0,
        })
    }

    /// Runs one admin command to completion.
    fn admin_cmd(&mut self, mut cmd: [u32; 16], what: &'static str) -> Result<u32, DiskError> {
        const CID: u16 = 0x7001;
        cmd[0] = (cmd[0] & 0xffff) | (u32::from(CID) << 16);
        self.submit(false, &cmd);
        let t0 = time::uptime_ms();
        loop {
            if let Some(c) = self.poll(false) {
                if c.cid != CID {
                    continue;
                }
                if c.status & 0x7ff != 0 {
                    return Err(status_error(c.status));
                }
                return Ok(c.dw0);
            }
            if self.r32(REG_CSTS) & CSTS_CFS != 0 {
                return Err(DiskError::ControllerFatal);
            }
            if time::uptime_ms() - t0 > COMMAND_TIMEOUT_MS {
                return Err(DiskError::Timeout { what });
            }
            core::hint::spin_loop();
        }
    }

    fn identify(&mut self, cns: u32, nsid: u32, page: u64) -> Result<(), DiskError> {
        let mut c = [0u32; 16];
        c[0] = ADMIN_IDENTIFY;
        c[1] = nsid;
        c[6] = page as u32;
        c[7] = (page >> 32) as u32;
        c[10] = cns;
        self.admin_cmd(c, "identify").map(|_| ())
    }

    /// Fills the PRP fields of `cmd` for `len` bytes at `addr` (dword aligned), using
    /// `list` as the PRP list page when more than two pages are touched.
    fn prps(cmd: &mut [u32; 16], addr: u64, len: u64, list: u64) {
        cmd[6] = addr as u32;
        cmd[7] = (addr >> 32) as u32;
        let first = PAGE - (addr % PAGE);
        let prp2 = if len <= first {
            0
        } else {
            let second = (addr & !(PAGE - 1)) + PAGE;
            let end = addr + len;
            let pages = (end - second).div_ceil(PAGE);
            if pages == 1 {
                second
            } else {
                for i in 0..pages {
                    // SAFETY: `list` is a driver-owned page with room for 512 entries;
                    // `pages` is at most MAX_TRANSFER / PAGE + 1 = 257.
                    unsafe {
                        core::ptr::write_volatile((list + i * 8) as *mut u64, second + i * PAGE)
                    };
                }
                list
            }
        };
        cmd[8] = prp2 as u32;
        cmd[9] = (prp2 >> 32) as u32;
    }

    /// Reads into memory at `addr` (dword aligned, identity-mapped), `len` bytes, a
    /// whole number of blocks, with up to `DEPTH` commands in flight.
    fn read_raw(&mut self, lba: u64, addr: u64, len: u64) -> Result<(), DiskError> {
        let bs = u64::from(self.lba_size);
        // Per command slot: when it was submitted, its first block and block count.
        let mut slots: [Option<(u64, u64, u64)>; DEPTH] = [None; DEPTH];
        let mut next = 0u64;
        let mut result = Ok(());
        loop {
            while result.is_ok() && next < len {
                let Some(slot) = slots.iter().position(Option::is_none) else {
                    break;
                };
                let n = self.max_transfer.min(len - next);
                let mut c = [0u32; 16];
                c[0] = NVM_READ | ((slot as u32) << 16);
                c[1] = self.nsid;
                Self::prps(&mut c, addr + next, n, self.prp_pages[slot]);
                let start = lba + next / bs;
                c[10] = start as u32;
                c[11] = (start >> 32) as u32;
                c[12] = (n / bs - 1) as u32;
                self.submit(true, &c);
                slots[slot] = Some((time::uptime_ms(), start, n / bs));
                next += n;
            }
            if slots.iter().all(Option::is_none) {
                return result;
            }
            match self.poll(true) {
                Some(c) => {
                    let i = usize::from(c.cid);
                    let Some((_, first, count)) = slots.get_mut(i).and_then(Option::take) else {
                        return Err(DiskError::Timeout {
                            what: "NVMe completion for an unknown command",
                        });
                    };
                    if c.status & 0x7ff != 0 && result.is_ok() {
                        result = Err(DiskError::Failed {
                            lba: first,
                            count,
                            cause: alloc::boxed::Box::new(status_error(c.status)),
                        });
                    }
                }
                None => {
                    if self.r32(REG_CSTS) & CSTS_CFS != 0 {
                        return Err(DiskError::ControllerFatal);
                    }
                    let now = time::uptime_ms();
                    if slots
                        .iter()
                        .flatten()
                        .any(|&(t, _, _)| now - t > COMMAND_TIMEOUT_MS)
                    {
                        // Commands are still outstanding: stop the controller so none
                        // of them can write into the caller's buffer later.
                        self.w32(REG_CC, self.r32(REG_CC) & !CC_EN);
                        self.disabled = true;
                        return Err(DiskError::Timeout { what: "NVMe read" });
                    }
                    core::hint::spin_loop();
                }
            }
        }
    }
}

/// Resets and enables the controller at `d`, creates the I/O queue pair and
/// identifies its first active namespace.
pub fn probe(d: &pci::Device) -> Result<Nvme, DiskError> {
    let bar = d
        .bar(0)
        .filter(|b| b.kind != pci::BarKind::Io)
        .ok_or(DiskError::Unsupported(String::from("no memory BAR 0")))?;
    pci::enable(d);
    paging::map_device(bar.addr, bar.size.max(0x2000));
    let asq = alloc_zeroed(1)?;
    let acq = alloc_zeroed(1)?;
    let iosq = alloc_zeroed(1)?;
    let iocq = alloc_zeroed(1)?;
    let mut prp_pages = [0u64; DEPTH];
    for p in &mut prp_pages {
        *p = alloc_zeroed(1)?;
    }
    let bounce = alloc_zeroed(1)?;
    let mut n = Nvme {
        regs: bar.addr,
        stride: 4,
        admin: Queue {
            id: 0,
            entries: ADMIN_ENTRIES,
            sq: asq,
            cq: acq,
            tail: 0,
            head: 0,
            phase: true,
        },
        io: Queue {
            id: 1,
            entries: IO_ENTRIES,
            sq: iosq,
            cq: iocq,
            tail: 0,
            head: 0,
            phase: true,
        },
        nsid: 1,
        sectors: 0,
        lba_size: 512,
        model: String::new(),
        serial: String::new(),
        version: 0,
        max_transfer: MAX_TRANSFER,
        prp_pages,
        bounce,
        disabled: false,
    };
    let cap = n.cap();
    n.stride = 4 << ((cap >> 32) & 0xf);
    let timeout = ((cap >> 24) & 0xff).max(1) * 500;
    let mqes = (cap & 0xffff) + 1;
    if mqes < u64::from(IO_ENTRIES) {
        n.io.entries = mqes as u16;
    }
    let min_page = 1u64 << (12 + ((cap >> 48) & 0xf));
    if min_page > PAGE {
        return Err(DiskError::Unsupported(alloc::format!(
            "controller's smallest page is {min_page} bytes (4096 needed)"
        )));
    }
    n.version = n.r32(REG_VS);

    // Reset: clear CC.EN and wait for CSTS.RDY to drop.
    let cc = n.r32(REG_CC);
    if cc & CC_EN != 0 {
        n.w32(REG_CC, cc & !CC_EN);
    }
    n.wait_ready(false, timeout)?;
    n.w32(REG_INTMS, !0);
    n.w32(
        REG_AQA,
        (u32::from(ADMIN_ENTRIES - 1) << 16) | u32::from(ADMIN_ENTRIES - 1),
    );
    n.w64(REG_ASQ, asq);
    n.w64(REG_ACQ, acq);
    // NVM command set, 4 KiB pages, round-robin arbitration.
    n.w32(REG_CC, CC_QUEUE_SIZES | CC_EN);
    n.wait_ready(true, timeout)?;

    let page = alloc_zeroed(1)?;
    let r = identify_all(&mut n, page);
    frame::dealloc(page, 1);
    r?;
    Ok(n)
}

fn identify_all(n: &mut Nvme, page: u64) -> Result<(), DiskError> {
    let read = |off: u64, len: usize| -> Vec<u8> {
        // SAFETY: `page` is a driver-owned 4 KiB frame the controller has finished
        // writing (its command completed); `off + len` stays inside it.
        unsafe { core::slice::from_raw_parts((page + off) as *const u8, len).to_vec() }
    };
    n.identify(1, 0, page)?;
    let ctrl = read(0, 4096);
    n.serial = ascii(&ctrl[4..24]);
    n.model = ascii(&ctrl[24..64]);
    let mdts = ctrl[77];
    if mdts != 0 {
        let min_page = 1u64 << (12 + ((n.cap() >> 48) & 0xf));
        n.max_transfer = n.max_transfer.min(min_page << mdts);
    }

    // I/O completion queue 1 (physically contiguous, interrupts off), then the
    // submission queue bound to it.
    let mut c = [0u32; 16];
    c[0] = ADMIN_CREATE_CQ;
    c[6] = n.io.cq as u32;
    c[7] = (n.io.cq >> 32) as u32;
    c[10] = (u32::from(n.io.entries - 1) << 16) | u32::from(n.io.id);
    c[11] = 1;
    n.admin_cmd(c, "create I/O completion queue")?;
    let mut c = [0u32; 16];
    c[0] = ADMIN_CREATE_SQ;
    c[6] = n.io.sq as u32;
    c[7] = (n.io.sq >> 32) as u32;
    c[10] = (u32::from(n.io.entries - 1) << 16) | u32::from(n.io.id);
    c[11] = (u32::from(n.io.id) << 16) | 1;
    n.admin_cmd(c, "create I/O submission queue")?;

    // First active namespace.
    n.identify(2, 0, page)?;
    let list = read(0, 8);
    let first = u32::from_le_bytes([list[0], list[1], list[2], list[3]]);
    if first == 0 {
        return Err(DiskError::Unsupported(String::from("no active namespace")));
    }
    n.nsid = first;
    n.identify(0, first, page)?;
    let ns = read(0, 256);
    n.sectors = u64::from_le_bytes([ns[0], ns[1], ns[2], ns[3], ns[4], ns[5], ns[6], ns[7]]);
    let fmt = usize::from(ns[26] & 0xf);
    let lbaf = read(128 + fmt as u64 * 4, 4);
    let lbads = lbaf[2];
    if !(9..=12).contains(&lbads) {
        return Err(DiskError::Unsupported(alloc::format!(
            "namespace {first}: unsupported block size 2^{lbads}"
        )));
    }
    n.lba_size = 1 << lbads;
    n.max_transfer = (n.max_transfer / u64::from(n.lba_size)).max(1) * u64::from(n.lba_size);
    Ok(())
}

// SAFETY: the controller is reached only through the storage layer's mutex, one caller
// at a time; its addresses are identity-mapped and valid on every core.
unsafe impl Send for Nvme {}

impl BlockDevice for Nvme {
    fn driver(&self) -> &'static str {
        "nvme"
    }

    fn model(&self) -> String {
        alloc::format!(
            "{} (serial {}, NVMe {}.{}, namespace {})",
            self.model,
            self.serial,
            self.version >> 16,
            (self.version >> 8) & 0xff,
            self.nsid
        )
    }

    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn sector_size(&self) -> u32 {
        self.lba_size
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if self.disabled {
            return Err(DiskError::Unsupported(String::from(
                "controller disabled after a timeout",
            )));
        }
        let bs = self.lba_size as usize;
        if buf.is_empty() || !buf.len().is_multiple_of(bs) {
            return Err(DiskError::BadLength(buf.len()));
        }
        let count = (buf.len() / bs) as u64;
        if lba.checked_add(count).is_none_or(|e| e > self.sectors) {
            return Err(DiskError::OutOfRange {
                lba,
                count,
                sectors: self.sectors,
            });
        }
        let addr = buf.as_mut_ptr() as u64;
        if addr.is_multiple_of(4) {
            return self.read_raw(lba, addr, buf.len() as u64);
        }
        // PRP entries must be dword aligned: go through the bounce page.
        let per = (PAGE as usize / bs).max(1);
        for (i, chunk) in buf.chunks_mut(per * bs).enumerate() {
            self.read_raw(lba + (i * per) as u64, self.bounce, chunk.len() as u64)?;
            // SAFETY: the bounce page is driver-owned and the read into it completed.
            let src = unsafe { core::slice::from_raw_parts(self.bounce as *const u8, chunk.len()) };
            chunk.copy_from_slice(src);
        }
        Ok(())
    }
}
