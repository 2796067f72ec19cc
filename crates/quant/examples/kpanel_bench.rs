//! Micro-benchmark of one batched K-quant matmul (random weights, 64 tokens): the panel
//! kernel against the per-row tiles the engine used before, in CPU time of this thread.
//! `cargo run --release -p embodios-quant --example kpanel_bench [ROWS COLS TOKENS]`.

use embodios_quant::{
    panel_kernel, quantize_activations, quantize_row, row_bytes, tile_kernel, tiled_kernels,
    GgmlType,
};

/// CPU time of this thread so far, in ns (the scheduler's own count).
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (rows, cols, tokens) = match args[..] {
        [r, c, t] => (r, c, t),
        _ => (5632, 2048, 64),
    };
    let mut rng = embodios_testkit::Rng::new(1);
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let rb = row_bytes(ty, cols).unwrap();
        let ab = row_bytes(GgmlType::Q8_K, cols).unwrap();
        let mut w = vec![0u8; rows * rb];
        for r in w.chunks_exact_mut(rb) {
            quantize_row(ty, &rng.vec_normal(cols, 0.2), r).unwrap();
        }
        let mut a = vec![0u8; tokens * ab];
        for t in a.chunks_exact_mut(ab) {
            quantize_activations(GgmlType::Q8_K, &rng.vec_normal(cols, 1.0), t).unwrap();
        }
        let macs = (rows * cols * tokens) as f64;
        let mut out_new = vec![0f32; rows * tokens];
        let mut out_old = vec![0f32; rows * tokens];
        let panel = panel_kernel(ty).expect("panel");
        let old = |out: &mut [f32]| {
            let (one, four) = tiled_kernels(ty).unwrap_or((|_, _| 0.0, |_, _| [0.0; 4]));
            let tile = tile_kernel(ty);
            let toks: Vec<&[u8]> = a.chunks_exact(ab).collect();
            let mut r = 0;
            while r < rows {
                let row = &w[r * rb..(r + 1) * rb];
                if let (Some(tile), true) = (tile, r + 1 < rows) {
                    let row1 = &w[(r + 1) * rb..(r + 2) * rb];
                    for q in 0..tokens / 4 {
                        let y = [
                            toks[4 * q],
                            toks[4 * q + 1],
                            toks[4 * q + 2],
                            toks[4 * q + 3],
                        ];
                        let [v0, v1] = tile([row, row1], y);
                        out[r * tokens + 4 * q..][..4].copy_from_slice(&v0);
                        out[(r + 1) * tokens + 4 * q..][..4].copy_from_slice(&v1);
                    }
                    r += 2;
                    continue;
                }
                for q in 0..tokens / 4 {
                    let y = [
                        toks[4 * q],
                        toks[4 * q + 1],
                        toks[4 * q + 2],
                        toks[4 * q + 3],
                    ];
                    out[r * tokens + 4 * q..][..4].copy_from_slice(&four(row, y));
                }
                let _ = one;
                r += 1;
            }
        };
        let has_old = tiled_kernels(ty).is_some();
        let mut best = [f64::MAX; 2];
        for _ in 0..15 {
            let t0 = cpu_ns();
            panel(&w, rb, &a, ab, tokens, &mut out_new);
            let t1 = cpu_ns();
            if has_old {
                old(&mut out_old);
            }
            let t2 = cpu_ns();
            best[0] = best[0].min((t1 - t0) as f64);
            best[1] = best[1].min((t2 - t1) as f64);
        }
        if has_old {
            let same = out_new
                .iter()
                .zip(&out_old)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{ty}: panel and tiles differ");
        }
        println!(
            "{ty} {rows}x{cols} x {tokens} tokens: panel {:.2} ms ({:.1} GMAC/s), old tiles {}",
            best[0] / 1e6,
            macs / best[0],
            if has_old {
                format!("{:.2} ms ({:.1} GMAC/s)", best[1] / 1e6, macs / best[1])
            } else {
                "none".into()
            }
        );
    }
}
