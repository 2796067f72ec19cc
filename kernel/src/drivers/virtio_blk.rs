//! virtio-blk over PCI through the `virtio-drivers` crate (its PCI transport and the
//! `Hal` of [`super::virtio`]): large reads are split into requests kept in
//! flight together on the one virtqueue, polled.

use alloc::string::String;
use alloc::vec::Vec;

use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::PciTransport;

use super::pci;
use super::virtio::{self, KernelHal, VirtioError};
use crate::storage::{BlockDevice, DiskError};

/// Bytes per request (one descriptor; physically contiguous thanks to the identity
/// mapping).
const REQUEST_BYTES: usize = 256 << 10;
/// Requests in flight (each takes three descriptors of the crate's 16).
const IN_FLIGHT: usize = 4;
/// How long one request may take.
const TIMEOUT_MS: u64 = 10_000;

/// A virtio-blk disk.
pub struct VirtioBlk {
    dev: VirtIOBlk<KernelHal, PciTransport>,
    id: String,
}

// SAFETY: the device is only reached through the storage layer's mutex, one caller at
// a time; its raw pointers refer to identity-mapped MMIO and DMA memory valid on any
// core.
unsafe impl Send for VirtioBlk {}

/// Whether `d` is a virtio block function (transitional or modern ID).
pub fn matches(d: &pci::Device) -> bool {
    d.vendor == 0x1af4 && (d.device == 0x1001 || d.device == 0x1042)
}

/// Sets up the device at `d`.
pub fn probe(d: &pci::Device) -> Result<VirtioBlk, VirtioError> {
    let transport = virtio::open(d)?;
    let mut dev = VirtIOBlk::new(transport).map_err(|e| VirtioError::Device("virtio-blk", e))?;
    let mut raw = [0u8; 20];
    let id = match dev.device_id(&mut raw) {
        Ok(n) => String::from_utf8_lossy(&raw[..n.min(20)]).into_owned(),
        Err(_) => String::new(),
    };
    Ok(VirtioBlk { dev, id })
}

/// One request in flight: its header, status and where its data goes.
struct Pending {
    token: u16,
    req: BlkReq,
    resp: BlkResp,
    start: usize,
    len: usize,
    since: u64,
}

fn virtio_err(e: virtio_drivers::Error) -> DiskError {
    DiskError::Virtio(alloc::format!("{e}"))
}

impl BlockDevice for VirtioBlk {
    fn driver(&self) -> &'static str {
        "virtio-blk"
    }

    fn model(&self) -> String {
        if self.id.is_empty() {
            String::from("virtio disk")
        } else {
            alloc::format!("virtio disk, serial {}", self.id)
        }
    }

    fn sectors(&self) -> u64 {
        self.dev.capacity()
    }

    fn sector_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if buf.is_empty() || !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::BadLength(buf.len()));
        }
        let count = (buf.len() / SECTOR_SIZE) as u64;
        let sectors = self.dev.capacity();
        if lba.checked_add(count).is_none_or(|end| end > sectors) {
            return Err(DiskError::OutOfRange {
                lba,
                count,
                sectors,
            });
        }
        let clock = crate::arch::x86_64::time::uptime_ms;
        // Boxed so their addresses stay put while the device owns them.
        let mut pending: Vec<alloc::boxed::Box<Pending>> = Vec::new();
        let mut next = 0usize;
        let base = buf.as_mut_ptr();
        let total = buf.len();
        let mut result = Ok(());
        while next < total || !pending.is_empty() {
            while result.is_ok() && next < total && pending.len() < IN_FLIGHT {
                let len = REQUEST_BYTES.min(total - next);
                let mut p = alloc::boxed::Box::new(Pending {
                    token: 0,
                    req: BlkReq::default(),
                    resp: BlkResp::default(),
                    start: next,
                    len,
                    since: clock(),
                });
                // SAFETY: `start..start+len` lies inside `buf`, which outlives this
                // call; the pieces handed out never overlap, and each stays untouched
                // until its request is completed below.
                let piece = unsafe { core::slice::from_raw_parts_mut(base.add(next), len) };
                let sector = lba as usize + next / SECTOR_SIZE;
                let Pending { req, resp, .. } = &mut *p;
                // SAFETY: `req`, `resp` (boxed, not moved) and `piece` stay valid and
                // unread until `complete_read_blocks` for this token.
                match unsafe { self.dev.read_blocks_nb(sector, req, piece, resp) } {
                    Ok(t) => {
                        p.token = t;
                        pending.push(p);
                        next += len;
                    }
                    Err(virtio_drivers::Error::QueueFull) if !pending.is_empty() => break,
                    Err(e) => result = Err(virtio_err(e)),
                }
            }
            if result.is_err() && pending.is_empty() {
                break;
            }
            if result.is_err() && next < total {
                next = total;
            }
            match self.dev.peek_used() {
                Some(t) => {
                    let Some(i) = pending.iter().position(|p| p.token == t) else {
                        return Err(DiskError::Virtio(alloc::format!(
                            "device completed unknown request {t}"
                        )));
                    };
                    let mut p = pending.swap_remove(i);
                    // SAFETY: as above, the same piece of `buf` that was submitted.
                    let piece =
                        unsafe { core::slice::from_raw_parts_mut(base.add(p.start), p.len) };
                    let Pending {
                        req, resp, token, ..
                    } = &mut *p;
                    // SAFETY: the same buffers that were passed to `read_blocks_nb`.
                    let r = unsafe { self.dev.complete_read_blocks(*token, req, piece, resp) };
                    if let Err(e) = r {
                        if result.is_ok() {
                            let cause = match resp.status() {
                                RespStatus::IO_ERR => DiskError::Virtio(
                                    "the device reported an I/O error (VIRTIO_BLK_S_IOERR)".into(),
                                ),
                                RespStatus::UNSUPPORTED => DiskError::Virtio(
                                    "the device does not support the request (VIRTIO_BLK_S_UNSUPP)"
                                        .into(),
                                ),
                                _ => virtio_err(e),
                            };
                            result = Err(DiskError::Failed {
                                lba: lba + (p.start / SECTOR_SIZE) as u64,
                                count: (p.len / SECTOR_SIZE) as u64,
                                cause: alloc::boxed::Box::new(cause),
                            });
                        }
                    }
                }
                None => {
                    if pending.iter().any(|p| clock() - p.since > TIMEOUT_MS) {
                        // The device still owns the buffers; leak the headers rather
                        // than let it write into freed memory.
                        for p in pending.drain(..) {
                            core::mem::forget(p);
                        }
                        return Err(DiskError::Timeout {
                            what: "virtio-blk read",
                        });
                    }
                    core::hint::spin_loop();
                }
            }
        }
        let _ = self.dev.ack_interrupt();
        result
    }
}
