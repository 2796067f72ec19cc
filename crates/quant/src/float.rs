//! Unquantized formats F32, F16 and BF16: conversion to and from f32 and dot products.

use crate::bytes::{
    bf16_to_f32, blocks, blocks_mut, f16_to_f32, f32_to_bf16_bytes, f32_to_f16_bytes,
};

/// Lanes of the f32 accumulators. Eight partial sums (one AVX register's worth) keep the
/// rounding behaviour close to the SIMD kernels and let the compiler vectorize.
const LANES: usize = 8;

/// Sums `f(i)` products into eight lanes, then adds the lanes pairwise.
#[inline(always)]
fn lane_sum(n: usize, mut f: impl FnMut(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let whole = n - n % LANES;
    let mut i = 0;
    while i < whole {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += LANES;
    }
    let mut tail = 0.0f32;
    for j in whole..n {
        tail += f(j);
    }
    let s4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

/// Dot product of two f32 slices over their common length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    lane_sum(n, |i| a[i] * b[i])
}

pub(crate) fn dequant_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<4>(src).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes(*b);
    }
}

pub(crate) fn dequant_f16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<2>(src).zip(dst.iter_mut()) {
        *y = f16_to_f32(*b);
    }
}

pub(crate) fn dequant_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<2>(src).zip(dst.iter_mut()) {
        *y = bf16_to_f32(*b);
    }
}

pub(crate) fn quantize_f32(x: &[f32], dst: &mut [u8]) {
    for (v, b) in x.iter().zip(blocks_mut::<4>(dst)) {
        *b = v.to_le_bytes();
    }
}

/// Round to nearest even f16 (what F16C's `cvtps_ph` and numpy do).
pub(crate) fn quantize_f16(x: &[f32], dst: &mut [u8]) {
    for (v, b) in x.iter().zip(blocks_mut::<2>(dst)) {
        *b = f32_to_f16_bytes(*v);
    }
}

/// Round to nearest even bf16, NaNs kept quiet (ggml's `fp32_to_bf16`).
pub(crate) fn quantize_bf16(x: &[f32], dst: &mut [u8]) {
    for (v, b) in x.iter().zip(blocks_mut::<2>(dst)) {
        *b = f32_to_bf16_bytes(*v);
    }
}

/// Dot product of two little-endian rows of 2- or 4-byte elements, widened by `conv`.
#[inline(always)]
fn dot_bytes<const N: usize>(w: &[u8], a: &[u8], conv: impl Fn([u8; N]) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (wc, ac) = (w.chunks_exact(N * LANES), a.chunks_exact(N * LANES));
    let (wr, ar) = (wc.remainder(), ac.remainder());
    for (wg, ag) in wc.zip(ac) {
        for ((acc, we), ae) in acc.iter_mut().zip(blocks::<N>(wg)).zip(blocks::<N>(ag)) {
            *acc += conv(*we) * conv(*ae);
        }
    }
    let mut tail = 0.0f32;
    for (we, ae) in blocks::<N>(wr).zip(blocks::<N>(ar)) {
        tail += conv(*we) * conv(*ae);
    }
    let s4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

pub(crate) fn dot_f32_bytes(w: &[u8], a: &[u8]) -> f32 {
    dot_bytes::<4>(w, a, f32::from_le_bytes)
}

pub(crate) fn dot_f16_bytes(w: &[u8], a: &[u8]) -> f32 {
    dot_bytes::<2>(w, a, f16_to_f32)
}

pub(crate) fn dot_bf16_bytes(w: &[u8], a: &[u8]) -> f32 {
    dot_bytes::<2>(w, a, bf16_to_f32)
}
