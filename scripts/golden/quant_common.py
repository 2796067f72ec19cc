"""Shared helpers for the embodios-quant golden scripts.

Golden files are plain text, one record per line, so the Rust tests can read them with a
few lines of code and no JSON dependency:

    # comment
    case <key>=<value> ...        starts a record (keys depend on the file)
    <field> <hex>                 a byte string, as lowercase hex
    <field>_f32 <hex> <hex> ...   f32 values as their IEEE-754 bit patterns (8 hex digits)
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "crates" / "quant" / "tests" / "golden"
CACHE = Path(os.environ.get("EMBODIOS_CACHE", Path.home() / ".cache" / "embodios"))

MODELS = {
    "smollm2": ("EMBODIOS_MODEL_SMOLLM2_135M", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": ("EMBODIOS_MODEL_GEMMA3_270M", "gemma-3-270m-q4_k_m.gguf"),
}


def model_path(key: str) -> Path:
    env, file = MODELS[key]
    if os.environ.get(env):
        return Path(os.environ[env])
    return CACHE / "models" / file


def hex_bytes(b) -> str:
    return bytes(np.asarray(b, dtype=np.uint8).ravel()).hex()


def hex_f32(values) -> str:
    bits = np.asarray(values, dtype=np.float32).ravel().view(np.uint32)
    return " ".join(f"{int(v):08x}" for v in bits)


class Writer:
    def __init__(self, name: str, header: str):
        self.path = GOLDEN_DIR / name
        self.lines = [f"# {line}".rstrip() for line in header.strip().splitlines()]
        self.lines.append("# Generated; do not edit. Regenerate with the script named above.")

    def case(self, **kv):
        self.lines.append("case " + " ".join(f"{k}={v}" for k, v in kv.items()))

    def field(self, name: str, text: str):
        self.lines.append(f"{name} {text}")

    def save(self):
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
        print(f"wrote {self.path} ({self.path.stat().st_size} bytes)")


def ggml_libs():
    """The ggml shared libraries llama-cpp-python was built with (x86, native flags)."""
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init()
    return base, cpu


def call_row_fn(lib, name: str, x: np.ndarray, out_bytes: int) -> np.ndarray:
    """Calls a ggml `void f(const float *x, void *y, int64_t k)` row function."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(out_bytes, dtype=np.uint8)
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


def call_dequant_fn(lib, name: str, src: np.ndarray, n: int) -> np.ndarray:
    """Calls a ggml `void dequantize_row_x(const void *x, float *y, int64_t k)`."""
    src = np.ascontiguousarray(src, dtype=np.uint8)
    out = np.zeros(n, dtype=np.float32)
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(src.ctypes.data, out.ctypes.data, n)
    return out
