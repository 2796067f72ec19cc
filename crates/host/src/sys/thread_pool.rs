//! The host's persistent thread pool behind the engine's [`Parallel`] trait: workers
//! created once, each job handed over through one slot without a lock. This module is
//! the host's platform layer and holds the crate's only `unsafe` code (the lifetime-
//! erased job reference and its slot), each block with its `SAFETY` argument.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use embodios_engine::parallel::Parallel;

/// A job as the workers see it: the caller's closure with its lifetime erased.
///
/// `ThreadPool::run` does not return before every worker has finished with the job
/// (every worker's `done` slot shows the job's generation), so the borrow never
/// outlives the closure.
type ErasedJob = &'static (dyn Fn(usize) + Sync);

/// A waiting thread first spins (with `pause`) for this long: a token's forward pass
/// posts a few hundred short jobs, microseconds apart (the gaps are the sequential
/// pieces between them), and a wake-up through the operating system costs more than
/// such a job...
const SPIN_TIME: Duration = Duration::from_micros(30);
/// ...but only this long while the machine is short of cores (see [`CONTENDED_YIELD`]):
/// a thread spinning for a thread that is not running keeps a core from it. (Spinning
/// 15-50 us with one busy process beside a 2-thread pool on 2 cores made decoding 30-60%
/// slower than spinning a few.)
const SPIN_TIME_CONTENDED: Duration = Duration::from_micros(3);
/// ...then yields its time slice until this long after the wait began; only then does a
/// worker go to sleep on the condition variable while the caller keeps yielding. The
/// gap between two tokens (sampling, printing) is well under this, so a generating
/// pool's workers stay awake from token to token: a sleeping worker's wake-up took tens
/// of microseconds, varying from token to token (jitter).
const YIELD_TIME: Duration = Duration::from_millis(3);
/// A yield that took longer than this gave the core to another runnable thread: the
/// machine has more work than cores. A waiting worker then goes to sleep at once
/// instead of competing for a core with the thread it waits for, and every wait spins
/// only [`SPIN_TIME_CONTENDED`] for the next [`CONTENTION_MEMORY`].
const CONTENDED_YIELD: Duration = Duration::from_micros(20);
/// How long a contended yield counts.
const CONTENTION_MEMORY: Duration = Duration::from_millis(100);
/// Spins between two looks at the clock while spinning.
const SPINS_PER_CLOCK_CHECK: u32 = 32;

/// A value alone on its cache line (two of the 64-byte lines, as the adjacent-line
/// prefetcher pairs them), so a thread writing it does not slow threads reading others.
#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    /// Bumped once per `run`; a worker runs the job when it sees a new generation.
    generation: Padded<AtomicU64>,
    /// Per worker (index 1.. of the pool): the last generation it has finished.
    done: Box<[Padded<AtomicU64>]>,
    /// The current job. Written by `run` before it bumps `generation` (Release) and
    /// read by workers after they see the new generation (Acquire); not written again
    /// before every worker has reported done.
    job: UnsafeCell<Option<ErasedJob>>,
    /// A worker's job panicked during the current generation.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`: `run` only pays for a wake-up
    /// system call when this is non-zero.
    sleepers: Padded<AtomicUsize>,
    /// When a contended yield was last seen, in microseconds after `epoch` (plus one;
    /// 0: never).
    contended_at: Padded<AtomicU64>,
    epoch: Instant,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: every field but `job` is Sync; `job` is only written by the one thread inside
// `run` (serialised by `run_lock`) while no worker reads it (all have reported the
// previous generation done and the new generation is not yet published), and read by
// workers only between the generation's publication and their `done` store.
unsafe impl Sync for Shared {}

/// A fixed set of worker threads, created once, that run [`Parallel`] jobs.
///
/// The calling thread takes part as index 0, so a pool of `n` threads starts `n - 1`
/// workers. Between jobs workers spin for a while (tens of microseconds), then yield
/// (a few milliseconds, longer than the gap between two tokens), then sleep on a
/// condition variable; each worker reports completion in its own
/// cache-line-padded slot.
pub struct ThreadPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises concurrent `run` calls from different threads.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` threads in total (the caller plus `threads - 1` workers);
    /// `0` is treated as 1.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: Padded(AtomicU64::new(0)),
            done: (1..threads).map(|_| Padded(AtomicU64::new(0))).collect(),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: Padded(AtomicUsize::new(0)),
            contended_at: Padded(AtomicU64::new(0)),
            epoch: Instant::now(),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("embodios-worker-{index}"))
                .spawn(move || worker_loop(&shared, index))?;
            workers.push(handle);
        }
        Ok(Self {
            threads,
            shared,
            workers,
            run_lock: Mutex::new(()),
        })
    }

    /// A pool with one thread per available core.
    pub fn with_available_parallelism() -> std::io::Result<Self> {
        Self::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// A spinning wait in progress: spin, then yield, then give up (see [`SPIN_TIME`]).
struct Backoff<'a> {
    shared: &'a Shared,
    start: Instant,
    spin_time: Duration,
    spins: u32,
    yielding: bool,
}

impl<'a> Backoff<'a> {
    fn new(shared: &'a Shared) -> Self {
        let start = Instant::now();
        let last = shared.contended_at.0.load(Ordering::Relaxed);
        let since_start = start.duration_since(shared.epoch);
        let contended = last != 0
            && since_start.saturating_sub(Duration::from_micros(last - 1)) < CONTENTION_MEMORY;
        Self {
            shared,
            start,
            spin_time: if contended {
                SPIN_TIME_CONTENDED
            } else {
                SPIN_TIME
            },
            spins: 0,
            yielding: false,
        }
    }

    /// One step: `pause` while spinning, then yield the core. Returns false once the
    /// caller should block instead (after [`YIELD_TIME`], or after a yield that let
    /// another thread run: see [`CONTENDED_YIELD`]).
    fn step(&mut self) -> bool {
        if !self.yielding {
            self.spins = self.spins.wrapping_add(1);
            if !self.spins.is_multiple_of(SPINS_PER_CLOCK_CHECK)
                || self.start.elapsed() < self.spin_time
            {
                std::hint::spin_loop();
                return true;
            }
            self.yielding = true;
        }
        if self.start.elapsed() >= YIELD_TIME {
            return false;
        }
        let before = Instant::now();
        thread::yield_now();
        let after = Instant::now();
        if after.duration_since(before) < CONTENDED_YIELD {
            return true;
        }
        let at = after.duration_since(self.shared.epoch).as_micros();
        let at = u64::try_from(at).unwrap_or(u64::MAX - 1) + 1;
        self.shared.contended_at.0.store(at, Ordering::Relaxed);
        false
    }
}

/// Waits until the generation differs from `seen` (or shutdown); returns the new one.
fn wait_for_job(shared: &Shared, seen: u64) -> Option<u64> {
    let mut wait = Backoff::new(shared);
    loop {
        if shared.shutdown.load(Ordering::Acquire) {
            return None;
        }
        let g = shared.generation.0.load(Ordering::Acquire);
        if g != seen {
            return Some(g);
        }
        if wait.step() {
            continue;
        }
        // Sleep. Announce it first (SeqCst, paired with `run`'s SeqCst bump and load):
        // either `run` sees the sleeper and notifies under the lock, or this thread sees
        // the new generation below and does not wait.
        let guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
        shared.sleepers.0.fetch_add(1, Ordering::SeqCst);
        if shared.generation.0.load(Ordering::SeqCst) == seen
            && !shared.shutdown.load(Ordering::SeqCst)
        {
            drop(shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
        } else {
            drop(guard);
        }
        shared.sleepers.0.fetch_sub(1, Ordering::SeqCst);
        wait = Backoff::new(shared);
    }
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    while let Some(g) = wait_for_job(shared, seen) {
        seen = g;
        // SAFETY: the generation was read with Acquire after `run` wrote the job and
        // published it with a Release bump; `run` does not touch the job again until
        // this worker stores `done` below.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            if panic::catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        if let Some(slot) = shared.done.get(index - 1) {
            slot.0.store(g, Ordering::Release);
        }
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            job(0);
            return;
        }
        let _serial = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the erased reference is only used by workers between the generation
        // bump below and their `done` store for it, and this function waits for every
        // worker's store (even when the caller's own share panics) before it returns,
        // so the closure outlives every use. The job slot is cleared before returning.
        let erased: ErasedJob = unsafe {
            core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(job)
        };
        let sh = &*self.shared;
        // SAFETY: no worker reads the slot now: each has stored `done` for the previous
        // generation (waited for below in the previous call) and sees no new one yet.
        unsafe { *sh.job.get() = Some(erased) };
        sh.panicked.store(false, Ordering::Relaxed);
        let g = sh.generation.0.fetch_add(1, Ordering::SeqCst) + 1;
        if sh.sleepers.0.load(Ordering::SeqCst) > 0 {
            let _g = sh.sleep.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }

        let mine = panic::catch_unwind(AssertUnwindSafe(|| job(0)));

        for slot in sh.done.iter() {
            let mut wait = Backoff::new(sh);
            while slot.0.load(Ordering::Acquire) != g {
                if !wait.step() {
                    thread::yield_now();
                }
            }
        }
        // SAFETY: every worker has reported this generation done, so none reads the slot.
        unsafe { *sh.job.get() = None };
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if sh.panicked.load(Ordering::Acquire) {
            panic!("a thread-pool worker panicked while running a job");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_index_runs_once_per_call_and_threads_persist() {
        let pool = ThreadPool::new(4).unwrap();
        assert_eq!(pool.threads(), 4);
        for _ in 0..200 {
            let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i| {
                hits[i].fetch_add(1, Ordering::SeqCst);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::SeqCst), 1);
            }
        }
    }

    #[test]
    fn workers_run_on_other_threads_and_caller_is_index_zero() {
        let pool = ThreadPool::new(3).unwrap();
        let ids = Mutex::new(vec![None; 3]);
        let caller = thread::current().id();
        pool.run(&|i| {
            ids.lock().unwrap()[i] = Some(thread::current().id());
        });
        let ids = ids.into_inner().unwrap();
        assert_eq!(ids[0], Some(caller));
        assert_ne!(ids[1], Some(caller));
        assert_ne!(ids[1], ids[2]);
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_still_works() {
        let pool = ThreadPool::new(2).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
