//! The panel kernels (many weight rows against many tokens per call) against a scalar
//! twin that spells out the eight-lane order of the single-row SIMD kernels, bit for
//! bit: every legacy block format, both variants (AVX2, and AVX-512 where the CPU has
//! it), all tile remainders (1..=13 rows, 1..=17 tokens), on quantized random rows,
//! adversarial bytes (-128 activation bytes, level extremes, tiny and huge scales) and
//! real rows of both reference models; and the four-row decode kernels. (The dispatch
//! API, which flips the process-wide scalar override, is tested in `panel_dispatch.rs`.)

mod common;

use common::{cpu_has_avx2, cpu_has_avx512, model_path, Rng, LEGACY};
use embodios_gguf::GgufFile;
use embodios_quant::{
    dequantize_row, quantize_activations, quantize_row, row_bytes, simd_kernels,
    simd_panel_kernels, vec_dot_type, GgmlType, PanelFn,
};

fn f16(b: &[u8]) -> f32 {
    let mut v = [0f32];
    dequantize_row(GgmlType::F16, &b[..2], &mut v).unwrap();
    v[0]
}

/// The signed weight values of one block (levels minus the offset; the raw levels for
/// the formats with a min).
fn weight_values(ty: GgmlType, x: &[u8]) -> [i32; 32] {
    let mut v = [0i32; 32];
    let nib = |qs: &[u8], i: usize| {
        if i < 16 {
            (qs[i] & 15) as i32
        } else {
            (qs[i - 16] >> 4) as i32
        }
    };
    let high = |qh: &[u8], i: usize| ((u32::from_le_bytes(qh.try_into().unwrap()) >> i) & 1) as i32;
    for (i, v) in v.iter_mut().enumerate() {
        *v = match ty {
            GgmlType::Q4_0 => nib(&x[2..18], i) - 8,
            GgmlType::Q4_1 => nib(&x[4..20], i),
            GgmlType::Q5_0 => nib(&x[6..22], i) + 16 * high(&x[2..6], i) - 16,
            GgmlType::Q5_1 => nib(&x[8..24], i) + 16 * high(&x[4..8], i),
            _ => x[2 + i] as i8 as i32,
        };
    }
    v
}

/// The scalar twin: per block the eight exact lane sums (lane `k` = elements
/// `4k..4k+4`), the scale `f32(d_w) * f32(d_a)`, one fused multiply-add per lane, blocks
/// in order, then `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, plus (Q4_1/Q5_1) the
/// `m_w * s_a` terms summed with fused multiply-adds and added last.
fn lane_twin(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
    let (ab, aq) = if min { (36, 4) } else { (34, 2) };
    let mut acc = [0f32; 8];
    let mut mins = 0f32;
    for (x, y) in w.chunks_exact(ty.block_bytes()).zip(a.chunks_exact(ab)) {
        let d = f16(&x[0..2]) * f16(&y[0..2]);
        let xv = weight_values(ty, x);
        for (k, l) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * k..4 * k + 4)
                .map(|i| xv[i] * (y[aq + i] as i8 as i32))
                .sum();
            *l = d.mul_add(s as f32, *l);
        }
        if min {
            mins = f16(&x[2..4]).mul_add(f16(&y[2..4]), mins);
        }
    }
    let l = acc;
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])) + mins
}

fn act_type(ty: GgmlType) -> GgmlType {
    vec_dot_type(ty).unwrap()
}

/// Runs `panel` on `rows` weight rows and `tokens` activation rows and checks every
/// result against the twin and the single-row SIMD kernel.
fn check(panel: PanelFn, ty: GgmlType, w: &[u8], rb: usize, a: &[u8], ab: usize, what: &str) {
    let rows = w.len() / rb;
    let tokens = a.len() / ab;
    let mut out = vec![f32::NAN; rows * tokens];
    panel(w, rb, a, ab, tokens, &mut out);
    let single = simd_kernels(ty).unwrap().vec_dot;
    for r in 0..rows {
        let wr = &w[r * rb..(r + 1) * rb];
        for t in 0..tokens {
            let at = &a[t * ab..(t + 1) * ab];
            let want = lane_twin(ty, wr, at);
            let got = out[r * tokens + t];
            assert!(
                got.to_bits() == want.to_bits(),
                "{ty} {what} rows {rows} tokens {tokens}: ({r}, {t}) got {got:e} want {want:e}"
            );
            assert_eq!(
                single(wr, at).to_bits(),
                want.to_bits(),
                "{ty} {what}: single-row kernel ({r}, {t})"
            );
        }
    }
}

/// The panel variants to test: AVX2 always (the test needs an AVX2 CPU), AVX-512 where
/// the CPU has it.
fn variants(ty: GgmlType) -> Vec<(&'static str, PanelFn)> {
    assert!(cpu_has_avx2(), "this test needs an AVX2+FMA+F16C CPU");
    let [v2, v512] = simd_panel_kernels(ty);
    let mut v = vec![("avx2", v2.unwrap_or_else(|| panic!("{ty}: no AVX2 panel")))];
    match v512 {
        Some(k) => v.push(("avx512", k)),
        None => assert!(
            !cpu_has_avx512(),
            "{ty}: AVX-512 CPU without an AVX-512 panel"
        ),
    }
    v
}

fn quantized_rows(rng: &mut Rng, ty: GgmlType, n: usize, count: usize, sigma: f32) -> Vec<u8> {
    let rb = row_bytes(ty, n).unwrap();
    let mut out = vec![0u8; rb * count];
    for row in out.chunks_exact_mut(rb) {
        quantize_row(ty, &rng.vec_normal(n, sigma), row).unwrap();
    }
    out
}

fn act_rows(rng: &mut Rng, ty: GgmlType, n: usize, count: usize) -> Vec<u8> {
    let act = act_type(ty);
    let ab = row_bytes(act, n).unwrap();
    let mut out = vec![0u8; ab * count];
    for row in out.chunks_exact_mut(ab) {
        let mut x = rng.vec_normal(n, 1.0);
        let shift = rng.uniform(-1.0, 1.0);
        x.iter_mut().for_each(|v| *v += shift);
        quantize_activations(act, &x, row).unwrap();
    }
    out
}

#[test]
fn panels_match_the_lane_twin_on_every_tile_shape() {
    let mut rng = Rng::new(31);
    for ty in LEGACY {
        for (name, panel) in variants(ty) {
            for rows in 1..=13 {
                for tokens in 1..=17 {
                    let n = 32 * [1, 3, 18][(rows + tokens) % 3];
                    let w = quantized_rows(&mut rng, ty, n, rows, 0.1);
                    let a = act_rows(&mut rng, ty, n, tokens);
                    let rb = row_bytes(ty, n).unwrap();
                    let ab = row_bytes(act_type(ty), n).unwrap();
                    check(panel, ty, &w, rb, &a, ab, name);
                }
            }
            // Rows too long for the AVX-512 kernel's unpacked-weights buffer (over 256
            // blocks) take its other path.
            for (rows, tokens) in [(1, 3), (5, 9), (4, 8)] {
                let n = 32 * 260;
                let w = quantized_rows(&mut rng, ty, n, rows, 0.1);
                let a = act_rows(&mut rng, ty, n, tokens);
                let rb = row_bytes(ty, n).unwrap();
                let ab = row_bytes(act_type(ty), n).unwrap();
                check(panel, ty, &w, rb, &a, ab, &format!("{name} long rows"));
            }
        }
    }
}

/// A finite f16 scale from a set including the extremes (largest, smallest subnormal,
/// zero, negative).
fn edge_scale(rng: &mut Rng) -> [u8; 2] {
    const EDGES: [u16; 7] = [0x7BFF, 0x0001, 0x8001, 0x0000, 0x3C00, 0xBC00, 0x2E66];
    let r = rng.next_u64();
    let h = if r.is_multiple_of(3) {
        EDGES[(r / 3 % 7) as usize]
    } else {
        // Moderate magnitudes, either sign.
        (0x2000 + (r >> 8) as u16 % 0x2000) | ((r >> 40) as u16 & 0x8000)
    };
    h.to_le_bytes()
}

/// Random bytes with edge-case scales: every level pattern, -128 activation bytes.
fn garbage(rng: &mut Rng, ty: GgmlType, act: bool, n: usize, count: usize) -> Vec<u8> {
    let (bb, scales): (usize, &[usize]) = match (act, ty) {
        (true, GgmlType::Q4_1 | GgmlType::Q5_1) => (36, &[0, 2]),
        (true, _) => (34, &[0]),
        (false, GgmlType::Q4_1 | GgmlType::Q5_1) => (ty.block_bytes(), &[0, 2]),
        (false, _) => (ty.block_bytes(), &[0]),
    };
    let mut out: Vec<u8> = (0..bb * n / 32 * count)
        .map(|_| rng.next_u64() as u8)
        .collect();
    for blk in out.chunks_exact_mut(bb) {
        for &s in scales {
            blk[s..s + 2].copy_from_slice(&edge_scale(rng));
        }
        if rng.next_u64().is_multiple_of(4) {
            // Extreme levels everywhere: all -128 / all 0xFF.
            let v = if rng.next_u64().is_multiple_of(2) {
                0x80
            } else {
                0xFF
            };
            let start = scales.len() * 2;
            blk[start..].fill(v);
        }
    }
    out
}

#[test]
fn panels_match_the_lane_twin_on_adversarial_bytes() {
    let mut rng = Rng::new(32);
    for ty in LEGACY {
        for (name, panel) in variants(ty) {
            for trial in 0..120 {
                let rows = 1 + trial % 9;
                let tokens = 1 + trial % 11;
                let n = 32 * (1 + trial % 5);
                let w = garbage(&mut rng, ty, false, n, rows);
                let a = garbage(&mut rng, ty, true, n, tokens);
                let rb = w.len() / rows;
                let ab = a.len() / tokens;
                // Skip only rows whose product overflows f32: NaN and infinities are no
                // test of the lane order.
                let finite = (0..rows).all(|r| {
                    (0..tokens).all(|t| {
                        lane_twin(ty, &w[r * rb..(r + 1) * rb], &a[t * ab..(t + 1) * ab])
                            .is_finite()
                    })
                });
                if finite {
                    check(panel, ty, &w, rb, &a, ab, &format!("{name} garbage"));
                }
            }
        }
    }
}

/// Real weight rows of every legacy type in the reference models (SmolLM2: Q4_1 and
/// Q8_0; Gemma 3: Q5_0 and Q8_0) against quantized random activations.
#[test]
fn panels_match_the_lane_twin_on_model_rows() {
    let mut rng = Rng::new(33);
    let mut seen = std::collections::BTreeSet::new();
    for model in ["smollm2", "gemma3"] {
        let path = model_path(model);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{model}: {e:?}"));
        let mut per_type: std::collections::BTreeMap<GgmlType, usize> = Default::default();
        for t in &file.tensors {
            if !LEGACY.contains(&t.ty) {
                continue;
            }
            let count = per_type.entry(t.ty).or_default();
            if *count >= 3 {
                continue;
            }
            *count += 1;
            seen.insert(t.ty);
            let n = t.row_len() as usize;
            let rb = t.row_bytes() as usize;
            let rows = (t.n_rows() as usize).min(13);
            let w = &t.data[..rows * rb];
            let a = act_rows(&mut rng, t.ty, n, 11);
            let ab = row_bytes(act_type(t.ty), n).unwrap();
            for (name, panel) in variants(t.ty) {
                check(
                    panel,
                    t.ty,
                    w,
                    rb,
                    &a,
                    ab,
                    &format!("{name} {model} {}", t.name),
                );
            }
        }
    }
    for ty in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
        assert!(seen.contains(&ty), "no {ty} tensor in the reference models");
    }
}

/// Short buffers and zero tokens never panic; missing rows or tokens give NaN.
#[test]
fn panels_survive_malformed_shapes() {
    let mut rng = Rng::new(34);
    for ty in LEGACY {
        for (_, panel) in variants(ty) {
            let w = quantized_rows(&mut rng, ty, 64, 3, 0.1);
            let a = act_rows(&mut rng, ty, 64, 2);
            let rb = w.len() / 3;
            let ab = a.len() / 2;
            let mut out = vec![0.0f32; 6];
            panel(&w, rb, &a, ab, 0, &mut out);
            // Four rows promised, three present: the fourth row's results are NaN, the
            // others exact.
            let mut out = vec![0.0f32; 8];
            panel(&w, rb, &a, ab, 2, &mut out);
            assert!(out[6].is_nan() && out[7].is_nan(), "{ty}");
            for r in 0..3 {
                for t in 0..2 {
                    let want = lane_twin(ty, &w[r * rb..(r + 1) * rb], &a[t * ab..(t + 1) * ab]);
                    assert_eq!(out[r * 2 + t].to_bits(), want.to_bits(), "{ty} ({r}, {t})");
                }
            }
            // Activation rows shorter than the weight rows: the blocks both hold.
            let mut out = vec![0.0f32; 3];
            let short = &a[..ab / 2];
            panel(&w, rb, short, ab / 2, 1, &mut out);
            for r in 0..3 {
                let want = lane_twin(ty, &w[r * rb..(r + 1) * rb], short);
                assert_eq!(out[r].to_bits(), want.to_bits(), "{ty} short activations");
            }
        }
    }
}

/// The four-row decode kernels (AVX-512 where the CPU has it, else AVX2) against the
/// lane twin: quantized rows, adversarial bytes, and lengths from 1 to 40 blocks. (No
/// test in this binary sets the scalar override, so the SIMD kernels are handed out.)
#[test]
fn four_row_kernels_match_the_lane_twin() {
    assert!(cpu_has_avx2(), "this test needs an AVX2+FMA+F16C CPU");
    let mut rng = Rng::new(35);
    for ty in LEGACY {
        let Some(rows4) = embodios_quant::vec_dot_rows4(ty) else {
            // AVX2 has no Q5_1 four-row kernel; AVX-512 covers every legacy format.
            assert!(ty == GgmlType::Q5_1 && !cpu_has_avx512(), "{ty}");
            continue;
        };
        for trial in 0..150 {
            let n = 32 * (1 + trial % 40);
            let (w, a) = if trial % 3 == 0 {
                (
                    garbage(&mut rng, ty, false, n, 4),
                    garbage(&mut rng, ty, true, n, 1),
                )
            } else {
                (
                    quantized_rows(&mut rng, ty, n, 4, 0.1),
                    act_rows(&mut rng, ty, n, 1),
                )
            };
            let rb = w.len() / 4;
            let rows: Vec<&[u8]> = w.chunks_exact(rb).collect();
            let want: Vec<f32> = rows.iter().map(|r| lane_twin(ty, r, &a)).collect();
            if want.iter().any(|v| !v.is_finite()) {
                continue;
            }
            let got = rows4([rows[0], rows[1], rows[2], rows[3]], &a);
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{ty} n={n} row {r}: {g:e} vs {w:e}"
                );
            }
        }
    }
}
