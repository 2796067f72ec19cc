//! Boot-time memory setup: the frame allocator over the multiboot2 memory map, the
//! kernel page tables, stacks with guard pages, and the kernel heap (talc).

use core::alloc::{GlobalAlloc, Layout as AllocLayout};
use core::sync::atomic::{AtomicU64, Ordering};

use talc::source::Manual;
use talc::TalcLock;

use super::boot::{BootInfo, RegionKind};
use super::paging::{self, Kind};
use crate::mem::{self, frame, FRAME_SIZE};

static HEAP: TalcLock<spin::Mutex<()>, Manual> = TalcLock::new(Manual);

/// The kernel heap as the global allocator: talc, plus counters that let the shell
/// prove the decode loop allocates nothing and measure a generation's peak heap use.
struct Counted;

#[global_allocator]
static GLOBAL: Counted = Counted;

/// Allocations and reallocations since boot (every CPU).
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes currently allocated (layout sizes).
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Highest `LIVE_BYTES` since the last [`reset_peak`].
static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

fn grew(by: u64) {
    let now = LIVE_BYTES.fetch_add(by, Ordering::Relaxed) + by;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes unchanged to talc (a sound allocator for the heap region it
// claimed); the wrapper only updates counters, which never allocate.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let p = unsafe { HEAP.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as u64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        let p = unsafe { HEAP.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size() as u64);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` came from this allocator with `layout`.
        let p = unsafe { HEAP.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
            grew(new_size as u64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract).
        unsafe { HEAP.dealloc(ptr, layout) }
    }
}

/// Allocations and reallocations made since boot, by every CPU.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Starts a new peak measurement at the current heap use.
pub fn reset_peak() {
    PEAK_BYTES.store(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Highest heap use (bytes requested) since [`reset_peak`].
pub fn peak_bytes() -> u64 {
    PEAK_BYTES.load(Ordering::Relaxed)
}

extern "C" {
    static __kernel_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __kernel_end: u8;
    static boot_stack_guard: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Kernel image layout (physical = virtual).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Start of the image (code).
    pub start: u64,
    /// End of code.
    pub text_end: u64,
    /// End of read-only data.
    pub rodata_end: u64,
    /// End of the image (data and bss).
    pub end: u64,
}

/// The kernel's own layout from linker symbols.
pub fn layout() -> Layout {
    // SAFETY: linker-script symbols; only their addresses are used.
    unsafe {
        Layout {
            start: sym(&__kernel_start),
            text_end: sym(&__text_end),
            rodata_end: sym(&__rodata_end),
            end: sym(&__kernel_end),
        }
    }
}

const MIB: u64 = 1 << 20;
const FOUR_GIB: u64 = 4 << 30;

/// Sets up frames, page tables and the heap from the boot memory map.
pub fn init(boot: &BootInfo) {
    let k = layout();
    let usable: u64 = boot
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Usable)
        .map(|r| r.end - r.start)
        .sum();
    let ram_top = boot
        .regions()
        .iter()
        .filter(|r| r.kind != RegionKind::Reserved)
        .map(|r| r.end)
        .max()
        .unwrap_or(0);
    let frames = ram_top.div_ceil(FRAME_SIZE);
    let bitmap_bytes = frames.div_ceil(64) * 8;

    // Ranges the allocator must never hand out.
    let mut reserved: [(u64, u64); 16] = [(0, 0); 16];
    let mut n = 0;
    reserved[n] = (0, FRAME_SIZE);
    n += 1;
    reserved[n] = (k.start, k.end);
    n += 1;
    reserved[n] = boot.info_range;
    n += 1;
    if let Some(t) = boot.symbols {
        reserved[n] = (t.symtab.0, t.symtab.0 + t.symtab.1);
        reserved[n + 1] = (t.strtab.0, t.strtab.0 + t.strtab.1);
        n += 2;
    }
    for m in boot.modules() {
        if n < reserved.len() - 1 {
            reserved[n] = (m.start, m.end);
            n += 1;
        }
    }
    let bitmap_at = find_free(boot, &reserved[..n], bitmap_bytes)
        .expect("no room for the frame bitmap in usable memory");
    reserved[n] = (bitmap_at, bitmap_at + bitmap_bytes);
    n += 1;

    // SAFETY: `bitmap_at..+bitmap_bytes` is usable RAM below 4 GiB (identity-mapped by
    // the boot tables) that overlaps nothing else in use; it is handed out only here.
    let bits = unsafe {
        core::slice::from_raw_parts_mut(bitmap_at as *mut u64, (bitmap_bytes / 8) as usize)
    };
    let mut fa = frame::FrameAllocator::new(bits, frames);
    for r in boot
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Usable)
    {
        fa.free_range(r.start, r.end);
    }
    for &(s, e) in &reserved[..n] {
        fa.reserve_range(s, e);
    }
    frame::install(fa);
    if let Some(t) = boot.symbols {
        super::symbols::install(t);
    }

    // Page tables: code RX, rodata R, RAM RW+NX, holes below 4 GiB uncached (devices).
    let nx_enabled = x86_64::registers::model_specific::Efer::read()
        .contains(x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE);
    let fb_range = boot
        .framebuffer
        .filter(|_| {
            raw_cpuid::CpuId::new()
                .get_feature_info()
                .is_some_and(|f| f.has_pat())
        })
        .map(|fb| {
            (
                fb.addr,
                fb.addr + u64::from(fb.pitch) * u64::from(fb.height),
            )
        });
    // Map every range the firmware lists (ACPI tables may sit in reserved memory above
    // RAM), everything below 4 GiB (device registers), and the framebuffer.
    let map_top = boot.regions().iter().map(|r| r.end).max().unwrap_or(0);
    let top = map_top.max(FOUR_GIB).max(fb_range.map_or(0, |r| r.1));
    let regions = boot.regions();
    paging::init_pat();
    paging::build(top, nx_enabled, |addr| {
        let end = addr + (2 * MIB);
        if addr >= k.start && addr < k.text_end {
            Kind::Code
        } else if addr >= k.text_end && addr < k.rodata_end {
            Kind::ReadOnly
        } else if fb_range.is_some_and(|(s, e)| s < end && e > addr) {
            Kind::Framebuffer
        } else if regions
            .iter()
            .any(|r| r.kind != RegionKind::Reserved && r.start < end && r.end > addr)
        {
            Kind::Data
        } else {
            Kind::Device
        }
    });
    paging::unmap_4k(0);
    // SAFETY: linker symbol; only its address is used.
    paging::unmap_4k(unsafe { sym(&boot_stack_guard) });

    // Heap: the largest free run, at most half of usable RAM (the rest stays with the
    // frame allocator for stacks, page tables and DMA).
    let run = frame::with(|a| a.largest_free_run()).unwrap_or(0);
    let heap_frames = run.min(usable / 2 / FRAME_SIZE);
    let heap_at = frame::alloc(heap_frames, 512).or_else(|_| frame::alloc(heap_frames, 1));
    let heap_bytes = match heap_at {
        Ok(at) => {
            // SAFETY: the frames are allocated to the heap for good and identity-mapped
            // read-write; talc takes them over.
            unsafe {
                HEAP.lock()
                    .claim(at as *mut u8, (heap_frames * FRAME_SIZE) as usize)
            };
            heap_frames * FRAME_SIZE
        }
        Err(_) => 0,
    };
    mem::set_totals(usable, heap_bytes);
}

fn find_free(boot: &BootInfo, reserved: &[(u64, u64)], size: u64) -> Option<u64> {
    for r in boot
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Usable)
    {
        let mut at = r.start.max(MIB).next_multiple_of(FRAME_SIZE);
        'retry: while at + size <= r.end.min(FOUR_GIB) {
            for &(s, e) in reserved {
                if at < e && at + size > s {
                    at = e.next_multiple_of(FRAME_SIZE);
                    continue 'retry;
                }
            }
            return Some(at);
        }
    }
    None
}

/// Allocates a stack of `size` bytes with an unmapped guard page below it; returns the
/// top (initial stack pointer, 16-byte aligned).
pub fn alloc_stack(size: usize) -> Result<u64, frame::FrameError> {
    let pages = (size as u64).div_ceil(FRAME_SIZE);
    let base = frame::alloc(pages + 1, 1)?;
    paging::unmap_4k(base);
    Ok(base + (pages + 1) * FRAME_SIZE)
}

/// Allocates one frame below 1 MiB (AP trampoline).
pub fn alloc_low_frame() -> Result<u64, frame::FrameError> {
    frame::with(|a| a.alloc_low())?
}

/// Heap bytes in use and live allocations.
pub fn heap_usage() -> (u64, u64) {
    let h = HEAP.lock();
    let c = h.counters();
    (c.allocated_bytes as u64, c.allocation_count as u64)
}

/// Heap bytes free for allocation (what talc has left after allocations and its own
/// per-allocation bookkeeping: the honest measure of what a load consumed).
pub fn heap_available() -> u64 {
    HEAP.lock().counters().available_bytes as u64
}

/// Free pieces of the heap (gaps between allocations).
pub fn heap_fragments() -> u64 {
    HEAP.lock().counters().fragment_count as u64
}

/// Writes `value` over `len` bytes of physical memory at `addr` and reads it back
/// (frame-allocator test helper).
pub fn fill_and_check(addr: u64, len: usize, value: u8) -> bool {
    // SAFETY: callers pass frames they allocated; identity-mapped read-write.
    let s = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) };
    s.fill(value);
    s.iter().all(|&b| b == value)
}

/// The bytes of a boot module (e.g. a model file), in place.
pub fn module_bytes(m: &super::boot::Module) -> &'static [u8] {
    let len = m.end.saturating_sub(m.start) as usize;
    if len == 0 {
        return &[];
    }
    // SAFETY: GRUB loaded the module into RAM at `start..end`; `init` reserved that range
    // in the frame allocator before anything else was handed out, so neither the heap nor
    // any stack or page table ever overlaps it, and nothing writes to it. All RAM is
    // identity-mapped, so the range is readable for the kernel's whole life.
    unsafe { core::slice::from_raw_parts(m.start as *const u8, len) }
}
