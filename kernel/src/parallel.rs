//! The kernel's implementations of the inference engine's host interfaces: the
//! `Parallel` worker pool over the online CPUs and the `Clock` on the TSC.

use core::sync::atomic::{AtomicUsize, Ordering};

pub use embodios_engine::parallel::split_range;
pub use embodios_engine::{Clock, Parallel};

use crate::arch::x86_64::{smp, time};

/// Cap on the workers the pool uses (`threads=` / `set threads`); 0 means every
/// online CPU.
static THREAD_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Limits the pool to `n` workers (0: no limit).
pub fn set_thread_limit(n: usize) {
    THREAD_LIMIT.store(n, Ordering::Relaxed);
}

/// Workers the pool uses now: the online CPUs, capped by the limit.
pub fn threads() -> usize {
    let online = smp::online_cpus().max(1);
    match THREAD_LIMIT.load(Ordering::Relaxed) {
        0 => online,
        n => n.min(online),
    }
}

/// The online CPUs (worker 0 is the calling boot processor), capped by the thread
/// limit in force when the pool is used.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuPool;

impl Parallel for CpuPool {
    fn threads(&self) -> usize {
        threads()
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let n = threads();
        if n == 1 {
            job(0);
            return;
        }
        // Every online CPU wakes for a pool job; those past the limit do nothing.
        smp::run_on_all(&|i| {
            if i < n {
                job(i)
            }
        });
    }
}

/// Microseconds since boot from the calibrated TSC.
#[derive(Debug, Clone, Copy, Default)]
pub struct TscClock;

impl Clock for TscClock {
    fn now_us(&self) -> u64 {
        time::uptime_us()
    }
}

/// While alive, the pool's workers spin between jobs instead of halting (a generation
/// holds one, so its back-to-back products start without a wake-up interrupt).
pub struct HotPool(());

impl HotPool {
    /// Keeps the workers spinning until dropped.
    pub fn new() -> Self {
        smp::set_hot(true);
        HotPool(())
    }
}

impl Default for HotPool {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HotPool {
    fn drop(&mut self) {
        smp::set_hot(false);
    }
}
