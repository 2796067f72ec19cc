//! Typed errors: unsupported types, wrong lengths, partial blocks. Nothing panics.

mod common;

use embodios_quant::{
    dequantize_row, is_supported, kernels, quantize_activations, quantize_row, row_bytes, vec_dot,
    vec_dot_type, GgmlType, QuantError, WEIGHT_TYPES,
};

#[test]
fn unsupported_types_are_refused_with_a_named_error() {
    for ty in GgmlType::ALL {
        assert_eq!(is_supported(ty), WEIGHT_TYPES.contains(&ty), "{ty}");
        if is_supported(ty) {
            continue;
        }
        let err = QuantError::Unsupported(ty);
        let n = ty.block_elems();
        let bytes = vec![0u8; ty.block_bytes()];
        let mut out = vec![0f32; n];
        // Q8_1 and Q8_K are activation formats: dequantizable, not weights.
        if !matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K) {
            assert_eq!(dequantize_row(ty, &bytes, &mut out), Err(err), "{ty}");
        }
        assert_eq!(
            quantize_row(ty, &vec![0f32; n], &mut vec![0u8; ty.block_bytes()]),
            Err(err)
        );
        assert_eq!(vec_dot(ty, &bytes, &bytes, n), Err(err), "{ty}");
        assert_eq!(vec_dot_type(ty), Err(err), "{ty}");
        assert!(kernels(ty).is_err());
    }
    let msg = QuantError::Unsupported(GgmlType::IQ2_XXS).to_string();
    assert_eq!(msg, "tensor type IQ2_XXS is not supported");
}

#[test]
fn activation_formats_are_limited_to_the_paired_ones() {
    for ty in GgmlType::ALL {
        let ok = matches!(
            ty,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q8_1
                | GgmlType::Q8_K
        );
        let n = ty.block_elems();
        let mut out = vec![0u8; ty.block_bytes()];
        let r = quantize_activations(ty, &vec![0.5f32; n], &mut out);
        assert_eq!(r.is_ok(), ok, "{ty}: {r:?}");
        if !ok {
            assert_eq!(r, Err(QuantError::Unsupported(ty)));
        }
    }
}

#[test]
fn vec_dot_types_match_llama_cpp_pairing() {
    use GgmlType::*;
    let expected = [
        (F32, F32),
        (F16, F16),
        (BF16, BF16),
        (Q4_0, Q8_0),
        (Q5_0, Q8_0),
        (Q8_0, Q8_0),
        (Q4_1, Q8_1),
        (Q5_1, Q8_1),
        (Q2_K, Q8_K),
        (Q3_K, Q8_K),
        (Q4_K, Q8_K),
        (Q5_K, Q8_K),
        (Q6_K, Q8_K),
    ];
    for (w, a) in expected {
        assert_eq!(vec_dot_type(w), Ok(a), "{w}");
    }
}

#[test]
fn wrong_lengths_are_reported() {
    for ty in WEIGHT_TYPES {
        let be = ty.block_elems();
        let bb = ty.block_bytes();
        let n = 2 * be.max(32) / be * be; // at least two blocks, a multiple of 32
        let good = row_bytes(ty, n).unwrap();
        assert_eq!(good, n / be * bb);
        let mut out = vec![0f32; n];
        // Source one byte short / one byte long.
        assert_eq!(
            dequantize_row(ty, &vec![0u8; good - 1], &mut out),
            Err(QuantError::BadLength {
                expected: good,
                got: good - 1
            }),
            "{ty}"
        );
        assert_eq!(
            dequantize_row(ty, &vec![0u8; good + 1], &mut out),
            Err(QuantError::BadLength {
                expected: good,
                got: good + 1
            }),
            "{ty}"
        );
        assert_eq!(
            quantize_row(ty, &vec![0f32; n], &mut vec![0u8; good + bb]),
            Err(QuantError::BadLength {
                expected: good,
                got: good + bb
            })
        );
        // Activation row of the wrong length.
        let act = vec_dot_type(ty).unwrap();
        let act_good = row_bytes(act, n).unwrap();
        assert_eq!(
            vec_dot(ty, &vec![0u8; good], &vec![0u8; act_good - 1], n),
            Err(QuantError::BadLength {
                expected: act_good,
                got: act_good - 1
            })
        );
        assert!(vec_dot(ty, &vec![0u8; good], &vec![0u8; act_good], n).is_ok());
        if be > 1 {
            let err = QuantError::NotBlockMultiple { ty, elems: be + 1 };
            assert_eq!(dequantize_row(ty, &[], &mut vec![0f32; be + 1]), Err(err));
            assert_eq!(row_bytes(ty, be + 1), Err(err));
            assert!(err.to_string().contains(ty.name()), "{err}");
        }
    }
    let e = QuantError::BadLength {
        expected: 18,
        got: 17,
    };
    assert_eq!(e.to_string(), "buffer has length 17, expected 18");
}

#[test]
fn garbage_bytes_and_non_finite_inputs_do_not_panic() {
    let mut rng = common::Rng::new(11);
    for ty in WEIGHT_TYPES {
        let n = 512;
        let bytes: Vec<u8> = (0..row_bytes(ty, n).unwrap())
            .map(|_| rng.next_u64() as u8)
            .collect();
        let mut out = vec![0f32; n];
        dequantize_row(ty, &bytes, &mut out).unwrap();
        let act = vec_dot_type(ty).unwrap();
        let abytes: Vec<u8> = (0..row_bytes(act, n).unwrap())
            .map(|_| rng.next_u64() as u8)
            .collect();
        vec_dot(ty, &bytes, &abytes, n).unwrap();
        let mut x = rng.vec_normal(n, 1.0);
        x[3] = f32::NAN;
        x[40] = f32::INFINITY;
        x[300] = f32::NEG_INFINITY;
        x[301] = 1e-42;
        let mut q = vec![0u8; row_bytes(ty, n).unwrap()];
        quantize_row(ty, &x, &mut q).unwrap();
        let mut a = vec![0u8; row_bytes(act, n).unwrap()];
        quantize_activations(act, &x, &mut a).unwrap();
    }
}
