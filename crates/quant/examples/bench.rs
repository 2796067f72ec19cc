//! Rough throughput of the kernels, scalar reference set against the SIMD set chosen at
//! run time: `cargo run --release -p embodios-quant --example bench`.
//!
//! For each weight type: `vec_dot` of a 2048-wide activation row against 512 weight rows
//! (or as many as the first argument says: few rows keep the weights in cache and measure
//! the kernels alone), repeated; printed in millions of weight elements per second.

use std::time::Instant;

use embodios_quant::{
    active_kernel_set, dequantize_row, quantize_activations, quantize_row, row_bytes,
    scalar_activation_quantizer, scalar_kernels, simd_activation_quantizer, simd_kernels,
    vec_dot_type, GgmlType, QuantizeFn, VecDotFn, WEIGHT_TYPES,
};

/// Weight elements per second (millions) of `dot` over all rows of `w`, and a checksum.
fn time_dot(dot: VecDotFn, w: &[u8], rb: usize, aq: &[u8], elems: usize) -> (f64, f32) {
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        let mut s = 0.0f32;
        for _ in 0..reps {
            for chunk in w.chunks_exact(rb) {
                s += dot(std::hint::black_box(chunk), aq);
            }
        }
        let dt = t.elapsed().as_secs_f64();
        // Long enough to be a stable figure.
        if dt > 0.2 {
            return ((elems * reps) as f64 / dt / 1e6, s);
        }
        reps *= 2;
    }
}

/// Millions of activation elements per second quantized by `f`.
fn time_act(f: QuantizeFn, x: &[f32], out: &mut [u8]) -> f64 {
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            f(std::hint::black_box(x), out);
        }
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.1 {
            return (x.len() * reps) as f64 / dt / 1e6;
        }
        reps *= 2;
    }
}

fn main() {
    let n = 2048usize;
    let rows: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().expect("rows: a number"),
        None => 512,
    };
    let x: Vec<f32> = (0..n * rows)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
        .collect();
    let a: Vec<f32> = (0..n)
        .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 300.0)
        .collect();
    println!("active kernel set: {}", active_kernel_set());
    println!("type   scalar Melem/s   simd Melem/s  speedup   dequant Melem/s");
    for ty in WEIGHT_TYPES {
        let rb = row_bytes(ty, n).unwrap();
        let mut w = vec![0u8; rb * rows];
        for (r, chunk) in w.chunks_exact_mut(rb).enumerate() {
            quantize_row(ty, &x[r * n..(r + 1) * n], chunk).unwrap();
        }
        let act = vec_dot_type(ty).unwrap();
        let mut aq = vec![0u8; row_bytes(act, n).unwrap()];
        quantize_activations(act, &a, &mut aq).unwrap();
        let elems = n * rows;
        let (scalar, s1) = time_dot(scalar_kernels(ty).unwrap().vec_dot, &w, rb, &aq, elems);
        let simd = simd_kernels(ty).map(|k| time_dot(k.vec_dot, &w, rb, &aq, elems));

        let mut out = vec![0f32; n];
        let t2 = Instant::now();
        for chunk in w.chunks_exact(rb) {
            dequantize_row(ty, chunk, &mut out).unwrap();
        }
        let deq = elems as f64 / t2.elapsed().as_secs_f64() / 1e6;
        match simd {
            Some((v, s2)) => println!(
                "{:5} {scalar:12.0} {v:14.0} {:8.1}x {deq:14.0}   [{s1:.3e} / {s2:.3e}]",
                ty.name(),
                v / scalar
            ),
            None => println!(
                "{:5} {scalar:12.0} {:>14} {:>9} {deq:14.0}   [{s1:.3e}]",
                ty.name(),
                "-",
                "-"
            ),
        }
    }
    println!("activation quantization (Melem/s, row of {n}):");
    for act in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let mut out = vec![0u8; row_bytes(act, n).unwrap()];
        let scalar = time_act(scalar_activation_quantizer(act).unwrap(), &a, &mut out);
        match simd_activation_quantizer(act) {
            Some(f) => {
                let v = time_act(f, &a, &mut out);
                println!(
                    "{:5} {scalar:12.0} {v:14.0} {:8.1}x",
                    act.name(),
                    v / scalar
                );
            }
            None => println!("{:5} {scalar:12.0} {:>14}", act.name(), "-"),
        }
    }
}
