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

/// Most workers [`zip_chunks`] hands pieces to.
const MAX_ZIP_WORKERS: usize = 64;

/// Calls `f(piece_of_a, same_range_of_b)` over `a` cut into one contiguous piece per
/// worker (each piece's length a multiple of `align`, but the last), on all of `par`'s
/// workers; on the calling thread alone when `a` has fewer than `min_parallel`
/// elements. For element-wise steps over a batch (the feed-forward's activation), which
/// give the same bits however they are cut.
pub fn zip_chunks(
    par: &dyn Parallel,
    a: &mut [f32],
    b: &[f32],
    align: usize,
    min_parallel: usize,
    f: &(dyn Fn(&mut [f32], &[f32]) + Sync),
) {
    let n = a.len().min(b.len());
    let (a, b) = (&mut a[..n], &b[..n]);
    let workers = par.threads().clamp(1, MAX_ZIP_WORKERS);
    if workers == 1 || n < min_parallel {
        f(a, b);
        return;
    }
    let align = align.max(1);
    let per = n.div_ceil(workers).next_multiple_of(align);
    // Each piece is handed over through an uncontended lock, so no unsafe code shares
    // the mutable slice; all on the stack (nothing allocated per call).
    type Piece<'x> = Option<(&'x mut [f32], &'x [f32])>;
    let pieces: [spin::Mutex<Piece<'_>>; MAX_ZIP_WORKERS] =
        core::array::from_fn(|_| spin::Mutex::new(None));
    let (mut rest_a, mut rest_b) = (a, b);
    for piece in pieces.iter().take(workers) {
        let len = per.min(rest_a.len());
        let (ha, ta) = core::mem::take(&mut rest_a).split_at_mut(len);
        let (hb, tb) = rest_b.split_at(len);
        *piece.lock() = Some((ha, hb));
        rest_a = ta;
        rest_b = tb;
    }
    par.run(&|i| {
        if let Some(piece) = pieces.get(i) {
            if let Some((a, b)) = piece.lock().take() {
                f(a, b);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    extern crate std;

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

    /// Runs each index on its own thread (scoped), like a real pool.
    struct Threads(usize);

    impl Parallel for Threads {
        fn threads(&self) -> usize {
            self.0
        }

        fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|s| {
                for i in 0..self.0 {
                    s.spawn(move || job(i));
                }
            });
        }
    }

    #[test]
    fn zip_chunks_covers_every_element_once_with_its_partner() {
        for n in [0usize, 5, 63, 64, 1000, 4097] {
            for workers in [1, 2, 3, 8] {
                let mut a: std::vec::Vec<f32> = (0..n).map(|i| i as f32).collect();
                let b: std::vec::Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
                zip_chunks(&Threads(workers), &mut a, &b, 16, 0, &|a, b| {
                    for (x, &y) in a.iter_mut().zip(b) {
                        *x = *x * 10.0 + y;
                    }
                });
                for (i, &x) in a.iter().enumerate() {
                    assert_eq!(x, (12 * i) as f32, "n={n} workers={workers} i={i}");
                }
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
