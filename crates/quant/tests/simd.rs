//! The SIMD kernel set against the scalar reference twins: every weight type on random
//! rows of several lengths (well-formed quantized data and adversarial bytes: -128
//! levels, extreme and subnormal scales), on real rows of both reference models, and
//! against llama.cpp's own AVX2 results; plus the run-time selection API.
//!
//! The SIMD kernels sum blocks in another order than the scalar ones, so results agree
//! to f32 rounding of the accumulated terms: `|simd - scalar| <= 1e-5 * Σ|terms| + tiny`,
//! where the terms are the scale and min parts of every product (see [`magnitude`]).

mod common;

use common::{cpu_has_avx2, golden, model_path, Rng};
use embodios_gguf::GgufFile;
use embodios_quant::{
    active_kernel_set, dequantize_row, force_scalar, kernels, quantize_activations, quantize_row,
    row_bytes, scalar_activation_quantizer, scalar_kernels, simd_activation_quantizer,
    simd_kernels, vec_dot_type, GgmlType, Kernels, WEIGHT_TYPES,
};

/// The SIMD table of `ty`. Fails (rather than skipping) on a machine without the set: the
/// comparisons below need it; [`selection_follows_cpu_features`] covers such machines.
fn simd(ty: GgmlType) -> &'static Kernels {
    assert!(
        cpu_has_avx2(),
        "this test needs an AVX2+FMA+F16C CPU to compare the SIMD kernels"
    );
    simd_kernels(ty).unwrap_or_else(|| panic!("no SIMD kernels for {ty}"))
}

/// Byte ranges holding a type's level bits (not scales): zeroing them leaves a block
/// whose dequantized values are the min/offset part alone.
fn level_ranges(ty: GgmlType) -> &'static [(usize, usize)] {
    match ty {
        GgmlType::Q4_1 => &[(4, 20)],
        GgmlType::Q5_1 => &[(4, 24)],
        GgmlType::Q2_K => &[(16, 80)],
        GgmlType::Q4_K => &[(16, 144)],
        GgmlType::Q5_K => &[(16, 176)],
        _ => &[],
    }
}

/// `Σ|(w_i - o_i) a_i| + Σ|o_i a_i|`, where `o_i` is the min/offset part of weight `i`
/// (zero for types without mins): the size of the terms the kernels add up, so that
/// cancellation between the scale and min parts cannot make the bound meaninglessly small.
fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let act = vec_dot_type(ty).unwrap();
    let mut wf = vec![0f32; n];
    let mut af = vec![0f32; n];
    dequantize_row(ty, w, &mut wf).unwrap();
    dequantize_row(act, a, &mut af).unwrap();
    let mut off = vec![0f32; n];
    let ranges = level_ranges(ty);
    if !ranges.is_empty() {
        let mut z = w.to_vec();
        for blk in z.chunks_exact_mut(ty.block_bytes()) {
            for &(s, e) in ranges {
                blk[s..e].fill(0);
            }
        }
        dequantize_row(ty, &z, &mut off).unwrap();
    }
    wf.iter()
        .zip(&af)
        .zip(&off)
        .map(|((&w, &a), &o)| {
            ((w as f64 - o as f64) * a as f64).abs() + (o as f64 * a as f64).abs()
        })
        .sum()
}

/// Compares the SIMD and scalar `vec_dot` of one row pair; returns the relative error.
fn check_pair(ty: GgmlType, w: &[u8], a: &[u8], n: usize, what: &str) -> f64 {
    let (s, v) = (scalar_kernels(ty).unwrap(), simd(ty));
    let want = (s.vec_dot)(w, a);
    let got = (v.vec_dot)(w, a);
    let mag = magnitude(ty, w, a, n);
    assert!(
        want.is_finite() && mag.is_finite(),
        "{ty} {what}: test data overflowed"
    );
    let diff = (got as f64 - want as f64).abs();
    let tol = 1e-5 * mag + 1e-30;
    assert!(
        diff <= tol,
        "{ty} {what} n={n}: simd {got:e}, scalar {want:e}, |diff| {diff:e} > {tol:e}"
    );
    if mag > 0.0 {
        diff / mag
    } else {
        0.0
    }
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; row_bytes(ty, x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn activations(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let act = vec_dot_type(ty).unwrap();
    let mut q = vec![0u8; row_bytes(act, x.len()).unwrap()];
    quantize_activations(act, x, &mut q).unwrap();
    q
}

fn lengths(ty: GgmlType) -> Vec<usize> {
    let b = ty.block_elems();
    if b == 1 {
        vec![1, 7, 8, 31, 32, 33, 100, 576, 1000, 1536, 4099]
    } else {
        [1, 2, 3, 5, 8, 18, 24]
            .iter()
            .map(|k| k * b * if b == 32 { 4 } else { 1 })
            .chain([b])
            .collect()
    }
}

#[test]
fn selection_follows_cpu_features() {
    let has = cpu_has_avx2();
    for ty in WEIGHT_TYPES {
        assert_eq!(simd_kernels(ty).is_some(), has, "{ty}");
        let s = scalar_kernels(ty).unwrap();
        assert_eq!(s.ty, ty);
        if let Some(v) = simd_kernels(ty) {
            assert_eq!(v.ty, ty);
            assert_eq!(v.vec_dot_type, s.vec_dot_type, "{ty}: activation format");
        }
    }
    // One test touches the process-wide override, so the checks stay in sequence.
    // A build with EMBODIOS_FORCE_SCALAR set starts on the scalar set.
    let forced_at_build = option_env!("EMBODIOS_FORCE_SCALAR").is_some();
    let auto_name = if has { "avx2+fma" } else { "scalar" };
    let start_name = if forced_at_build { "scalar" } else { auto_name };
    assert_eq!(active_kernel_set(), start_name);
    force_scalar(false);
    let want = auto_name;
    assert_eq!(active_kernel_set(), want);
    let auto = kernels(GgmlType::Q4_1).unwrap();
    assert_eq!(
        auto.vec_dot as usize,
        simd_kernels(GgmlType::Q4_1).map_or(
            scalar_kernels(GgmlType::Q4_1).unwrap().vec_dot as usize,
            |k| k.vec_dot as usize
        )
    );
    force_scalar(true);
    assert_eq!(active_kernel_set(), "scalar");
    let forced = kernels(GgmlType::Q4_1).unwrap();
    let scalar = scalar_kernels(GgmlType::Q4_1).unwrap();
    force_scalar(false);
    assert_eq!(forced.vec_dot as usize, scalar.vec_dot as usize);
    assert_eq!(active_kernel_set(), want);
    // Unsupported types stay unsupported in both sets.
    assert!(kernels(GgmlType::Q8_K).is_err() && simd_kernels(GgmlType::Q8_K).is_none());
}

#[test]
fn simd_matches_scalar_on_quantized_random_rows() {
    let mut rng = Rng::new(7);
    for ty in WEIGHT_TYPES {
        let mut worst = 0.0f64;
        let mut cases = 0;
        for n in lengths(ty) {
            for sigma in [1e-3f32, 0.05, 1.0, 300.0] {
                let w = quantize(ty, &rng.vec_normal(n, sigma));
                // Offset activations exercise the min terms (Σa far from zero).
                let mut x = rng.vec_normal(n, 1.0 / sigma.sqrt());
                let shift = rng.uniform(-1.0, 1.0) / sigma.sqrt();
                x.iter_mut().for_each(|v| *v += shift);
                let a = activations(ty, &x);
                worst = worst.max(check_pair(ty, &w, &a, n, &format!("sigma={sigma}")));
                cases += 1;
            }
        }
        println!("{ty}: {cases} rows, worst |diff|/Σ|terms| {worst:.2e}");
    }
}

/// A finite f16 from a set that includes the extremes (max, smallest subnormal, zero).
fn edge_f16(rng: &mut Rng) -> [u8; 2] {
    const EDGES: [u16; 8] = [
        0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x0000, 0x3C00, 0x0400, 0x2E66,
    ];
    let r = rng.next_u64();
    let bits = if r.is_multiple_of(3) {
        EDGES[(r >> 8) as usize % EDGES.len()]
    } else {
        // Any finite value: exponent field not all ones.
        let h = (r >> 16) as u16;
        if h & 0x7C00 == 0x7C00 {
            h & !0x4000
        } else {
            h
        }
    };
    bits.to_le_bytes()
}

/// Offsets of the f16 scale fields of a block.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        GgmlType::Q8_1 => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random bytes for a row of `ty`, with finite (often extreme) scales, and a bias towards
/// the extreme byte values 0x00, 0x7F, 0x80 and 0xFF (level -128 included).
fn garbage_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..row_bytes(ty, n).unwrap())
        .map(|_| {
            let r = rng.next_u64();
            if r.is_multiple_of(4) {
                [0x00, 0x7F, 0x80, 0xFF][(r >> 8) as usize % 4]
            } else {
                (r >> 24) as u8
            }
        })
        .collect();
    match ty {
        GgmlType::F32 => {
            for e in b.chunks_exact_mut(4) {
                // Moderate exponents, so products and sums stay finite.
                let v = rng.normal() * 2f32.powi((rng.next_u64() % 40) as i32 - 20);
                e.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for e in b.chunks_exact_mut(2) {
                e.copy_from_slice(&edge_f16(rng));
            }
        }
        GgmlType::BF16 => {
            for e in b.chunks_exact_mut(2) {
                let v = rng.normal() * 2f32.powi((rng.next_u64() % 40) as i32 - 20);
                e.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        GgmlType::Q8_K => {
            for blk in b.chunks_exact_mut(ty.block_bytes()) {
                let d = rng.uniform(1e-3, 10.0);
                blk[..4].copy_from_slice(&d.to_le_bytes());
                // Group sums consistent with the values, as Q8_K rows always are.
                for g in 0..16 {
                    let s: i32 = blk[4 + 16 * g..4 + 16 * (g + 1)]
                        .iter()
                        .map(|&q| q as i8 as i32)
                        .sum();
                    blk[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
                }
            }
        }
        _ => {
            for blk in b.chunks_exact_mut(ty.block_bytes()) {
                for &off in f16_fields(ty) {
                    let h = edge_f16(rng);
                    blk[off..off + 2].copy_from_slice(&h);
                }
            }
        }
    }
    b
}

#[test]
fn simd_matches_scalar_on_adversarial_bytes() {
    let mut rng = Rng::new(99);
    for ty in WEIGHT_TYPES {
        let act = vec_dot_type(ty).unwrap();
        let mut worst = 0.0f64;
        for n in lengths(ty) {
            for _ in 0..6 {
                let w = garbage_row(&mut rng, ty, n);
                let a = garbage_row(&mut rng, act, n);
                worst = worst.max(check_pair(ty, &w, &a, n, "garbage"));
            }
            // All levels at their extremes: every weight byte 0xFF or 0x80 (Q8_0: -128),
            // with activation values all -128 / 127.
            for (wb, ab) in [
                (0xFFu8, 0x80u8),
                (0x80, 0x80),
                (0x80, 0x7F),
                (0x80, 0x81),
                (0x00, 0x7F),
                (0xFF, 0x7F),
            ] {
                let mut w = garbage_row(&mut rng, ty, n);
                let mut a = garbage_row(&mut rng, act, n);
                if ty.block_elems() > 1 {
                    fill_levels(ty, &mut w, wb);
                    fill_levels(act, &mut a, ab);
                }
                worst = worst.max(check_pair(
                    ty,
                    &w,
                    &a,
                    n,
                    &format!("extreme {wb:02x}/{ab:02x}"),
                ));
            }
        }
        println!("{ty}: worst |diff|/Σ|terms| {worst:.2e}");
    }
}

/// Overwrites every non-scale byte of each block with `v` (and re-derives Q8_K sums).
fn fill_levels(ty: GgmlType, row: &mut [u8], v: u8) {
    let (scale_ranges, q8k): (&[(usize, usize)], bool) = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[(0, 2)], false),
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => (&[(0, 4)], false),
        GgmlType::Q2_K => (&[(0, 16), (80, 84)], false),
        GgmlType::Q3_K => (&[(96, 110)], false),
        GgmlType::Q4_K | GgmlType::Q5_K => (&[(0, 16)], false),
        GgmlType::Q6_K => (&[(192, 210)], false),
        GgmlType::Q8_K => (&[(0, 4)], true),
        _ => (&[], false),
    };
    for blk in row.chunks_exact_mut(ty.block_bytes()) {
        let keep: Vec<(usize, Vec<u8>)> = scale_ranges
            .iter()
            .map(|&(s, e)| (s, blk[s..e].to_vec()))
            .collect();
        if q8k {
            blk[4..260].fill(v);
            let s = 16 * (v as i8 as i32);
            for g in 0..16 {
                blk[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
            }
        } else {
            blk.fill(v);
            for (s, bytes) in keep {
                blk[s..s + bytes.len()].copy_from_slice(&bytes);
            }
        }
    }
}

/// Rows of every tensor type in both reference models, against quantized random
/// activations.
#[test]
fn simd_matches_scalar_on_model_tensors() {
    let mut rng = Rng::new(3);
    for model in ["smollm2", "gemma3"] {
        let path = model_path(model);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{model}: {e:?}"));
        let mut per_type: std::collections::BTreeMap<GgmlType, usize> = Default::default();
        for t in &file.tensors {
            let count = per_type.entry(t.ty).or_default();
            // A handful of tensors per type keeps the test quick.
            if *count >= 6 {
                continue;
            }
            *count += 1;
            let n = t.row_len() as usize;
            let rb = t.row_bytes() as usize;
            let rows = t.n_rows() as usize;
            let x = rng.vec_normal(n, 1.0);
            let a = activations(t.ty, &x);
            for r in [0, rows / 2, rows - 1] {
                let w = &t.data[r * rb..(r + 1) * rb];
                check_pair(t.ty, w, &a, n, &format!("{model} {} row {r}", t.name));
            }
        }
        println!("{model}: tensors checked per type {per_type:?}");
        assert!(per_type.len() >= 3, "{model}: too few tensor types");
    }
}

/// llama.cpp's AVX2 kernels accumulate in the same lanes and order as ours, so on the
/// goldens (llama.cpp's own `ggml_vec_dot_*` results) the quantized types agree bit for
/// bit. The float types come from an AVX-512 build's wider accumulators: tolerance only.
#[test]
fn simd_matches_llama_cpp_bits() {
    let cases = golden("vec_dot.txt");
    let mut exact = 0;
    let mut mismatches = Vec::new();
    for case in &cases {
        let ty = case.ty("type");
        let n = case.num("n");
        let (w, a) = (case.bytes("weights"), case.bytes("act"));
        let got = (simd(ty).vec_dot)(&w, &a);
        let want = case.f32s("simd_f32")[0];
        let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        if float {
            let mag = magnitude(ty, &w, &a, n);
            assert!(
                ((got - want).abs() as f64) <= 1e-6 * mag,
                "{}: got {got:e}, llama.cpp {want:e}",
                case.label()
            );
        } else {
            if got.to_bits() == want.to_bits() {
                exact += 1;
            } else {
                mismatches.push(format!("{}: got {got:e}, llama.cpp {want:e}", case.label()));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "not bit-exact:\n{}",
        mismatches.join("\n")
    );
    assert!(exact >= 10, "only {exact} bit-exact cases");
}

/// The SIMD activation quantizers must write the scalar twins' bytes for any input:
/// random rows at many scales, and rows seeded with NaN, infinities, subnormals, signed
/// zeros, exact rounding ties and values whose scaled magnitude overflows.
#[test]
fn simd_activation_quantizers_are_bit_identical() {
    let mut rng = Rng::new(11);
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        -0.0,
        0.0,
        f32::MAX,
        -f32::MAX,
        0.5,
        -2.5,
        127.0,
    ];
    let mut checked = 0;
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let simd = simd_activation_quantizer(ty);
        assert_eq!(simd.is_some(), cpu_has_avx2(), "{ty}");
        let simd = simd.expect("this test needs an AVX2+FMA+F16C CPU");
        let scalar = scalar_activation_quantizer(ty).unwrap();
        let lens: &[usize] = if ty == GgmlType::Q8_K {
            &[256, 512, 768, 1536]
        } else {
            &[32, 64, 96, 576, 1536]
        };
        for &n in lens {
            for round in 0..40 {
                let sigma = [1e-30f32, 1e-3, 1.0, 1e5, 1e30][round % 5];
                let mut x = rng.vec_normal(n, sigma);
                // Some rows get special values at random positions, some are all zero or all
                // subnormal, some have exact ties after scaling.
                match round % 4 {
                    0 => {
                        for _ in 0..(n / 16) {
                            let i = rng.next_u64() as usize % n;
                            x[i] = specials[rng.next_u64() as usize % specials.len()];
                        }
                    }
                    1 => x
                        .iter_mut()
                        .for_each(|v| *v = (*v / sigma * 40.0).round() + 0.5),
                    2 if round % 8 == 2 => x.iter_mut().for_each(|v| *v = 0.0),
                    // Only subnormals: the scale overflows to infinity.
                    3 if round % 8 == 3 => {
                        x.iter_mut().for_each(|v| *v = (*v / sigma).round() * 1e-45)
                    }
                    _ => {}
                }
                let mut want = vec![0u8; row_bytes(ty, n).unwrap()];
                let mut got = vec![0u8; want.len()];
                scalar(&x, &mut want);
                simd(&x, &mut got);
                assert!(
                    got == want,
                    "{ty} n={n} round={round}: first difference at byte {:?}",
                    got.iter().zip(&want).position(|(a, b)| a != b)
                );
                // The public entry point gives the same bytes.
                let mut via = vec![0u8; want.len()];
                quantize_activations(ty, &x, &mut via).unwrap();
                assert!(
                    via == want,
                    "{ty} n={n} round={round}: quantize_activations"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 560, "only {checked} rows");
}
