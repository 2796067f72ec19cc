"""Dequantization goldens for embodios-quant (crates/quant/tests/golden/dequant_*.txt).

Run: /root/.cache/embodios/venv-llama/bin/python scripts/golden/quant_dequant.py

1. dequant_models.txt: for every tensor type in the two reference models, a couple of
   real tensors; for each, slices of whole blocks from the first and the last row, with
   their offset inside the tensor data and in the file, dequantized by
   `gguf.quants.dequantize` (cross-checked against ggml's own `dequantize_row_*`).
2. dequant_synthetic.txt: random blocks of every supported type (raw bytes with sane f16
   scales) with their dequantized values, for types the models do not contain.
"""

from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

from quant_common import Writer, call_dequant_fn, ggml_libs, hex_bytes, hex_f32, model_path

SIZES = gguf.GGML_QUANT_SIZES
GGML_DEQUANT = {
    Q.Q4_0: "dequantize_row_q4_0",
    Q.Q4_1: "dequantize_row_q4_1",
    Q.Q5_0: "dequantize_row_q5_0",
    Q.Q5_1: "dequantize_row_q5_1",
    Q.Q8_0: "dequantize_row_q8_0",
    Q.Q2_K: "dequantize_row_q2_K",
    Q.Q3_K: "dequantize_row_q3_K",
    Q.Q4_K: "dequantize_row_q4_K",
    Q.Q5_K: "dequantize_row_q5_K",
    Q.Q6_K: "dequantize_row_q6_K",
}


def dequant(raw: np.ndarray, qtype: Q, n: int, base) -> np.ndarray:
    vals = gguf.quants.dequantize(raw, qtype).astype(np.float32).ravel()
    assert vals.size == n
    if qtype in GGML_DEQUANT:
        ref = call_dequant_fn(base, GGML_DEQUANT[qtype], raw, n)
        if not np.array_equal(vals.view(np.uint32), ref.view(np.uint32)):
            raise SystemExit(f"gguf-py and ggml disagree on {qtype.name}")
    return vals


def model_goldens(base):
    w = Writer(
        "dequant_models.txt",
        """Real-tensor dequantization goldens (scripts/golden/quant_dequant.py).
case model=<smollm2|gemma3> tensor=<name> type=<ggml type> row=<row> elem=<first element
     in the row> count=<elements> tensor_offset=<byte offset in the tensor's data>
     file_offset=<absolute byte offset in the file> nbytes=<bytes>
values_f32: gguf.quants.dequantize of those bytes (identical to ggml's dequantize_row_*).""",
    )
    wanted = {
        "smollm2": ["token_embd.weight", "blk.0.ffn_down.weight", "blk.29.attn_q.weight",
                    "blk.0.attn_norm.weight"],
        "gemma3": ["token_embd.weight", "blk.0.attn_k.weight", "blk.0.ffn_gate.weight",
                   "blk.0.attn_output.weight", "blk.17.attn_output.weight",
                   "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "output_norm.weight"],
    }
    for key, names in wanted.items():
        reader = gguf.GGUFReader(model_path(key))
        tensors = {t.name: t for t in reader.tensors}
        seen = set()
        for name in names:
            t = tensors[name]
            qtype = t.tensor_type
            seen.add(qtype.name)
            block, bsize = SIZES[qtype]
            ne0 = int(t.shape[0])
            nrows = int(np.prod([int(s) for s in t.shape[1:]])) if len(t.shape) > 1 else 1
            row_bytes = ne0 // block * bsize
            raw_all = np.asarray(t.data).view(np.uint8).reshape(-1)
            # At most 256 elements (whole blocks) per slice, from the first and last row.
            count = min(ne0, max(block, 256 // block * block))
            for row in sorted({0, nrows - 1}):
                # In the last row take the tail, to exercise offsets inside a row.
                elem = 0 if row == 0 else ne0 - count
                start = row * row_bytes + elem // block * bsize
                nbytes = count // block * bsize
                raw = raw_all[start:start + nbytes]
                vals = dequant(raw, qtype, count, base)
                w.case(model=key, tensor=name, type=qtype.name, row=row, elem=elem, count=count,
                       tensor_offset=start, file_offset=int(t.data_offset) + start, nbytes=nbytes)
                w.field("values_f32", hex_f32(vals))
        present = sorted({t.tensor_type.name for t in reader.tensors})
        assert sorted(seen) == present, (key, seen, present)
        print(key, "types covered:", present)
    w.save()


def synthetic_goldens(base):
    rng = np.random.default_rng(20261127)
    w = Writer(
        "dequant_synthetic.txt",
        """Synthetic dequantization goldens (scripts/golden/quant_dequant.py).
case type=<ggml type> count=<elements>
bytes: random blocks (f16 scale fields replaced by sane values)
values_f32: gguf.quants.dequantize of those bytes (identical to ggml's, where it has one).""",
    )

    def f16_bytes(v):
        return np.asarray(v, dtype=np.float16).reshape(-1, 1).view(np.uint8).reshape(-1, 2)

    def scales(nb, lo=1e-3, hi=5e-2, signed=False):
        v = rng.uniform(lo, hi, nb)
        if signed:
            v *= rng.choice([-1.0, 1.0], nb)
        return f16_bytes(v)

    # (type, blocks, [(byte offset of an f16 field, signed?)])
    layouts = [
        (Q.Q4_0, 4, [(0, True)]),
        (Q.Q4_1, 4, [(0, False), (2, True)]),
        (Q.Q5_0, 4, [(0, True)]),
        (Q.Q5_1, 4, [(0, False), (2, True)]),
        (Q.Q8_0, 4, [(0, True)]),
        (Q.Q2_K, 2, [(80, False), (82, False)]),
        (Q.Q3_K, 2, [(108, True)]),
        (Q.Q4_K, 2, [(0, False), (2, False)]),
        (Q.Q5_K, 2, [(0, False), (2, False)]),
        (Q.Q6_K, 2, [(208, True)]),
    ]
    for qtype, nb, fields in layouts:
        block, bsize = SIZES[qtype]
        raw = rng.integers(0, 256, size=(nb, bsize), dtype=np.uint8)
        for off, signed in fields:
            raw[:, off:off + 2] = scales(nb, signed=signed)
        n = nb * block
        vals = dequant(raw.reshape(-1), qtype, n, base)
        w.case(type=qtype.name, count=n)
        w.field("bytes", hex_bytes(raw))
        w.field("values_f32", hex_f32(vals))
    # Plain float formats, including specials (inf, NaN, subnormals, -0).
    specials = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, np.inf, -np.inf, 6e-8, 1e-40],
                        dtype=np.float32)
    f16 = np.concatenate([rng.normal(0, 3, 55).astype(np.float16), specials.astype(np.float16)])
    vals = gguf.quants.dequantize(f16.view(np.uint8), Q.F16)
    w.case(type="F16", count=f16.size)
    w.field("bytes", hex_bytes(f16.view(np.uint8)))
    w.field("values_f32", hex_f32(vals))
    bf = np.concatenate([rng.normal(0, 3, 55).astype(np.float32), specials])
    bf16 = gguf.quants.quantize(bf, Q.BF16)
    vals = gguf.quants.dequantize(bf16, Q.BF16)
    w.case(type="BF16", count=bf.size)
    w.field("bytes", hex_bytes(bf16))
    w.field("values_f32", hex_f32(vals))
    w.save()


def main():
    base, _cpu = ggml_libs()
    model_goldens(base)
    synthetic_goldens(base)


if __name__ == "__main__":
    main()
