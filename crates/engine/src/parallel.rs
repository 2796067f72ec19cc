//! The `Parallel` abstraction: how the engine spreads work over CPU cores.
//!
//! The engine itself has no threads (it also runs inside the kernel); whoever drives it
//! supplies a [`Parallel`] implementation. On a host that is a thread pool
//! (`embodios-host`), in the kernel it can be the application processors, and
//! [`Sequential`] runs everything on the calling core.

/// Runs a job on `threads()` workers at once.
pub trait Parallel: Sync {
    /// How many workers `run` uses (at least 1).
    fn threads(&self) -> usize;

    /// Calls `job(i)` for every `i` in `0..threads()`, concurrently, and returns when all
    /// calls have returned.
    fn run(&self, job: &(dyn Fn(usize) + Sync));
}

/// One worker: the calling thread does all the work.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Parallel for Sequential {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        job(0);
    }
}

/// The half-open range of `0..n` that worker `index` of `workers` handles, in even
/// contiguous pieces (the first `n % workers` pieces are one longer).
pub fn split_range(n: usize, workers: usize, index: usize) -> core::ops::Range<usize> {
    let workers = workers.max(1);
    let base = n / workers;
    let extra = n % workers;
    let start = index * base + index.min(extra);
    let len = base + usize::from(index < extra);
    let start = start.min(n);
    start..(start + len).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn split_range_covers_everything_once() {
        for n in [0usize, 1, 5, 64, 577] {
            for workers in 1..6 {
                let mut next = 0;
                for i in 0..workers {
                    let r = split_range(n, workers, i);
                    assert_eq!(r.start, next, "n={n} workers={workers} i={i}");
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn sequential_runs_index_zero_once() {
        let calls = AtomicUsize::new(0);
        Sequential.run(&|i| {
            assert_eq!(i, 0);
            calls.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
