//! The Q4_0..Q8_0 weight quantizers must produce exactly the bytes of
//! `gguf.quants.quantize` / ggml's `quantize_row_*_ref`.

mod common;

use std::collections::BTreeSet;

use common::golden;
use embodios_quant::{quantize_row, row_bytes};

#[test]
fn legacy_quantizers_match_the_reference_bytes() {
    let mut seen = BTreeSet::new();
    for case in golden("quantize_legacy.txt") {
        let ty = case.ty("type");
        seen.insert(ty.name());
        let x = case.f32s("input_f32");
        assert_eq!(x.len(), case.num("count"));
        let want = case.bytes("bytes");
        let mut got = vec![0u8; row_bytes(ty, x.len()).unwrap()];
        quantize_row(ty, &x, &mut got).unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        if got != want {
            let block = ty.block_bytes();
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "{}: first difference at byte {first} (block {}): got {:02x?}, want {:02x?}",
                case.label(),
                first / block,
                &got[first / block * block..][..block],
                &want[first / block * block..][..block],
            );
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
    );
}
