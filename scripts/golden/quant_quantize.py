"""Weight-quantization goldens for embodios-quant (tests/golden/quantize_legacy.txt).

Run: /root/.cache/embodios/venv-llama/bin/python scripts/golden/quant_quantize.py

Inputs (random rows plus edge cases) quantized to Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 with
`gguf.quants.quantize`; the script also calls ggml's `quantize_row_*_ref` on the same
input and fails unless both produce the same bytes.
"""

from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

from quant_common import Writer, call_row_fn, ggml_libs, hex_bytes, hex_f32

SIZES = gguf.GGML_QUANT_SIZES
REF = {
    Q.Q4_0: "quantize_row_q4_0_ref",
    Q.Q4_1: "quantize_row_q4_1_ref",
    Q.Q5_0: "quantize_row_q5_0_ref",
    Q.Q5_1: "quantize_row_q5_1_ref",
    Q.Q8_0: "quantize_row_q8_0_ref",
}


def inputs(rng) -> list[tuple[str, np.ndarray]]:
    out = [
        ("normal", rng.normal(0, 1, 256)),
        ("uniform_wide", rng.uniform(-1000, 1000, 128)),
        ("tiny", rng.normal(0, 1e-6, 64)),
        ("zeros", np.zeros(32)),
        ("constant", np.full(32, 0.75)),
        ("negative_constant", np.full(32, -3.0)),
    ]
    # Negative extreme: largest magnitude is negative.
    v = rng.uniform(-1, 1, 32)
    v[7] = -4.0
    out.append(("negative_max", v))
    # Both signs of the extreme: the first one decides the sign of d.
    v = rng.uniform(-1, 1, 64)
    v[3], v[9] = 2.0, -2.0
    v[32 + 3], v[32 + 9] = -2.0, 2.0
    out.append(("tied_extremes", v))
    # Values on quantization ties for d = 1 (Q4_0: max -8 -> d = 1; Q8_0: amax 127).
    v = np.array([-8.0] + [x + 0.5 for x in range(-8, 7)] + list(np.arange(16) - 7.5))
    out.append(("ties_q4", v))
    v = np.concatenate([[127.0], np.arange(-15.5, 15.5, 1.0)])
    out.append(("ties_q8", v))
    # Integer grids, where (x - min) * id lands near .5 boundaries.
    out.append(("grid", np.tile(np.arange(32) * 0.1 - 1.55, 2)))
    return [(name, x.astype(np.float32)) for name, x in out]


def main():
    base, _cpu = ggml_libs()
    rng = np.random.default_rng(4242)
    w = Writer(
        "quantize_legacy.txt",
        """Weight quantization goldens (scripts/golden/quant_quantize.py).
case type=<Q4_0|Q4_1|Q5_0|Q5_1|Q8_0> name=<input label> count=<elements>
input_f32: the row; bytes: gguf.quants.quantize (== ggml quantize_row_*_ref).""",
    )
    for qtype in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]:
        block, bsize = SIZES[qtype]
        for name, x in inputs(rng):
            q = gguf.quants.quantize(x.reshape(1, -1), qtype).reshape(-1)
            ref = call_row_fn(base, REF[qtype], x, x.size // block * bsize)
            if not np.array_equal(q, ref):
                raise SystemExit(f"gguf-py and ggml disagree: {qtype.name} {name}")
            w.case(type=qtype.name, name=name, count=x.size)
            w.field("input_f32", hex_f32(x))
            w.field("bytes", hex_bytes(q))
    w.save()


if __name__ == "__main__":
    main()
