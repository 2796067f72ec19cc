//! Device drivers: the 16550 serial port, the framebuffer text console, the PS/2
//! keyboard, the CMOS clock, PCI and the network controllers (virtio-net,
//! e1000/e1000e) and the disk controllers (virtio-blk, NVMe).

#![allow(unsafe_code)]

pub mod dma;
pub mod e1000;
pub mod framebuffer;
pub mod keyboard;
pub mod nvme;
pub mod pci;
pub mod rtc;
pub mod serial;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_net;
