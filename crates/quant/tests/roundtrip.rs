//! Quantization error bounds in the manner of llama.cpp's tests/test-quantize-fns.cpp.
//!
//! Data: `0.1 + A * cos(i + offset)`, 4096 values (llama.cpp's generator). Metrics are
//! llama.cpp's: "total error" is `sqrt(Σ(x - dequant(quant(x)))²) / n`, "dot error" is
//! `|vec_dot(quant(x1), act(x2)) - Σ x1·x2| / n`. Bounds are llama.cpp's thresholds:
//! - round trip: 0.002 (MAX_QUANTIZATION_TOTAL_ERROR), Q3_K 0.004 (_3BITS),
//!   Q2_K 0.0075 (_2BITS);
//! - dot product: 0.02 (MAX_DOT_PRODUCT_ERROR), Q2_K 0.04 (_LOWBIT).
//!
//! Our K-quant quantizers are not llama.cpp's, so these bounds are what makes them
//! acceptable. A second test uses a plain RMSE on random normal data with per-type bounds
//! of our own (a few times the error of ideal uniform quantization at that bit width),
//! and a third checks that `vec_dot` agrees with the f32 dot of the dequantized rows.

mod common;

use common::Rng;
use embodios_quant::{
    dequantize_row, dot_f32, quantize_activations, quantize_row, row_bytes, vec_dot, vec_dot_type,
    GgmlType, WEIGHT_TYPES,
};

fn generate(offset: f32, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1f64 + (amplitude * (i as f32 + offset).cos()) as f64) as f32)
        .collect()
}

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; row_bytes(ty, x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut y).unwrap();
    y
}

fn quant_dot(ty: GgmlType, w: &[f32], a: &[f32]) -> f32 {
    let n = w.len();
    let mut wq = vec![0u8; row_bytes(ty, n).unwrap()];
    quantize_row(ty, w, &mut wq).unwrap();
    let act = vec_dot_type(ty).unwrap();
    let mut aq = vec![0u8; row_bytes(act, n).unwrap()];
    quantize_activations(act, a, &mut aq).unwrap();
    vec_dot(ty, &wq, &aq, n).unwrap()
}

#[test]
fn llama_cpp_test_quantize_fns_bounds() {
    const N: usize = 32 * 128;
    let x1 = generate(0.0, N, 2.0);
    let x2 = generate(1.0, N, 2.0);
    let exact: f64 = x1
        .iter()
        .zip(&x2)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum();
    for ty in WEIGHT_TYPES {
        let y = round_trip(ty, &x1);
        let sq: f64 = x1
            .iter()
            .zip(&y)
            .map(|(a, b)| ((*a - *b) as f64).powi(2))
            .sum();
        let total = sq.sqrt() as f32 / N as f32;
        let max_total = match ty {
            GgmlType::Q2_K => 0.0075,
            GgmlType::Q3_K => 0.0040,
            _ => 0.002,
        };
        let dot_err = ((quant_dot(ty, &x1, &x2) as f64 - exact).abs() / N as f64) as f32;
        let max_dot = if ty == GgmlType::Q2_K { 0.04 } else { 0.02 };
        println!(
            "{ty:5} total error {total:.6} (< {max_total}), dot error {dot_err:.6} (< {max_dot})"
        );
        assert!(
            total < max_total,
            "{ty}: total quantization error {total} >= {max_total}"
        );
        assert!(
            dot_err < max_dot,
            "{ty}: dot product error {dot_err} >= {max_dot}"
        );
    }
}

#[test]
fn rmse_on_random_normal_rows() {
    // Bounds on RMSE / sigma for N(0, 1) data, ~3x the ideal uniform quantizer error
    // (range of a block / levels / sqrt(12)); measured values are printed.
    let bounds = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 0.001),
        (GgmlType::BF16, 0.005),
        (GgmlType::Q4_0, 0.15),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q5_0, 0.075),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q2_K, 0.45),
        (GgmlType::Q3_K, 0.25),
        (GgmlType::Q4_K, 0.12),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q6_K, 0.03),
    ];
    let mut rng = Rng::new(7);
    for sigma in [1.0f32, 1e-3, 300.0] {
        let x = rng.vec_normal(4096, sigma);
        for (ty, bound) in bounds {
            let y = round_trip(ty, &x);
            let mse: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((*a - *b) as f64).powi(2))
                .sum::<f64>()
                / 4096.0;
            let rel = (mse.sqrt() / sigma as f64) as f32;
            println!("{ty:5} sigma {sigma:e}: rmse/sigma {rel:.5} (bound {bound})");
            assert!(
                rel <= bound,
                "{ty} sigma {sigma}: rmse/sigma {rel} > {bound}"
            );
        }
    }
}

#[test]
fn vec_dot_agrees_with_dequantized_dot() {
    let mut rng = Rng::new(99);
    for ty in WEIGHT_TYPES {
        for n in [256usize, 1024, 2048] {
            let w = rng.vec_normal(n, 0.5);
            let a = rng.vec_normal(n, 2.0);
            let mut wq = vec![0u8; row_bytes(ty, n).unwrap()];
            quantize_row(ty, &w, &mut wq).unwrap();
            let act = vec_dot_type(ty).unwrap();
            let mut aq = vec![0u8; row_bytes(act, n).unwrap()];
            quantize_activations(act, &a, &mut aq).unwrap();
            let got = vec_dot(ty, &wq, &aq, n).unwrap();

            let mut wf = vec![0f32; n];
            let mut af = vec![0f32; n];
            dequantize_row(ty, &wq, &mut wf).unwrap();
            dequantize_row(act, &aq, &mut af).unwrap();
            let want: f64 = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
            let mag: f64 = wf
                .iter()
                .zip(&af)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            // Q4_1/Q5_1 use Q8_1's f16-rounded sum for the min term: allow its rounding
            // (relative 2^-11 of the block's min contribution) on top of f32 summation.
            let tol = match ty {
                GgmlType::Q4_1 | GgmlType::Q5_1 => mag * 2e-3,
                _ => mag * 2e-6,
            };
            assert!(
                (got as f64 - want).abs() <= tol,
                "{ty} n={n}: vec_dot {got}, dequantized dot {want}, tolerance {tol}"
            );
        }
    }
}

#[test]
fn dot_f32_matches_f64_reference() {
    let mut rng = Rng::new(5);
    for n in [0usize, 1, 7, 8, 9, 31, 33, 1023, 4096] {
        let a = rng.vec_normal(n, 1.0);
        let b = rng.vec_normal(n, 1.0);
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let got = dot_f32(&a, &b);
        // llama.cpp's f32 vec_dot bound (MAX_QUANTIZATION_REFERENCE_ERROR) per element.
        assert!(
            ((got as f64 - want).abs() / n.max(1) as f64) < 1e-4,
            "n={n}: {got} vs {want}"
        );
        assert!(
            (got as f64 - want).abs() <= 1e-5 * (n as f64 + 1.0),
            "n={n}: {got} vs {want}"
        );
    }
}

#[test]
fn k_quant_round_trip_of_all_zero_and_constant_rows() {
    for ty in WEIGHT_TYPES {
        let zeros = vec![0f32; 512];
        assert!(
            round_trip(ty, &zeros).iter().all(|v| *v == 0.0),
            "{ty}: zeros"
        );
        // A constant row must come back close to the constant.
        for c in [0.75f32, -3.0] {
            let x = vec![c; 512];
            let y = round_trip(ty, &x);
            let worst = y.iter().map(|v| (v - c).abs()).fold(0f32, f32::max);
            assert!(
                worst <= c.abs() * 0.02,
                "{ty}: constant {c} came back off by {worst}"
            );
        }
    }
}
