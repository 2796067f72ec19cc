//! virtio-net over PCI through the `virtio-drivers` crate (with the shared pieces of
//! [`super::virtio`]): the [`crate::net::Nic`] interface the TCP/IP stack drives.

use alloc::vec::Vec;

use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::PciTransport;

use super::pci;
use super::virtio::{self, KernelHal, VirtioError};

/// Descriptors per virtqueue (a power of two the device accepts).
const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a full Ethernet frame plus the virtio-net header.
const RX_BUFFER: usize = 2048;

/// A virtio-net device.
pub struct VirtioNic {
    dev: VirtIONet<KernelHal, PciTransport, QUEUE_SIZE>,
}

/// Whether `d` is a virtio network function (transitional or modern ID).
pub fn matches(d: &pci::Device) -> bool {
    d.vendor == 0x1af4 && (d.device == 0x1000 || d.device == 0x1041)
}

/// Sets up the device at `d` (decoding and bus mastering on, queues filled).
pub fn probe(d: &pci::Device) -> Result<VirtioNic, VirtioError> {
    let transport = virtio::open(d)?;
    let dev =
        VirtIONet::new(transport, RX_BUFFER).map_err(|e| VirtioError::Device("virtio-net", e))?;
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
