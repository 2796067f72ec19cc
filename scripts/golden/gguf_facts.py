#!/usr/bin/env python3
"""Record what the reference GGUF reader (gguf-py) sees in the two test models.

Run with the llama-cpp-python venv (it has the `gguf` package):
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/gguf_facts.py

Writes crates/gguf/tests/golden/<model>.json with the version, alignment, data offset,
every metadata key (type, and the value or for arrays the length plus the first and last
elements) and every tensor (name, type id, dims, offset, byte size and a checksum of its
bytes). The checksum is sum((i + 1) * byte[i]) mod 2**64 over the tensor's bytes, cheap to
compute with numpy here and with wrapping integer arithmetic in Rust.
"""
import json
import os
import sys

import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "crates", "gguf", "tests", "golden")
CACHE = os.environ.get("EMBODIOS_CACHE", os.path.expanduser("~/.cache/embodios"))

MODELS = {
    "smollm2-135m": ("EMBODIOS_MODEL_SMOLLM2_135M", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("EMBODIOS_MODEL_GEMMA3_270M", "gemma-3-270m-q4_k_m.gguf"),
}

TYPE_NAMES = {
    gguf.GGUFValueType.UINT8: "uint8",
    gguf.GGUFValueType.INT8: "int8",
    gguf.GGUFValueType.UINT16: "uint16",
    gguf.GGUFValueType.INT16: "int16",
    gguf.GGUFValueType.UINT32: "uint32",
    gguf.GGUFValueType.INT32: "int32",
    gguf.GGUFValueType.FLOAT32: "float32",
    gguf.GGUFValueType.BOOL: "bool",
    gguf.GGUFValueType.STRING: "string",
    gguf.GGUFValueType.ARRAY: "array",
    gguf.GGUFValueType.UINT64: "uint64",
    gguf.GGUFValueType.INT64: "int64",
    gguf.GGUFValueType.FLOAT64: "float64",
}

CHUNK = 1 << 20


def checksum(data: np.ndarray) -> int:
    raw = np.frombuffer(data.tobytes(), dtype=np.uint8)
    total = np.uint64(0)
    with np.errstate(over="ignore"):
        for start in range(0, len(raw), CHUNK):
            part = raw[start:start + CHUNK].astype(np.uint64)
            weights = np.arange(start + 1, start + 1 + len(part), dtype=np.uint64)
            total = total + np.sum(part * weights, dtype=np.uint64)
    return int(total)


def plain(v):
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int, bool, np.bool_)):
        return v.item() if hasattr(v, "item") else v
    return v


def model_path(env, file_name):
    path = os.environ.get(env) or os.path.join(CACHE, "models", file_name)
    if not os.path.exists(path):
        sys.exit(f"model not found: {path}")
    return path


def facts(path):
    r = gguf.GGUFReader(path)
    out = {"file_len": os.path.getsize(path), "alignment": r.alignment, "data_offset": r.data_offset}
    metadata = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            if name == "GGUF.version":
                out["version"] = int(field.contents())
            continue
        entry = {"key": name, "type": TYPE_NAMES[field.types[0]]}
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            items = field.contents()
            entry["elem_type"] = TYPE_NAMES[field.types[1]]
            entry["len"] = len(items)
            entry["head"] = [plain(v) for v in items[:5]]
            entry["last"] = plain(items[-1]) if items else None
        else:
            entry["value"] = plain(field.contents())
        metadata.append(entry)
    out["metadata"] = metadata
    tensors = []
    for t in r.tensors:
        tensors.append({
            "name": t.name,
            "type_id": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset) - r.data_offset,
            "n_bytes": int(t.n_bytes),
            "checksum": checksum(t.data),
        })
    out["tensors"] = tensors
    return out


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, (env, file_name) in MODELS.items():
        out = facts(model_path(env, file_name))
        with open(os.path.join(OUT_DIR, f"{name}.json"), "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{name}: {len(out['tensors'])} tensors, {len(out['metadata'])} keys")


if __name__ == "__main__":
    main()
