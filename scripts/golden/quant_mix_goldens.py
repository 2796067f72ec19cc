#!/usr/bin/env python3
"""Record which type llama.cpp's own quantizer (`llama_model_quantize`, as `llama-quantize`
runs it, requantizing allowed) gives every tensor of SmolLM2-135M for the mixed presets, so
`embodios quantize` can be tested against it.

Run with the llama-cpp-python venv:
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/quant_mix_goldens.py

Writes cli/tests/golden/smollm2_quant_mix.json: {preset: {"file_type": N, "types": {tensor: type}}}.
"""
import json
import os
import tempfile

import gguf
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "cli", "tests", "golden", "smollm2_quant_mix.json")
CACHE = os.environ.get("EMBODIOS_CACHE", os.path.expanduser("~/.cache/embodios"))
MODEL = os.environ.get("EMBODIOS_MODEL_SMOLLM2_135M",
                       os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))

# preset name -> llama_ftype
PRESETS = {"Q8_0": 7, "Q4_0": 2, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def main():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ftype in PRESETS.items():
            dst = os.path.join(tmp, f"{name}.gguf")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.allow_requantize = True
            params.nthread = 2
            rc = llama_cpp.llama_model_quantize(MODEL.encode(), dst.encode(), params)
            if rc != 0:
                raise SystemExit(f"llama_model_quantize {name} failed ({rc})")
            r = gguf.GGUFReader(dst)
            types = {t.name: t.tensor_type.name for t in r.tensors}
            ft = int(r.fields["general.file_type"].parts[-1][0])
            out[name] = {"file_type": ft, "types": types}
            print(name, ft, sorted(set(types.values())))
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
