//! SIMD kernels with runtime CPU detection: AVX2/FMA when the CPU (and XCR0) allow it,
//! SSE2 otherwise. They exist to prove and use vector state in the kernel (the SMP
//! self-test sums with them on every core).

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

static AVX2: AtomicU8 = AtomicU8::new(2); // 2 = not yet detected

/// True when AVX2 and FMA can be used (CPUID says so and the OS enabled AVX state).
pub fn has_avx2() -> bool {
    match AVX2.load(Ordering::Relaxed) {
        2 => {
            let id = raw_cpuid::CpuId::new();
            let cpu = id.get_extended_feature_info().is_some_and(|f| f.has_avx2())
                && id
                    .get_feature_info()
                    .is_some_and(|f| f.has_fma() && f.has_oxsave());
            // SAFETY: XGETBV is valid once CR4.OSXSAVE is set, which `has_oxsave` checks.
            let os = cpu && unsafe { _xgetbv(0) } & 0b110 == 0b110;
            AVX2.store(u8::from(os), Ordering::Relaxed);
            os
        }
        v => v == 1,
    }
}

/// Sum of `data` as u64.
pub fn sum_u32(data: &[u32]) -> u64 {
    if has_avx2() {
        // SAFETY: AVX2 availability was checked at run time.
        unsafe { sum_u32_avx2(data) }
    } else {
        data.iter().map(|&v| u64::from(v)).sum()
    }
}

#[target_feature(enable = "avx2")]
fn sum_u32_avx2(data: &[u32]) -> u64 {
    let mut acc = _mm256_setzero_si256();
    let chunks = data.chunks_exact(4);
    let tail: u64 = chunks.remainder().iter().map(|&v| u64::from(v)).sum();
    for c in chunks {
        // SAFETY: `c` holds exactly 4 u32 = 16 bytes; unaligned load.
        let v = unsafe { _mm_loadu_si128(c.as_ptr().cast()) };
        acc = _mm256_add_epi64(acc, _mm256_cvtepu32_epi64(v));
    }
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes; unaligned store.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
    lanes.iter().sum::<u64>() + tail
}

/// Dot product of two f32 slices (FMA on AVX2 machines).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    if has_avx2() {
        // SAFETY: AVX2 and FMA availability was checked at run time.
        unsafe { dot_f32_fma(&a[..n], &b[..n]) }
    } else {
        a[..n].iter().zip(&b[..n]).map(|(x, y)| x * y).sum()
    }
}

#[target_feature(enable = "avx2,fma")]
fn dot_f32_fma(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let n8 = a.len() / 8 * 8;
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= len for both slices.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc = _mm256_fmadd_ps(x, y, acc);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 32 bytes; unaligned store.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().sum::<f32>()
        + a[n8..]
            .iter()
            .zip(&b[n8..])
            .map(|(x, y)| x * y)
            .sum::<f32>()
}
