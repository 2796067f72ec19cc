//! Physical frame allocator: one bit per 4 KiB frame (1 = used), covering all RAM the
//! memory map reports. The bitmap itself lives in usable RAM chosen at boot.

use spin::Mutex;

use super::FRAME_SIZE;

/// Allocation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// No run of free frames of the requested length exists.
    OutOfMemory,
    /// The allocator has not been initialised.
    NotReady,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::OutOfMemory => f.write_str("out of physical memory"),
            FrameError::NotReady => f.write_str("frame allocator not initialised"),
        }
    }
}

/// A bitmap frame allocator.
pub struct FrameAllocator {
    bits: &'static mut [u64],
    frames: u64,
    free: u64,
    /// Search hint: no free frame below this index (for single-frame allocations).
    hint: u64,
}

/// Frames below this index (1 MiB) are only handed out on explicit request: the AP
/// trampoline must live there.
const LOW_LIMIT: u64 = (1 << 20) / FRAME_SIZE;

impl FrameAllocator {
    /// Creates an allocator over `bits` (all frames marked used).
    pub fn new(bits: &'static mut [u64], frames: u64) -> Self {
        bits.fill(u64::MAX);
        FrameAllocator {
            bits,
            frames,
            free: 0,
            hint: LOW_LIMIT,
        }
    }

    fn is_used(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64, used: bool) {
        let w = &mut self.bits[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        if used && *w & m == 0 {
            *w |= m;
            self.free -= 1;
        } else if !used && *w & m != 0 {
            *w &= !m;
            self.free += 1;
        }
    }

    /// Marks the frames fully inside `[start, end)` free.
    pub fn free_range(&mut self, start: u64, end: u64) {
        let first = start.div_ceil(FRAME_SIZE);
        let last = (end / FRAME_SIZE).min(self.frames);
        for i in first..last {
            self.set(i, false);
        }
        self.hint = self.hint.min(first.max(LOW_LIMIT));
    }

    /// Marks every frame touching `[start, end)` used.
    pub fn reserve_range(&mut self, start: u64, end: u64) {
        let first = start / FRAME_SIZE;
        let last = end.div_ceil(FRAME_SIZE).min(self.frames);
        for i in first..last {
            self.set(i, true);
        }
    }

    /// Allocates `count` contiguous frames at or above 1 MiB, aligned to `align`
    /// frames; returns the physical address of the first.
    pub fn alloc(&mut self, count: u64, align: u64) -> Result<u64, FrameError> {
        self.alloc_in(count, align, self.hint, self.frames)
    }

    /// Allocates one frame below 1 MiB (for real-mode code).
    pub fn alloc_low(&mut self) -> Result<u64, FrameError> {
        self.alloc_in(1, 1, 1, LOW_LIMIT)
    }

    fn alloc_in(&mut self, count: u64, align: u64, from: u64, to: u64) -> Result<u64, FrameError> {
        let align = align.max(1);
        let mut i = from.next_multiple_of(align);
        while i + count <= to {
            match (i..i + count).rev().find(|&j| self.is_used(j)) {
                None => {
                    for j in i..i + count {
                        self.set(j, true);
                    }
                    if count == 1 && i == self.hint {
                        self.hint = i + 1;
                    }
                    return Ok(i * FRAME_SIZE);
                }
                // Skip past the used frame, keeping the alignment.
                Some(used) => i = (used + 1).next_multiple_of(align),
            }
        }
        Err(FrameError::OutOfMemory)
    }

    /// Returns `count` frames starting at `addr`.
    pub fn dealloc(&mut self, addr: u64, count: u64) {
        let first = addr / FRAME_SIZE;
        for i in first..first + count {
            self.set(i, false);
        }
        if first >= LOW_LIMIT {
            self.hint = self.hint.min(first);
        }
    }

    /// Length (in frames) of the longest free run at or above 1 MiB.
    pub fn largest_free_run(&self) -> u64 {
        let (mut best, mut run) = (0, 0);
        for i in LOW_LIMIT..self.frames {
            if self.is_used(i) {
                run = 0;
            } else {
                run += 1;
                best = best.max(run);
            }
        }
        best
    }

    /// Free frames.
    pub fn free(&self) -> u64 {
        self.free
    }

    /// Whether the frame holding `addr` is allocated.
    pub fn is_allocated(&self, addr: u64) -> bool {
        let i = addr / FRAME_SIZE;
        i >= self.frames || self.is_used(i)
    }
}

static ALLOCATOR: Mutex<Option<FrameAllocator>> = Mutex::new(None);

/// Installs the allocator (once, at boot).
pub fn install(a: FrameAllocator) {
    *ALLOCATOR.lock() = Some(a);
}

/// Runs `f` on the allocator.
pub fn with<R>(f: impl FnOnce(&mut FrameAllocator) -> R) -> Result<R, FrameError> {
    let mut guard = ALLOCATOR.lock();
    guard.as_mut().map(f).ok_or(FrameError::NotReady)
}

/// Allocates `count` contiguous frames aligned to `align` frames.
pub fn alloc(count: u64, align: u64) -> Result<u64, FrameError> {
    with(|a| a.alloc(count, align))?
}

/// Frees frames from `alloc`.
pub fn dealloc(addr: u64, count: u64) {
    let _ = with(|a| a.dealloc(addr, count));
}

/// Free frames now.
pub fn free_frames() -> u64 {
    with(|a| a.free()).unwrap_or(0)
}
