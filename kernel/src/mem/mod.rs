//! Memory management that is not tied to an architecture: the physical frame allocator
//! and memory statistics.

pub mod frame;

use core::sync::atomic::{AtomicU64, Ordering};

/// Size of a physical frame (4 KiB).
pub const FRAME_SIZE: u64 = 4096;

static USABLE_BYTES: AtomicU64 = AtomicU64::new(0);
static HEAP_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Memory statistics for `mem`.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// RAM the firmware reports as usable.
    pub usable_bytes: u64,
    /// Bytes in free frames.
    pub free_frame_bytes: u64,
    /// Bytes given to the heap.
    pub heap_total: u64,
    /// Heap bytes currently allocated.
    pub heap_used: u64,
    /// Live heap allocations.
    pub heap_allocations: u64,
}

/// Records totals at boot (called by the architecture's memory setup).
pub fn set_totals(usable: u64, heap: u64) {
    USABLE_BYTES.store(usable, Ordering::Relaxed);
    HEAP_TOTAL.store(heap, Ordering::Relaxed);
}

/// Current statistics.
pub fn stats() -> Stats {
    let (heap_used, heap_allocations) = crate::arch::x86_64::memory::heap_usage();
    Stats {
        usable_bytes: USABLE_BYTES.load(Ordering::Relaxed),
        free_frame_bytes: frame::free_frames() * FRAME_SIZE,
        heap_total: HEAP_TOTAL.load(Ordering::Relaxed),
        heap_used,
        heap_allocations,
    }
}

/// Heap allocations and reallocations since boot (the counting global allocator).
pub fn allocations() -> u64 {
    crate::arch::x86_64::memory::allocations()
}

/// Heap bytes free for allocation, net of the allocator's own bookkeeping.
pub fn heap_available() -> u64 {
    crate::arch::x86_64::memory::heap_available()
}

/// Starts a peak-heap measurement at the current use.
pub fn reset_peak() {
    crate::arch::x86_64::memory::reset_peak()
}

/// Highest heap use (bytes requested) since [`reset_peak`].
pub fn peak_bytes() -> u64 {
    crate::arch::x86_64::memory::peak_bytes()
}

/// A one-line account of the heap for `status` and `unload`: free bytes, bytes in live
/// allocations and their count, free pieces.
pub fn heap_line() -> alloc::string::String {
    // Every figure is read before the line itself is allocated.
    let s = stats();
    let (free, pieces) = (
        heap_available(),
        crate::arch::x86_64::memory::heap_fragments(),
    );
    alloc::format!(
        "{free} bytes free, {} bytes in {} allocations, {pieces} free pieces",
        s.heap_used,
        s.heap_allocations,
    )
}
