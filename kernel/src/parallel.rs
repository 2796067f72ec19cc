//! The worker pool over all online CPUs, behind the same `Parallel` interface the
//! inference engine uses (`embodios_engine::parallel::Parallel`: `threads` + `run`).

use crate::arch::x86_64::smp;

/// Runs a job on several workers at once (same shape as the engine's trait).
pub trait Parallel: Sync {
    /// How many workers `run` uses (at least 1).
    fn threads(&self) -> usize;
    /// Calls `job(i)` for every `i` in `0..threads()`, concurrently, and returns when all
    /// calls have returned.
    fn run(&self, job: &(dyn Fn(usize) + Sync));
}

/// Every online CPU; worker 0 is the calling (boot) processor.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuPool;

impl Parallel for CpuPool {
    fn threads(&self) -> usize {
        smp::online_cpus()
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        smp::run_on_all(job);
    }
}

/// The half-open range of `0..n` that worker `index` of `workers` handles.
pub fn split_range(n: usize, workers: usize, index: usize) -> core::ops::Range<usize> {
    let workers = workers.max(1);
    let base = n / workers;
    let extra = n % workers;
    let start = index * base + index.min(extra);
    let len = base + usize::from(index < extra);
    start..(start + len).min(n)
}
