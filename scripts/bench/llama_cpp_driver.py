#!/usr/bin/env python3
"""llama.cpp side of `cargo xtask bench`: times prefill and greedy decode through
llama-cpp-python, one JSON line per round, so the harness can interleave rounds with
EMBODIOS's own.

usage: llama_cpp_driver.py MODEL THREADS N_GEN PROMPT_FILE
Then, on stdin, one line per round ("round") and "quit". Each round prints a JSON object:
prompt_tokens, gen_tokens, ttft_ms, prefill_tok_s, decode_tok_s, itl_ms (list), peak_rss_kb.
"""
import json
import resource
import sys
import time

import llama_cpp
import numpy as np


def _without_extra_buffers(_orig=llama_cpp.llama_cpp.llama_model_default_params):
    # The AMX "extra buffer types" crash in this virtualised machine (see
    # scripts/golden/model_goldens.py); they do not apply to the Q4_1/Q8_0 default model.
    params = _orig()
    params.use_extra_bufts = False
    return params


llama_cpp.llama_cpp.llama_model_default_params = _without_extra_buffers


def last_logits(llm):
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def one_round(llm, prompt_ids, n_gen):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    tok = int(np.argmax(last_logits(llm)))
    t_first = time.perf_counter()
    itl = []
    prev = t_first
    for _ in range(n_gen - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm)))
        now = time.perf_counter()
        itl.append((now - prev) * 1e3)
        prev = now
    decode_s = prev - t_first
    return {
        "prompt_tokens": len(prompt_ids),
        "gen_tokens": n_gen,
        "ttft_ms": (t_first - t0) * 1e3,
        "prefill_tok_s": len(prompt_ids) / (t_first - t0),
        "decode_tok_s": (n_gen - 1) / decode_s if decode_s > 0 else 0.0,
        "itl_ms": itl,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main():
    model, threads, n_gen, prompt_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    prompt = open(prompt_file, encoding="utf-8").read()
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    print(json.dumps({"ready": True, "version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps(one_round(llm, prompt_ids, n_gen)), flush=True)


if __name__ == "__main__":
    main()
