//! Measures how a CPU-bound job scales over the pool's threads (a sanity check of the
//! pool's overhead and of how many cores are really free).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use embodios_host::{Parallel, ThreadPool};

fn spin(n: u64) -> u64 {
    let mut x = 1u64;
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

fn main() {
    for threads in [1usize, 2] {
        let pool = ThreadPool::new(threads).expect("pool");
        for (jobs, work) in [(10u64, 20_000_000u64), (20_000, 10_000)] {
            let t = Instant::now();
            let sink = AtomicU64::new(0);
            for _ in 0..jobs {
                pool.run(&|_| {
                    sink.fetch_add(spin(work / threads as u64), Ordering::Relaxed);
                });
            }
            println!(
                "{threads} threads, {jobs} jobs of {work} steps: {:.1} ms (checksum {})",
                t.elapsed().as_secs_f64() * 1e3,
                sink.load(Ordering::Relaxed) % 10
            );
        }
    }
}
