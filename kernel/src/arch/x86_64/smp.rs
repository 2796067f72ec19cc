//! Symmetric multiprocessing: per-CPU data (reached through GS), starting application
//! processors with INIT-SIPI-SIPI through a real-mode trampoline, and the worker pool
//! that runs one closure on every online CPU.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use super::acpi::MAX_CPUS;
use super::interrupts::{self, WAKE_VECTOR};
use super::{apic, gdt, memory, paging, time};

/// Per-CPU data; GS base points at the CPU's entry.
#[repr(C)]
pub struct PerCpu {
    /// Worker index (0 = boot processor), dense over online CPUs.
    pub index: AtomicU64,
    /// Local APIC ID.
    pub apic_id: AtomicU32,
    /// Jobs this CPU ran in the pool.
    pub jobs_run: AtomicU64,
    /// Set once the CPU finished its bring-up.
    pub online: AtomicBool,
    /// The worker is spinning for the next job (it needs no wake-up IPI).
    pub spinning: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const PERCPU_INIT: PerCpu = PerCpu {
    index: AtomicU64::new(0),
    apic_id: AtomicU32::new(0),
    jobs_run: AtomicU64::new(0),
    online: AtomicBool::new(false),
    spinning: AtomicBool::new(false),
};

static PERCPU: [PerCpu; MAX_CPUS] = [PERCPU_INIT; MAX_CPUS];
static GS_READY: AtomicBool = AtomicBool::new(false);
static ONLINE: AtomicUsize = AtomicUsize::new(1);

const IA32_GS_BASE: u32 = 0xc000_0101;
const AP_STACK_SIZE: usize = 256 * 1024;

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static mut AP_BOOT_STACK: u64;
    static mut AP_BOOT_CPU: u64;
}

fn set_gs(slot: usize) {
    super::io::wrmsr(IA32_GS_BASE, &PERCPU[slot] as *const PerCpu as u64);
}

/// Index of the calling CPU (0 = boot processor).
pub fn current_cpu() -> usize {
    if !GS_READY.load(Ordering::Relaxed) {
        return 0;
    }
    let v: u64;
    // SAFETY: GS base points at this CPU's `PerCpu`, whose first field is `index`.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) v, options(nostack, readonly, preserves_flags))
    };
    v as usize
}

/// Per-CPU data of worker `i`.
pub fn percpu(i: usize) -> &'static PerCpu {
    &PERCPU[i]
}

/// Number of CPUs online.
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::SeqCst)
}

/// Sets up the boot processor's per-CPU data.
pub fn init_bsp_percpu() {
    PERCPU[0].index.store(0, Ordering::Relaxed);
    set_gs(0);
    GS_READY.store(true, Ordering::SeqCst);
}

/// Starts every CPU in `apic_ids` except the boot processor. Returns how many came up.
pub fn start_aps(apic_ids: &[u32]) -> usize {
    let bsp = apic::id();
    PERCPU[0].apic_id.store(bsp, Ordering::Relaxed);
    PERCPU[0].online.store(true, Ordering::SeqCst);
    let others = apic_ids.iter().copied().filter(|&id| id != bsp);
    if others.clone().next().is_none() {
        return 0;
    }
    let Ok(tramp) = memory::alloc_low_frame() else {
        println!("smp: no free page below 1 MiB for the AP trampoline");
        return 0;
    };
    // SAFETY: linker symbols delimiting the trampoline code in .rodata.
    let (start, end) = unsafe {
        (
            &ap_trampoline_start as *const u8,
            &ap_trampoline_end as *const u8,
        )
    };
    let len = end as usize - start as usize;
    // SAFETY: `tramp` is a free, identity-mapped, writable frame we own; the source is
    // the trampoline code of `len` (< 4096) bytes.
    unsafe { core::ptr::copy_nonoverlapping(start, tramp as *mut u8, len) };
    let mut started = 0;
    for id in others {
        let slot = online_cpus();
        if slot >= MAX_CPUS {
            break;
        }
        let Ok(stack) = memory::alloc_stack(AP_STACK_SIZE) else {
            break;
        };
        PERCPU[slot].index.store(slot as u64, Ordering::Relaxed);
        PERCPU[slot].apic_id.store(id, Ordering::Relaxed);
        // SAFETY: the AP reads these two words before it marks itself online; no other
        // AP is starting at the same time.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!(AP_BOOT_STACK), stack);
            core::ptr::write_volatile(core::ptr::addr_of_mut!(AP_BOOT_CPU), slot as u64);
        }
        apic::send_init(id);
        time::delay_us(10_000);
        apic::send_sipi(id, (tramp >> 12) as u8);
        if !wait_online(slot, 2_000) {
            apic::send_sipi(id, (tramp >> 12) as u8);
        }
        if wait_online(slot, 2_000_000) {
            ONLINE.fetch_add(1, Ordering::SeqCst);
            started += 1;
        } else {
            println!("smp: CPU with APIC ID {id} did not start");
        }
    }
    started
}

fn wait_online(slot: usize, us: u64) -> bool {
    let end = time::uptime_us() + us;
    while time::uptime_us() < end {
        if PERCPU[slot].online.load(Ordering::SeqCst) {
            return true;
        }
        core::hint::spin_loop();
    }
    PERCPU[slot].online.load(Ordering::SeqCst)
}

/// Rust entry of an application processor (from boot.S, on its own stack).
#[no_mangle]
extern "C" fn ap_main(slot: u64) -> ! {
    let slot = slot as usize;
    set_gs(slot);
    paging::init_pat();
    paging::activate();
    interrupts::load_idt();
    interrupts::fit_vector_state();
    gdt::init_cpu();
    apic::enable_local();
    PERCPU[slot].online.store(true, Ordering::SeqCst);
    worker_loop(slot)
}

/// The job the pool is running, as a type-erased fat pointer.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: the closure is `Sync`; the pointer is only dereferenced while `run` keeps the
// closure alive (it waits for every worker before returning).
unsafe impl Send for Job {}

static JOB: Mutex<Option<Job>> = Mutex::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static REMAINING: AtomicUsize = AtomicUsize::new(0);
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn run_current_job(worker: usize) {
    let f = JOB.lock().as_ref().map(|j| j.f);
    if let Some(f) = f {
        // SAFETY: see `Job`: `run` keeps the closure alive until REMAINING hits 0.
        unsafe { (*f)(worker) };
        PERCPU[worker].jobs_run.fetch_add(1, Ordering::Relaxed);
    }
}

/// Set while a generation runs: the workers then spin between jobs instead of halting,
/// so a job starts without an interrupt's round trip (jobs come back to back, one per
/// matrix product).
static HOT: AtomicBool = AtomicBool::new(false);

/// How long a worker spins after a job before it halts, µs. Within one token the
/// products follow each other within microseconds; a longer gap (sampling, the console,
/// a slow emulator) is not worth burning a core on, and under an emulator on a busy host
/// a spinning virtual CPU takes host time from the one doing the work.
const SPIN_US: u64 = 500;

/// Keeps the workers spinning between jobs (`true`) or lets them halt (`false`).
pub fn set_hot(on: bool) {
    HOT.store(on, Ordering::SeqCst);
}

fn worker_loop(slot: usize) -> ! {
    let me = &PERCPU[slot];
    let mut seen = GENERATION.load(Ordering::SeqCst);
    let mut idle_since = 0;
    loop {
        let g = GENERATION.load(Ordering::SeqCst);
        if g != seen {
            seen = g;
            run_current_job(slot);
            REMAINING.fetch_sub(1, Ordering::SeqCst);
            idle_since = time::uptime_us();
            continue;
        }
        if HOT.load(Ordering::Relaxed) && time::uptime_us().saturating_sub(idle_since) < SPIN_US {
            me.spinning.store(true, Ordering::SeqCst);
            core::hint::spin_loop();
            continue;
        }
        // Leaving the spin: `run_on_all` sends an IPI to a worker it does not see
        // spinning, and this worker checks GENERATION again after clearing the flag, so
        // a job posted in between is seen either way (both sides are SeqCst).
        me.spinning.store(false, Ordering::SeqCst);
        interrupts::disable();
        if GENERATION.load(Ordering::SeqCst) != seen {
            interrupts::enable();
            continue;
        }
        // Atomic with the check above: a wake-up IPI sent after it ends the HLT.
        interrupts::enable_and_wait();
    }
}

/// Runs `job(i)` for every `i` in `0..online_cpus()`, `job(0)` on the caller (which
/// must be the boot processor), and returns when all are done.
pub fn run_on_all(job: &(dyn Fn(usize) + Sync)) {
    let _guard = RUN_LOCK.lock();
    let n = online_cpus();
    if n == 1 {
        job(0);
        PERCPU[0].jobs_run.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: erasing the lifetime is sound because this function does not return
    // before every worker finished with the closure (REMAINING == 0) and the job slot is
    // cleared before returning.
    let erased: *const (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(job) };
    *JOB.lock() = Some(Job { f: erased });
    REMAINING.store(n - 1, Ordering::SeqCst);
    GENERATION.fetch_add(1, Ordering::SeqCst);
    for cpu in &PERCPU[1..n] {
        if !cpu.spinning.load(Ordering::SeqCst) {
            apic::send_ipi(cpu.apic_id.load(Ordering::Relaxed), WAKE_VECTOR);
        }
    }
    job(0);
    PERCPU[0].jobs_run.fetch_add(1, Ordering::Relaxed);
    while REMAINING.load(Ordering::SeqCst) != 0 {
        core::hint::spin_loop();
    }
    *JOB.lock() = None;
}
