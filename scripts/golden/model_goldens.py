#!/usr/bin/env python3
"""Record llama.cpp's greedy continuations and logits for the engine's fidelity tests.

Run with the llama-cpp-python venv:
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_goldens.py smollm2
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_goldens.py smollm2-chat
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_goldens.py random RANDOM.gguf
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_goldens.py gemma3
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_goldens.py gemma3-chat
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_goldens.py random-gemma3 G.gguf
    (also random-qwen2, random-phi2, random-mistral; written by the write_random_llama example
    with --arch gemma3|qwen2|phi2|mistral)
(the random model is written by `cargo run -p embodios-engine --example write_random_llama -- RANDOM.gguf`)

Writes crates/engine/tests/golden/<name>_greedy.json. For every prompt: the prompt ids as
llama.cpp tokenizes them, 32 greedy tokens (argmax of llama.cpp's logits, evaluated one token
at a time after a batched prefill, like `llama-cli --temp 0`), llama.cpp's top-1/top-2 logit
margin at each step, the top-64 logits at the last prompt position and, for the first few
prompts, that whole logit vector as little-endian f32 in base64.
"""
import base64
import ctypes
import json
import os
import sys

import numpy as np
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "crates", "engine", "tests", "golden")
CACHE = os.environ.get("EMBODIOS_CACHE", os.path.expanduser("~/.cache/embodios"))

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The quick brown fox",
    "In 1492, Columbus",
]
N_GEN = 32
# The 64-token prompt of `cargo xtask bench` (SmolLM2's vocabulary), cut from its text.
BENCH_PROMPT_64 = (
    "The history of computing is a story of people who wanted machines to think faster than "
    "they could. Early engineers built calculators from gears and levers, then from relays and "
    "vacuum tubes. Each generation made the machines smaller, cheaper and more reliable, until "
    "a computer fit on a single chip. Today, the same chips run language models"
)
FULL_LOGITS_PROMPTS = 3
TOP_N = 64


def _model_params_without_extra_buffers(_orig=llama_cpp.llama_cpp.llama_model_default_params):
    # The AMX/repack "extra buffer types" crash inside ggml_backend_amx_mul_mat on this
    # (virtualised) AMX machine, and they only change summation order, so turn them off.
    params = _orig()
    params.use_extra_bufts = False
    return params


llama_cpp.llama_cpp.llama_model_default_params = _model_params_without_extra_buffers


def last_logits(llm):
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def record(model_path, name, prompts, full_logits_prompts, extra=None, n_ctx=256, sample_stride=0,
           n_gen=None, step_top=0):
    llm = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_threads=2,
        n_threads_batch=2,
        seed=0,
        verbose=False,
        logits_all=False,
    )
    cases = []
    for i, text in enumerate(prompts):
        llm.reset()
        # add_bos=True lets llama.cpp decide from the file's add_bos_token flag.
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        llm.eval(ids)
        logits = last_logits(llm)
        order = np.argsort(-logits, kind="stable")
        case = {
            "prompt": text,
            "prompt_ids": [int(t) for t in ids],
            "last_logits_top": [[int(t), float(logits[t])] for t in order[:TOP_N]],
            "last_logits_max": float(logits.max()),
            "last_logits_min": float(logits.min()),
            "last_logits_mean": float(logits.mean()),
        }
        if sample_stride:
            # Large vocabularies: every `sample_stride`-th logit instead of the whole vector.
            case["last_logits_stride"] = sample_stride
            case["last_logits_sampled"] = [float(v) for v in logits[::sample_stride]]
        if i < full_logits_prompts:
            case["last_logits_f32_b64"] = base64.b64encode(logits.astype("<f4").tobytes()).decode()
        gen, margins, tops = [], [], []
        for _ in range((n_gen or {}).get(text, N_GEN)):
            top2 = np.argsort(-logits, kind="stable")[:2]
            tok = int(top2[0])
            gen.append(tok)
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            if step_top:
                order = np.argsort(-logits, kind="stable")[:step_top]
                tops.append([[int(t), float(logits[t])] for t in order])
            llm.eval([tok])
            logits = last_logits(llm)
        if step_top:
            # The top logits before every greedy step, to locate where an error starts.
            case["greedy_top"] = tops
        case["greedy_ids"] = gen
        case["greedy_margins"] = margins
        case["greedy_text"] = llm.detokenize(gen).decode("utf-8", errors="replace")
        cases.append(case)
        print(f"{name}: {text!r} -> {case['greedy_text']!r}", file=sys.stderr)
    out = {
        "generator": "scripts/golden/model_goldens.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model_file": os.path.basename(model_path),
        "n_ctx": n_ctx,
        "n_threads": 2,
        "flash_attn": False,
        "kv_cache": "f16",
        "cases": cases,
    }
    out.update(extra or {})
    path = os.path.join(OUT_DIR, f"{name}_greedy.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def record_chat(model_path, turns=None, name="smollm2_chat", bos_first=False, stop=(2,)):
    """A two-turn ChatML conversation evaluated in separate calls, as a chat front end
    does: turn-1 prompt (one batch), greedy reply token by token (every sampled token
    evaluated, the end-of-turn one included), then the turn-2 text (one batch at a
    non-zero position) and a second greedy reply."""
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=256, n_threads=2, n_threads_batch=2,
                          seed=0, verbose=False, logits_all=False)
    eog = llm.token_eos()
    turns = turns or [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "\n<|im_start|>user\nAnd what is it famous for?<|im_end|>\n<|im_start|>assistant\n",
    ]
    out = []
    for i, text in enumerate(turns):
        ids = llm.tokenize(text.encode(), add_bos=bos_first and i == 0, special=True)
        llm.eval(ids)
        gen, margins = [], []
        for _ in range(24):
            logits = last_logits(llm)
            top2 = np.argsort(-logits, kind="stable")[:2]
            tok = int(top2[0])
            gen.append(tok)
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            llm.eval([tok])
            if tok == eog or tok in stop:
                break
        out.append({"text": text, "ids": [int(t) for t in ids], "greedy_ids": gen,
                    "greedy_margins": margins,
                    "greedy_text": llm.detokenize(gen).decode("utf-8", errors="replace")})
        print(f"chat turn: {out[-1]['greedy_text']!r}", file=sys.stderr)
    path = os.path.join(OUT_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"generator": f"scripts/golden/model_goldens.py {name.replace('_', '-')}",
                   "llama_cpp_python": llama_cpp.__version__, "n_ctx": 256, "turns": out}, f, indent=1)
    print(f"wrote {path}", file=sys.stderr)


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    if what == "smollm2":
        path = os.environ.get("EMBODIOS_MODEL_SMOLLM2_135M") or os.path.join(
            CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
        record(path, "smollm2", PROMPTS, FULL_LOGITS_PROMPTS)
    elif what in ("smollm2-q8_0", "smollm2-q4_k_m"):
        # SmolLM2 requantized by `embodios quantize` (the fidelity test remakes the file
        # and checks its SHA-256 against the one recorded here). Besides the usual
        # prompts, the bench's 64-token prompt with 128 greedy tokens.
        import hashlib
        kind = what.split("-", 1)[1].upper()
        path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
            CACHE, "bench", "models", f"SmolLM2-135M-Instruct.{kind}.gguf")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        prompts = PROMPTS[:3] + [BENCH_PROMPT_64]
        record(path, what.replace("-", "_"), prompts, 1,
               {"model_sha256": sha, "model_bytes": os.path.getsize(path)},
               n_gen={BENCH_PROMPT_64: 128}, step_top=8)
    elif what == "smollm2-chat":
        path = os.environ.get("EMBODIOS_MODEL_SMOLLM2_135M") or os.path.join(
            CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
        record_chat(path)
    elif what == "gemma3-chat":
        path = os.environ.get("EMBODIOS_MODEL_GEMMA3_270M") or os.path.join(
            CACHE, "models", "gemma-3-270m-q4_k_m.gguf")
        # Gemma's turn format (the file has no chat template); 106 is <end_of_turn>.
        record_chat(path, [
            "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n",
            "\n<start_of_turn>user\nAnd what is it famous for?<end_of_turn>\n"
            "<start_of_turn>model\n",
        ], name="gemma3_chat", bos_first=True, stop=(1, 106))
    elif what == "gemma3":
        path = os.environ.get("EMBODIOS_MODEL_GEMMA3_270M") or os.path.join(
            CACHE, "models", "gemma-3-270m-q4_k_m.gguf")
        # 262144 logits are 1 MiB each: keep the top 64 and every 1024th one.
        record(path, "gemma3_270m", PROMPTS + ["Water boils at a temperature of"], 0,
               sample_stride=1024)
    elif what in ("random-gemma3", "random-qwen2", "random-phi2", "random-mistral"):
        size = os.path.getsize(sys.argv[2])
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 30
        # Small goldens: the top 64 and a strided sample of the last logits, no full vectors.
        stride = 256 if what == "random-gemma3" else 64
        record(sys.argv[2], what.replace("-", "_"), PROMPTS[:3] + [long_prompt], 0,
               {"model_bytes": size}, n_ctx=512, sample_stride=stride)
    elif what == "random":
        size = os.path.getsize(sys.argv[2])
        # The long prompt (about 300 tokens) takes the attention past one 256-cell
        # block of llama.cpp's KV cache.
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 30
        record(sys.argv[2], "random_llama", PROMPTS[:3] + [long_prompt], 2,
               {"model_bytes": size}, n_ctx=512)
    else:
        sys.exit(f"unknown target {what!r}: use smollm2 | smollm2-chat | smollm2-q8_0 [PATH] | smollm2-q4_k_m [PATH] | gemma3 | gemma3-chat | random PATH | random-gemma3 PATH | random-qwen2 PATH | random-phi2 PATH | random-mistral PATH")


if __name__ == "__main__":
    main()
