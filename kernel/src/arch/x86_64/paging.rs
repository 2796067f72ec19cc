//! Kernel page tables: all physical memory identity-mapped with 2 MiB pages. Code is
//! read-only and executable; everything else is no-execute; read-only data is not
//! writable; page 0 and every stack guard page are unmapped (4 KiB granularity where
//! needed, by splitting the 2 MiB page that holds them).

use spin::Mutex;

use crate::mem::frame;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const NO_CACHE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const SIZE_2M: u64 = 2 << 20;
const SIZE_1G: u64 = 1 << 30;

/// Physical address of the kernel PML4 (0 until `build` ran).
static PML4: Mutex<u64> = Mutex::new(0);

/// Permission class of one 2 MiB chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel code: read + execute.
    Code,
    /// Kernel read-only data: read.
    ReadOnly,
    /// RAM: read + write, no execute.
    Data,
    /// Not RAM (device memory): read + write, uncached, no execute.
    Device,
    /// The framebuffer: read + write, write-combining (PAT entry 4), no execute.
    Framebuffer,
}

/// PAT bit of a 2 MiB page-directory entry.
const PAT_2M: u64 = 1 << 12;

/// IA32_PAT value: the power-on default (WB, WT, UC-, UC, ...) except entry 4, which
/// becomes write-combining for the framebuffer. Every CPU loads the same value.
const PAT_VALUE: u64 = 0x0007_0401_0007_0406;

/// Programs the PAT on the calling CPU (when the CPU has one).
pub fn init_pat() {
    if raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_pat())
    {
        super::io::wrmsr(0x277, PAT_VALUE);
    }
}

fn nx(enabled: bool) -> u64 {
    if enabled {
        NO_EXECUTE
    } else {
        0
    }
}

fn zeroed_table() -> u64 {
    let addr = frame::alloc(1, 1).expect("out of memory for page tables");
    // SAFETY: the frame was just allocated for us and is identity-mapped.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, 4096) };
    addr
}

fn table(addr: u64) -> *mut u64 {
    (addr & ADDR_MASK) as *mut u64
}

/// Returns the address of the page-directory entry for `virt`, creating the
/// intermediate tables.
fn pde_for(pml4: u64, virt: u64) -> *mut u64 {
    let mut t = pml4;
    for shift in [39u32, 30] {
        let idx = ((virt >> shift) & 511) as usize;
        // SAFETY: `t` is a page table frame we own; idx < 512.
        let entry = unsafe { table(t).add(idx) };
        // SAFETY: as above; entries are plain u64s.
        unsafe {
            if *entry & PRESENT == 0 {
                *entry = zeroed_table() | PRESENT | WRITABLE;
            }
            t = *entry & ADDR_MASK;
        }
    }
    // SAFETY: `t` is a page directory we own.
    unsafe { table(t).add(((virt >> 21) & 511) as usize) }
}

/// Builds the kernel page tables: `[0, top)` mapped with 2 MiB pages whose permission
/// class `kind_of` decides, then switches CR3 to them.
pub fn build(top: u64, nx_enabled: bool, kind_of: impl Fn(u64) -> Kind) {
    let pml4 = zeroed_table();
    let top = top.next_multiple_of(SIZE_1G);
    let mut addr = 0;
    while addr < top {
        let flags = match kind_of(addr) {
            Kind::Code => PRESENT | HUGE,
            Kind::ReadOnly => PRESENT | HUGE | nx(nx_enabled),
            Kind::Data => PRESENT | WRITABLE | HUGE | nx(nx_enabled),
            Kind::Device => PRESENT | WRITABLE | HUGE | NO_CACHE | WRITE_THROUGH | nx(nx_enabled),
            Kind::Framebuffer => PRESENT | WRITABLE | HUGE | PAT_2M | nx(nx_enabled),
        };
        // SAFETY: `pde_for` returns a valid entry pointer in our own tables.
        unsafe { *pde_for(pml4, addr) = addr | flags };
        addr += SIZE_2M;
    }
    *PML4.lock() = pml4;
    // SAFETY: the new tables map all RAM and the kernel identically to the boot tables
    // (with stricter permissions that match how each section is used).
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack)) };
}

/// Maps `[start, start + len)` (device registers above the boot-time map, e.g. a
/// 64-bit PCI BAR) identity, uncached, with 2 MiB pages. Chunks already mapped keep
/// their mapping.
pub fn map_device(start: u64, len: u64) {
    let pml4 = *PML4.lock();
    assert!(pml4 != 0, "kernel page tables not built");
    let nx_enabled = x86_64::registers::model_specific::Efer::read()
        .contains(x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE);
    let mut addr = start & !(SIZE_2M - 1);
    let end = start.saturating_add(len.max(1));
    while addr < end {
        let pde = pde_for(pml4, addr);
        // SAFETY: `pde_for` returns a valid entry pointer in our own tables; a new entry
        // only covers device registers nothing else maps, and x86 does not cache
        // not-present entries, so no TLB flush is needed.
        unsafe {
            if *pde & PRESENT == 0 {
                *pde = addr | PRESENT | WRITABLE | HUGE | NO_CACHE | WRITE_THROUGH | nx(nx_enabled);
            }
        }
        addr += SIZE_2M;
    }
}

/// Loads the kernel page tables on the calling CPU (application processors).
pub fn activate() {
    let pml4 = *PML4.lock();
    assert!(pml4 != 0, "kernel page tables not built");
    // SAFETY: same tables the boot processor runs on.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack)) };
}

/// Unmaps the 4 KiB page at `addr` (a guard page), splitting its 2 MiB page.
pub fn unmap_4k(addr: u64) {
    let pml4 = *PML4.lock();
    assert!(pml4 != 0, "kernel page tables not built");
    let pde = pde_for(pml4, addr);
    // SAFETY: `pde` points into our page directory; the new page table inherits the
    // 2 MiB page's flags (bit 7 means PAT in a 4 KiB entry, so it is cleared) and maps
    // the same physical range, so nothing but the guard page changes.
    unsafe {
        let entry = *pde;
        if entry & HUGE != 0 {
            let base = entry & ADDR_MASK & !(SIZE_2M - 1);
            let flags = entry & !ADDR_MASK & !HUGE;
            let pt = zeroed_table();
            for i in 0..512u64 {
                *table(pt).add(i as usize) = (base + i * 4096) | flags;
            }
            *pde = pt | PRESENT | WRITABLE;
        }
        let pt = *pde & ADDR_MASK;
        *table(pt).add(((addr >> 12) & 511) as usize) &= !PRESENT;
        core::arch::asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack));
    }
}

/// Looks up the page-table flags of `addr`: `(present, writable, executable)`.
pub fn permissions(addr: u64) -> (bool, bool, bool) {
    let pml4 = *PML4.lock();
    if pml4 == 0 {
        return (false, false, false);
    }
    let mut t = pml4;
    let mut writable = true;
    let mut exec = true;
    for shift in [39u32, 30, 21, 12] {
        // SAFETY: walking our own page tables read-only.
        let e = unsafe { *table(t).add(((addr >> shift) & 511) as usize) };
        if e & PRESENT == 0 {
            return (false, false, false);
        }
        writable &= e & WRITABLE != 0;
        exec &= e & NO_EXECUTE == 0;
        if shift == 12 || (shift == 21 && e & HUGE != 0) {
            break;
        }
        t = e & ADDR_MASK;
    }
    (true, writable, exec)
}

/// True when `addr` is mapped (used by the backtrace walker; never blocks).
pub fn readable(addr: u64) -> bool {
    let pml4 = match PML4.try_lock() {
        Some(g) => *g,
        None => return addr < (4 << 30),
    };
    if pml4 == 0 {
        return addr < (4 << 30);
    }
    let mut t = pml4;
    for shift in [39u32, 30, 21, 12] {
        // SAFETY: walking our own page tables read-only.
        let e = unsafe { *table(t).add(((addr >> shift) & 511) as usize) };
        if e & PRESENT == 0 {
            return false;
        }
        if shift == 12 || (shift == 21 && e & HUGE != 0) {
            return true;
        }
        t = e & ADDR_MASK;
    }
    true
}

/// Size of the page that maps `addr` (2 MiB or 4 KiB), None when unmapped.
pub fn page_size(addr: u64) -> Option<u64> {
    let pml4 = *PML4.lock();
    if pml4 == 0 {
        return None;
    }
    let mut t = pml4;
    for shift in [39u32, 30, 21, 12] {
        // SAFETY: walking our own page tables read-only.
        let e = unsafe { *table(t).add(((addr >> shift) & 511) as usize) };
        if e & PRESENT == 0 {
            return None;
        }
        if shift == 21 && e & HUGE != 0 {
            return Some(SIZE_2M);
        }
        if shift == 12 {
            return Some(4096);
        }
        t = e & ADDR_MASK;
    }
    None
}

/// Bytes of `[start, end)` mapped by 2 MiB pages and by 4 KiB pages (a model module
/// should be almost all 2 MiB: only a 2 MiB page shared with a stack guard page is
/// split).
pub fn page_coverage(start: u64, end: u64) -> (u64, u64) {
    let (mut large, mut small) = (0, 0);
    let mut addr = start;
    while addr < end {
        let size = page_size(addr).unwrap_or(4096);
        let next = ((addr / size) + 1) * size;
        let n = next.min(end) - addr;
        if size == SIZE_2M {
            large += n;
        } else {
            small += n;
        }
        addr = next;
    }
    (large, small)
}
