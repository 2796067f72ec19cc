//! Physically contiguous buffers of whole frames (identity-mapped RAM) for large
//! device reads, such as a model read from disk straight into its final memory.

use crate::mem::frame;

/// Frames owned by this buffer; freed on drop unless leaked.
pub struct FrameBuffer {
    addr: u64,
    pages: u64,
    len: usize,
}

impl FrameBuffer {
    /// Allocates room for `len` bytes (zeroed), or `None` when no run of free frames
    /// is that long.
    pub fn new(len: usize) -> Option<FrameBuffer> {
        let pages = (len as u64).div_ceil(4096).max(1);
        let addr = frame::alloc(pages, 1).ok()?;
        // SAFETY: the frames were just allocated for this buffer and are identity-mapped
        // read-write RAM.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, (pages * 4096) as usize) };
        Some(FrameBuffer { addr, pages, len })
    }

    /// The whole buffer (rounded up to whole frames).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the frames belong to this buffer alone while it lives; the borrow of
        // `self` keeps them from being freed or aliased.
        unsafe {
            core::slice::from_raw_parts_mut(self.addr as *mut u8, (self.pages * 4096) as usize)
        }
    }

    /// The first `len` bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`, shared.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// Keeps the frames for the rest of the run and returns the first `len` bytes.
    pub fn leak(self) -> &'static [u8] {
        let me = core::mem::ManuallyDrop::new(self);
        // SAFETY: the frames are never freed now (no drop), and nothing writes them
        // after this point, so a shared 'static view is sound.
        unsafe { core::slice::from_raw_parts(me.addr as *const u8, me.len) }
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        frame::dealloc(self.addr, self.pages);
    }
}
