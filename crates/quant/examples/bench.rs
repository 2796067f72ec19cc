//! Rough throughput of the scalar kernels: `cargo run --release -p embodios-quant --example bench`.

use std::time::Instant;

use embodios_quant::{
    dequantize_row, quantize_activations, quantize_row, row_bytes, vec_dot, vec_dot_type, GgmlType,
};

fn main() {
    let n = 2048usize;
    let rows = 512usize;
    let x: Vec<f32> = (0..n * rows)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
        .collect();
    let a: Vec<f32> = (0..n)
        .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 300.0)
        .collect();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let rb = row_bytes(ty, n).unwrap();
        let mut w = vec![0u8; rb * rows];
        for (r, chunk) in w.chunks_exact_mut(rb).enumerate() {
            quantize_row(ty, &x[r * n..(r + 1) * n], chunk).unwrap();
        }
        let act = vec_dot_type(ty).unwrap();
        let mut aq = vec![0u8; row_bytes(act, n).unwrap()];
        let reps = 20;
        let t = Instant::now();
        let mut s = 0.0f32;
        for _ in 0..reps {
            quantize_activations(act, &a, &mut aq).unwrap();
            for chunk in w.chunks_exact(rb) {
                s += vec_dot(ty, chunk, &aq, n).unwrap();
            }
        }
        let dt = t.elapsed().as_secs_f64();
        let mut out = vec![0f32; n];
        let t2 = Instant::now();
        for _ in 0..reps {
            for chunk in w.chunks_exact(rb) {
                dequantize_row(ty, chunk, &mut out).unwrap();
            }
        }
        let dt2 = t2.elapsed().as_secs_f64();
        let melems = (n * rows * reps) as f64 / 1e6;
        println!(
            "{ty:5}: vec_dot {:7.0} Melem/s ({:5.2} GB/s of weights), dequant {:7.0} Melem/s  [{s:.1}]",
            melems / dt,
            (w.len() * reps) as f64 / dt / 1e9,
            melems / dt2
        );
    }
}
