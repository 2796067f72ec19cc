//! The element order GNU libstdc++'s `std::sort` (introsort) produces, ties
//! included. llama.cpp sorts its special tokens by length with `std::sort`,
//! which is not stable, and the order among tokens of equal length decides
//! which token cuts the text first; reproducing it keeps special-token
//! splitting identical to llama.cpp builds on Linux.
//!
//! The steps follow the algorithm as libstdc++ defines it: quicksort with a
//! median-of-three pivot while ranges are longer than 16 elements, heapsort when
//! the recursion gets 2*log2(n) deep, then one insertion sort pass. `less` must
//! be a strict weak order; the index guards only keep a bad one from panicking.

const THRESHOLD: usize = 16;

/// Sorts `v` into the order `std::sort(v.begin(), v.end(), less)` gives.
pub(crate) fn sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    if n == 0 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, depth, less);
    final_insertion_sort(v, 0, n, less);
}

fn lt<T: Copy>(v: &[T], a: usize, b: usize, less: &impl Fn(&T, &T) -> bool) -> bool {
    match (v.get(a), v.get(b)) {
        (Some(x), Some(y)) => less(x, y),
        _ => false,
    }
}

fn introsort_loop<T: Copy>(
    v: &mut [T],
    first: usize,
    mut last: usize,
    mut depth: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    while last - first > THRESHOLD {
        if depth == 0 {
            make_heap(v, first, last, less);
            sort_heap(v, first, last, less);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(v, first, last, less);
        introsort_loop(v, cut, last, depth, less);
        last = cut;
    }
}

/// Moves the median of `a`, `b`, `c` to `result`.
fn median_to_first<T: Copy>(
    v: &mut [T],
    result: usize,
    a: usize,
    b: usize,
    c: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    let pick = if lt(v, a, b, less) {
        if lt(v, b, c, less) {
            b
        } else if lt(v, a, c, less) {
            c
        } else {
            a
        }
    } else if lt(v, a, c, less) {
        a
    } else if lt(v, b, c, less) {
        c
    } else {
        b
    };
    v.swap(result, pick);
}

fn partition_pivot<T: Copy>(
    v: &mut [T],
    first: usize,
    last: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> usize {
    let mid = first + (last - first) / 2;
    median_to_first(v, first, first + 1, mid, last - 1, less);
    // The pivot stays at `first` while `[first + 1, last)` is partitioned.
    let pivot = first;
    let (mut lo, mut hi) = (first + 1, last);
    loop {
        while lo < last && lt(v, lo, pivot, less) {
            lo += 1;
        }
        hi -= 1;
        while hi > first && lt(v, pivot, hi, less) {
            hi -= 1;
        }
        if lo >= hi {
            return lo;
        }
        v.swap(lo, hi);
        lo += 1;
    }
}

/// Shifts `v[i]` left past every element it is less than.
fn linear_insert<T: Copy>(v: &mut [T], i: usize, floor: usize, less: &impl Fn(&T, &T) -> bool) {
    let Some(&val) = v.get(i) else { return };
    let mut hole = i;
    while hole > floor && v.get(hole - 1).is_some_and(|p| less(&val, p)) {
        v[hole] = v[hole - 1];
        hole -= 1;
    }
    v[hole] = val;
}

fn insertion_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        if lt(v, i, first, less) {
            let val = v[i];
            v.copy_within(first..i, first + 1);
            v[first] = val;
        } else {
            linear_insert(v, i, first, less);
        }
    }
}

fn final_insertion_sort<T: Copy>(
    v: &mut [T],
    first: usize,
    last: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    if last - first > THRESHOLD {
        insertion_sort(v, first, first + THRESHOLD, less);
        for i in first + THRESHOLD..last {
            // Unguarded in libstdc++: the first 16 elements hold a sentinel.
            linear_insert(v, i, 0, less);
        }
    } else {
        insertion_sort(v, first, last, less);
    }
}

fn push_heap<T: Copy>(
    v: &mut [T],
    base: usize,
    mut hole: usize,
    top: usize,
    value: T,
    less: &impl Fn(&T, &T) -> bool,
) {
    let parent_of = |h: usize| h.saturating_sub(1) / 2;
    let mut parent = parent_of(hole);
    while hole > top && v.get(base + parent).is_some_and(|p| less(p, &value)) {
        v[base + hole] = v[base + parent];
        hole = parent;
        parent = parent_of(hole);
    }
    v[base + hole] = value;
}

fn adjust_heap<T: Copy>(
    v: &mut [T],
    base: usize,
    mut hole: usize,
    len: usize,
    value: T,
    less: &impl Fn(&T, &T) -> bool,
) {
    let top = hole;
    let mut second = hole;
    while second < len.saturating_sub(1) / 2 {
        second = 2 * (second + 1);
        if lt(v, base + second, base + second - 1, less) {
            second -= 1;
        }
        v[base + hole] = v[base + second];
        hole = second;
    }
    if len >= 2 && len & 1 == 0 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        v[base + hole] = v[base + second - 1];
        hole = second - 1;
    }
    push_heap(v, base, hole, top, value, less);
}

fn make_heap<T: Copy>(v: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    let len = last - first;
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let value = v[first + parent];
        adjust_heap(v, first, parent, len, value, less);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

fn sort_heap<T: Copy>(v: &mut [T], first: usize, mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    while last - first > 1 {
        last -= 1;
        // Pop: the top goes to `last`, the old `last` value sinks into the heap.
        let value = v[last];
        v[last] = v[first];
        adjust_heap(v, first, 0, last - first, value, less);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A small deterministic generator for test inputs.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn sorts_and_permutes() {
        let mut seed = 7;
        for n in [0usize, 1, 2, 5, 16, 17, 40, 300, 5000] {
            // (key, original index): few distinct keys, so many ties.
            let mut v: Vec<(u64, usize)> = (0..n).map(|i| (lcg(&mut seed) % 7, i)).collect();
            sort(&mut v, &|a: &(u64, usize), b: &(u64, usize)| a.0 > b.0);
            assert!(v.windows(2).all(|w| w[0].0 >= w[1].0));
            let mut idx: Vec<usize> = v.iter().map(|x| x.1).collect();
            idx.sort_unstable();
            assert!(idx.iter().copied().eq(0..n));
        }
    }

    fn fnv(v: &[(u64, u32)]) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for x in v {
            for b in x.1.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        h
    }

    /// Same inputs as `scripts/golden/tokenizer_std_sort.cpp`; the orders must
    /// hash to what g++'s libstdc++ gave.
    #[test]
    fn same_order_as_libstdcxx() {
        let golden = include_str!("../tests/golden/std_sort.txt");
        let mut lines = golden.lines();
        let mut check = |algo: &str, n: u32, m: u64, v: &[(u64, u32)]| {
            let line = lines.next().expect("golden line");
            let want = alloc::format!("{algo} {n} {m} {:016x}", fnv(v));
            assert_eq!(line, want);
        };
        let less = |a: &(u64, u32), b: &(u64, u32)| a.0 > b.0;
        let mut seed = 7;
        for n in [1u32, 2, 5, 16, 17, 33, 100, 1000, 6414, 20000] {
            for m in [2u64, 3, 7, 50] {
                let mut v: Vec<(u64, u32)> = (0..n).map(|i| (lcg(&mut seed) % m, i)).collect();
                sort(&mut v, &less);
                check("sort", n, m, &v);
            }
        }
        let mut seed = 11;
        for n in [2u32, 3, 17, 100, 1001] {
            for m in [2u64, 5] {
                let mut v: Vec<(u64, u32)> = (0..n).map(|i| (lcg(&mut seed) % m, i)).collect();
                make_heap(&mut v, 0, n as usize, &less);
                sort_heap(&mut v, 0, n as usize, &less);
                check("heap", n, m, &v);
            }
        }
        assert!(lines.next().is_none(), "golden has more lines");
    }

    #[test]
    fn heapsort_path_sorts() {
        let mut v: Vec<u32> = (0..100).rev().collect();
        make_heap(&mut v, 0, 100, &|a: &u32, b: &u32| a < b);
        sort_heap(&mut v, 0, 100, &|a: &u32, b: &u32| a < b);
        assert!(v.iter().copied().eq(0..100));
    }
}
