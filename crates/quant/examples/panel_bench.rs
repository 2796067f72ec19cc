//! Throughput of the batched (prefill) kernels of the legacy block formats: the four-token
//! kernel called per weight row (the path before the panels), and the AVX2 and AVX-512
//! panel kernels: `cargo run --release -p embodios-quant --example panel_bench [ROWS COLS TOKENS]`
//! (default 576 x 576 weights, 64 tokens, SmolLM2's attention shape). Prints the best of
//! several timings (the machine is shared) in giga multiply-adds per second.

use std::time::Instant;

use embodios_quant::{
    quantize_activations, quantize_row, row_bytes, simd_panel_kernels, vec_dot4, vec_dot_type,
    GgmlType,
};

/// Seconds this thread has been on a CPU (Linux schedstat), so that time other
/// processes take on the shared cores does not count; wall time elsewhere.
fn cpu_now() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(
            || {
                static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                START.get_or_init(Instant::now).elapsed().as_secs_f64()
            },
            |ns| ns / 1e9,
        )
}

/// Best CPU seconds per call of `f` over several timed runs.
fn best(mut f: impl FnMut()) -> f64 {
    let mut reps = 1usize;
    loop {
        let t = cpu_now();
        for _ in 0..reps {
            f();
        }
        if cpu_now() - t > 0.05 {
            break;
        }
        reps *= 2;
    }
    (0..7)
        .map(|_| {
            let t = cpu_now();
            for _ in 0..reps {
                f();
            }
            (cpu_now() - t) / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ROWS COLS TOKENS: numbers"))
        .collect();
    let (rows, cols, tokens) = match args[..] {
        [r, c, t] => (r, c, t),
        _ => (576, 576, 64),
    };
    let macs = (rows * cols * tokens) as f64;
    println!("{rows} x {cols} weights, {tokens} tokens; GMAC/s (best of 7)");
    println!("type   dot4/row   avx2 panel   avx512 panel");
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ] {
        let rb = row_bytes(ty, cols).unwrap();
        let mut w = vec![0u8; rb * rows];
        for (r, row) in w.chunks_exact_mut(rb).enumerate() {
            let x: Vec<f32> = (0..cols)
                .map(|i| (((r * cols + i) * 7919 % 1000) as f32 - 500.0) / 7000.0)
                .collect();
            quantize_row(ty, &x, row).unwrap();
        }
        let act = vec_dot_type(ty).unwrap();
        let ab = row_bytes(act, cols).unwrap();
        let mut a = vec![0u8; ab * tokens];
        for (t, row) in a.chunks_exact_mut(ab).enumerate() {
            let x: Vec<f32> = (0..cols)
                .map(|i| (((t * cols + i) * 104729 % 997) as f32 - 498.0) / 300.0)
                .collect();
            quantize_activations(act, &x, row).unwrap();
        }
        let mut out = vec![0f32; rows * tokens];
        let four = vec_dot4(ty).map(|dot4| {
            best(|| {
                for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(tokens)) {
                    for (o4, x4) in o.chunks_exact_mut(4).zip(a.chunks_exact(4 * ab)) {
                        let (x01, x23) = x4.split_at(2 * ab);
                        let (x0, x1) = x01.split_at(ab);
                        let (x2, x3) = x23.split_at(ab);
                        o4.copy_from_slice(&dot4(std::hint::black_box(row), [x0, x1, x2, x3]));
                    }
                }
            })
        });
        let [p2, p512] = simd_panel_kernels(ty);
        let mut run = |p: Option<embodios_quant::PanelFn>| {
            p.map(|p| best(|| p(std::hint::black_box(&w), rb, &a, ab, tokens, &mut out)))
        };
        let (t2, t512) = (run(p2), run(p512));
        let show = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{:.2}", macs / t / 1e9));
        println!(
            "{:<6} {:>9} {:>12} {:>14}",
            ty.to_string(),
            show(four),
            show(t2),
            show(t512)
        );
    }
}
