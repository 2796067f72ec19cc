//! Activation quantization must produce exactly the bytes llama.cpp's x86 CPU backend
//! produces (goldens taken from the llama-cpp-python build's own functions), and the dot
//! products must agree with its kernels.

mod common;

use common::{golden, parse_type};
use embodios_quant::{
    active_kernel_set, dequantize_row, quantize_activations, row_bytes,
    scalar_activation_quantizer, scalar_kernels, simd_activation_quantizer, vec_dot, vec_dot_type,
    GgmlType,
};

#[test]
fn activation_bytes_match_llama_cpp() {
    let cases = golden("activations.txt");
    let mut checked = 0;
    for case in &cases {
        let x = case.f32s("input_f32");
        assert_eq!(x.len(), case.num("count"));
        for fmt in ["Q8_0", "Q8_1", "Q8_K", "F16", "BF16"] {
            let ty = parse_type(fmt);
            let want = case.bytes(fmt);
            let mut got = vec![0u8; row_bytes(ty, x.len()).unwrap()];
            quantize_activations(ty, &x, &mut got).unwrap();
            // Both twins must give these bytes: the scalar one and the SIMD one (which
            // `quantize_activations` picks where the CPU has it).
            let mut twins = vec![("scalar", scalar_activation_quantizer(ty).unwrap())];
            twins.extend(simd_activation_quantizer(ty).map(|f| ("simd", f)));
            for (set, f) in twins {
                let mut out = vec![0u8; got.len()];
                f(&x, &mut out);
                assert!(
                    out == want,
                    "{} {fmt}: {set} quantizer differs",
                    case.label()
                );
            }
            if got != want {
                let block = ty.block_bytes();
                let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                let b = first / block * block;
                panic!(
                    "{} {fmt}: first difference at byte {first}: got {:02x?}, want {:02x?}",
                    case.label(),
                    &got[b..b + block],
                    &want[b..b + block]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} activation cases");
}

#[test]
fn f32_activations_are_copied() {
    let x = [1.5f32, -0.0, f32::INFINITY, 3.25e-3];
    let mut out = [0u8; 16];
    quantize_activations(GgmlType::F32, &x, &mut out).unwrap();
    let mut back = [0f32; 4];
    dequantize_row(GgmlType::F32, &out, &mut back).unwrap();
    for (a, b) in x.iter().zip(&back) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

/// Our scalar kernels follow ggml's generic kernels' arithmetic (integer sums per block,
/// f32 scaling in the same order); the SIMD kernel llama.cpp runs sums in a different
/// order, so the results must agree to f32 rounding of the accumulated terms.
#[test]
fn vec_dot_matches_llama_cpp_kernels() {
    let cases = golden("vec_dot.txt");
    let mut types = Vec::new();
    for case in &cases {
        let ty = case.ty("type");
        let act = case.ty("act");
        assert_eq!(vec_dot_type(ty).unwrap(), act, "{}", case.label());
        let n = case.num("n");
        let w = case.bytes("weights");
        let a = case.bytes("act");
        let active = vec_dot(ty, &w, &a, n).unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        // The scalar reference twin too (the call above takes the SIMD set where the CPU
        // has one).
        let scalar = (scalar_kernels(ty).unwrap().vec_dot)(&w, &a);
        // Scale of the rounding error: the sum of |w_i * a_i| from dequantized rows.
        let mut wf = vec![0f32; n];
        let mut af = vec![0f32; n];
        dequantize_row(ty, &w, &mut wf).unwrap();
        dequantize_row(act, &a, &mut af).unwrap();
        let mag: f32 = wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum();
        let tol = mag * 1e-6 + 1e-30;
        let want = case.f32s("simd_f32")[0];
        for (set, got) in [(active_kernel_set(), active), ("scalar", scalar)] {
            println!(
                "{} [{set}]: ours {got}, llama.cpp {want}, |diff|/Σ|terms| {:.2e}",
                case.label(),
                (got - want).abs() / mag
            );
            assert!(
                (got - want).abs() <= tol,
                "{} [{set}]: got {got}, llama.cpp {want} (tolerance {tol})",
                case.label()
            );
        }
        types.push(ty);
    }
    types.dedup();
    assert_eq!(types.len(), 13, "every weight type has a dot golden");
}
