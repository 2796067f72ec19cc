//! virtio-net over PCI through the `virtio-drivers` crate: its `Hal` on the kernel's
//! frame allocator and identity mapping, PCI configuration access through
//! [`super::pci`], and the [`crate::net::Nic`] interface the TCP/IP stack drives.

use alloc::vec::Vec;
use core::ptr::NonNull;

use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use super::pci;
use crate::mem::frame;

/// Descriptors per virtqueue (a power of two the device accepts).
const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a full Ethernet frame plus the virtio-net header.
const RX_BUFFER: usize = 2048;

/// The crate's platform hooks: DMA memory from the frame allocator; physical and
/// virtual addresses are equal (identity mapping), so sharing is free.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns fresh, zeroed, page-aligned frames that nothing else
// uses until `dma_dealloc`; `mmio_phys_to_virt` maps the BAR range (identity,
// uncached) before returning it; `share` returns the identity address of memory the
// caller owns, which the device may access because all RAM is identity-mapped.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let addr = frame::alloc(pages as u64, 1).expect("out of memory for virtio DMA");
        // SAFETY: the frames were just allocated for this call and are identity-mapped
        // read-write.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, pages * PAGE_SIZE) };
        (
            addr,
            NonNull::new(addr as *mut u8).expect("frame allocator returned address 0"),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        frame::dealloc(paddr, pages as u64);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        crate::arch::x86_64::paging::map_device(paddr, size as u64);
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Configuration space access for the crate's PCI transport.
pub struct Config(pub pci::Access);

fn address(df: DeviceFunction) -> pci::Address {
    pci::Address {
        bus: df.bus,
        device: df.device,
        function: df.function,
    }
}

impl ConfigurationAccess for Config {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        self.0.read32(address(df), u16::from(register_offset))
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        self.0
            .write32(address(df), u16::from(register_offset), data)
    }

    unsafe fn unsafe_clone(&self) -> Self {
        Config(self.0)
    }
}

/// Why a virtio-net function could not be used.
#[derive(Debug)]
pub enum VirtioNetError {
    /// The PCI transport (capabilities, BARs) was refused.
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    /// Feature negotiation or queue setup failed.
    Device(virtio_drivers::Error),
}

impl core::fmt::Display for VirtioNetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioNetError::Transport(e) => write!(f, "virtio PCI transport: {e}"),
            VirtioNetError::Device(e) => write!(f, "virtio-net setup: {e}"),
        }
    }
}

/// A virtio-net device.
pub struct VirtioNic {
    dev: VirtIONet<KernelHal, PciTransport, QUEUE_SIZE>,
}

/// Whether `d` is a virtio network function (transitional or modern ID).
pub fn matches(d: &pci::Device) -> bool {
    d.vendor == 0x1af4 && (d.device == 0x1000 || d.device == 0x1041)
}

/// Sets up the device at `d` (decoding and bus mastering on, queues filled).
pub fn probe(d: &pci::Device) -> Result<VirtioNic, VirtioNetError> {
    pci::enable(d);
    let mut root = PciRoot::new(Config(pci::access()));
    let df = DeviceFunction {
        bus: d.addr.bus,
        device: d.addr.device,
        function: d.addr.function,
    };
    let transport =
        PciTransport::new::<KernelHal, _>(&mut root, df).map_err(VirtioNetError::Transport)?;
    let dev = VirtIONet::new(transport, RX_BUFFER).map_err(VirtioNetError::Device)?;
    Ok(VirtioNic { dev })
}

impl crate::net::Nic for VirtioNic {
    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    fn link_up(&self) -> bool {
        // Without the status feature a virtio link is always up.
        true
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        let buf = self.dev.receive().ok()?;
        let frame = buf.packet().to_vec();
        // A buffer that cannot be requeued is lost; the queue keeps working with the
        // rest.
        let _ = self.dev.recycle_rx_buffer(buf);
        Some(frame)
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        if !self.dev.can_send() {
            return false;
        }
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        self.dev.send(tx).is_ok()
    }
}
