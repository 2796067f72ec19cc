//! What the virtio drivers (network and disk) share over PCI through the
//! `virtio-drivers` crate: its `Hal` on the kernel's frame allocator and identity
//! mapping, PCI configuration access through [`super::pci`], opening a function's
//! transport, and the setup error.

use core::ptr::NonNull;

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use super::pci;
use crate::mem::frame;

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

/// Why a virtio function could not be used.
#[derive(Debug)]
pub enum VirtioError {
    /// The PCI transport (capabilities, BARs) was refused.
    Transport(VirtioPciError),
    /// Feature negotiation or queue setup of the named device failed.
    Device(&'static str, virtio_drivers::Error),
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioError::Transport(e) => write!(f, "virtio PCI transport: {e}"),
            VirtioError::Device(name, e) => write!(f, "{name} setup: {e}"),
        }
    }
}

/// Turns on decoding and bus mastering for `d` and opens its virtio PCI transport.
pub fn open(d: &pci::Device) -> Result<PciTransport, VirtioError> {
    pci::enable(d);
    let mut root = PciRoot::new(Config(pci::access()));
    let df = DeviceFunction {
        bus: d.addr.bus,
        device: d.addr.device,
        function: d.addr.function,
    };
    PciTransport::new::<KernelHal, _>(&mut root, df).map_err(VirtioError::Transport)
}
