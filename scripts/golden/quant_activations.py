"""Activation-quantization and dot-product goldens for embodios-quant, taken from the
llama.cpp build itself (tests/golden/activations.txt, tests/golden/vec_dot.txt).

Run: /root/.cache/embodios/venv-llama/bin/python scripts/golden/quant_activations.py

The script loads llama-cpp-python's libggml-base.so / libggml-cpu.so (built for this x86
machine: AVX2 and AVX-512 enabled) with ctypes and calls the very functions the CPU
backend uses:
- activations.txt: `quantize_row_q8_0`, `quantize_row_q8_1` (the AVX2 code paths),
  `quantize_row_q8_K`, `ggml_cpu_fp32_to_fp16`, `ggml_cpu_fp32_to_bf16` on random rows and
  edge cases (zeros, exact rounding ties, negative maxima, tiny/huge/infinite values).
- vec_dot.txt: for each weight type, a weight row (quantized with ggml's reference
  quantizer), an activation row (quantized with the backend's `from_float` for the paired
  type) and the result of the backend's SIMD `ggml_vec_dot_*` kernel.
"""

from __future__ import annotations

import ctypes

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

from quant_common import Writer, call_row_fn, ggml_libs, hex_bytes, hex_f32

SIZES = gguf.GGML_QUANT_SIZES

ACT_FN = {
    Q.Q8_0: "quantize_row_q8_0",
    Q.Q8_1: "quantize_row_q8_1",
    Q.Q8_K: "quantize_row_q8_K",
    Q.F16: "ggml_cpu_fp32_to_fp16",
    Q.BF16: "ggml_cpu_fp32_to_bf16",
}

# weight type -> (activation type, ggml reference quantizer or None, dot kernel name)
WEIGHTS = {
    Q.F32: (Q.F32, None, "ggml_vec_dot_f32"),
    Q.F16: (Q.F16, None, "ggml_vec_dot_f16"),
    Q.BF16: (Q.BF16, None, "ggml_vec_dot_bf16"),
    Q.Q4_0: (Q.Q8_0, "quantize_row_q4_0_ref", "ggml_vec_dot_q4_0_q8_0"),
    Q.Q4_1: (Q.Q8_1, "quantize_row_q4_1_ref", "ggml_vec_dot_q4_1_q8_1"),
    Q.Q5_0: (Q.Q8_0, "quantize_row_q5_0_ref", "ggml_vec_dot_q5_0_q8_0"),
    Q.Q5_1: (Q.Q8_1, "quantize_row_q5_1_ref", "ggml_vec_dot_q5_1_q8_1"),
    Q.Q8_0: (Q.Q8_0, "quantize_row_q8_0_ref", "ggml_vec_dot_q8_0_q8_0"),
    Q.Q2_K: (Q.Q8_K, "quantize_row_q2_K_ref", "ggml_vec_dot_q2_K_q8_K"),
    Q.Q3_K: (Q.Q8_K, "quantize_row_q3_K_ref", "ggml_vec_dot_q3_K_q8_K"),
    Q.Q4_K: (Q.Q8_K, "quantize_row_q4_K_ref", "ggml_vec_dot_q4_K_q8_K"),
    Q.Q5_K: (Q.Q8_K, "quantize_row_q5_K_ref", "ggml_vec_dot_q5_K_q8_K"),
    Q.Q6_K: (Q.Q8_K, "quantize_row_q6_K_ref", "ggml_vec_dot_q6_K_q8_K"),
}


def row_bytes(qtype: Q, n: int) -> int:
    block, bsize = SIZES[qtype]
    if qtype == Q.Q8_1:
        # gguf-py still lists the old f32-scale layout (40 bytes); ggml's block_q8_1 now
        # holds two f16s and 32 int8s.
        bsize = 2 + 2 + 32
    return n // block * bsize


def quantize_act(cpu, qtype: Q, x: np.ndarray) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).copy()
    return call_row_fn(cpu, ACT_FN[qtype], x, row_bytes(qtype, x.size))


def edge_rows(rng) -> list[tuple[str, np.ndarray]]:
    ties = np.concatenate([[127.0], np.arange(-15.5, 15.5, 1.0)])  # amax 127 -> scale 1
    rows = [
        ("normal", rng.normal(0, 1, 256)),
        ("zeros", np.zeros(256)),
        ("ties_pos_max", np.tile(ties, 8)),
        ("ties_neg_max", np.tile(np.concatenate([[-127.0], ties[1:]]), 8)),
        ("neg_max", np.where(np.arange(256) % 32 == 5, -9.0, rng.uniform(-1, 1, 256))),
        ("tied_extremes", np.where(np.arange(256) % 32 == 1, 3.0,
                                   np.where(np.arange(256) % 32 == 2, -3.0,
                                            rng.uniform(-1, 1, 256)))),
        ("tiny", rng.normal(0, 1e-30, 256)),
        ("huge", rng.normal(0, 1e30, 256)),
        ("subnormal", rng.normal(0, 1e-40, 256)),
        ("one_hot", np.where(np.arange(256) == 77, 0.25, 0.0)),
        ("infinite", np.where(np.arange(256) == 3, np.inf, rng.normal(0, 1, 256))),
        ("f16_ties", (np.arange(256) * 2 + 1).astype(np.float32) * 2.0 ** -11 + 1.0),
    ]
    return [(name, np.asarray(x, dtype=np.float32)) for name, x in rows]


def activation_goldens(cpu):
    rng = np.random.default_rng(777)
    w = Writer(
        "activations.txt",
        """Activation quantization goldens from llama.cpp's CPU backend
(scripts/golden/quant_activations.py).
case name=<input label> count=<elements>
input_f32: the activations; then one line per format (Q8_0, Q8_1, Q8_K, F16, BF16)
with the bytes llama.cpp's from_float produced for that input.""",
    )
    for name, x in edge_rows(rng):
        w.case(name=name, count=x.size)
        w.field("input_f32", hex_f32(x))
        for qtype in [Q.Q8_0, Q.Q8_1, Q.Q8_K, Q.F16, Q.BF16]:
            w.field(qtype.name, hex_bytes(quantize_act(cpu, qtype, x)))
    w.save()


def call_vec_dot(cpu, name: str, n: int, wb: np.ndarray, ab: np.ndarray) -> np.float32:
    fn = getattr(cpu, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    out = np.full(1, np.nan, dtype=np.float32)
    wb = np.ascontiguousarray(wb, dtype=np.uint8)
    ab = np.ascontiguousarray(ab, dtype=np.uint8)
    fn(n, out.ctypes.data, 0, wb.ctypes.data, 0, ab.ctypes.data, 0, 1)
    return out[0]


def vec_dot_goldens(base, cpu):
    rng = np.random.default_rng(31337)
    w = Writer(
        "vec_dot.txt",
        """Dot-product goldens from llama.cpp's CPU backend (scripts/golden/quant_activations.py).
case type=<weight type> act=<activation type> n=<elements> name=<label>
weights: weight row bytes (ggml reference quantizer); act: activation row bytes
(random normal activations through llama.cpp's from_float); simd_f32: the result of the
ggml_vec_dot_* kernel this build runs (AVX2/AVX-512). (The generic scalar kernels are not
used: in this build ggml_vec_dot_q5_0_q8_0_generic returns wrong sums.)""",
    )
    n = 512
    for qtype, (act, qfn, dot) in WEIGHTS.items():
        for name, scale in [("normal", 1.0), ("small", 0.02)]:
            wx = (rng.normal(0, 1, n) * scale).astype(np.float32)
            ax = rng.normal(0, 1, n).astype(np.float32)
            if qtype == Q.F32:
                wb = wx.view(np.uint8).copy()
            elif qtype == Q.F16:
                wb = wx.astype(np.float16).view(np.uint8).copy()
            elif qtype == Q.BF16:
                wb = gguf.quants.quantize(wx, Q.BF16).view(np.uint8).reshape(-1)
            else:
                wb = call_row_fn(base, qfn, wx, row_bytes(qtype, n))
            ab = quantize_act(cpu, act, ax)
            simd = call_vec_dot(cpu, dot, n, wb, ab)
            w.case(type=qtype.name, act=act.name, n=n, name=name)
            w.field("weights", hex_bytes(wb))
            w.field("act", hex_bytes(ab))
            w.field("simd_f32", hex_f32([simd]))
    w.save()


def main():
    base, cpu = ggml_libs()
    activation_goldens(cpu)
    vec_dot_goldens(base, cpu)


if __name__ == "__main__":
    main()
