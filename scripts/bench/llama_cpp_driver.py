#!/usr/bin/env python3
"""llama.cpp side of `cargo xtask bench` for latency: time to first token on a 16- and a
64-token prompt, inter-token latencies of greedy decoding, the greedy tokens (to compare
with EMBODIOS's) and peak memory. Throughput comes from llama.cpp's own `llama-bench`.

The loop is as lean as Python allows: llama.cpp's C API through llama-cpp-python's ctypes
bindings (no high-level `Llama` object), one `llama_decode` per step and llama.cpp's own
greedy sampler (argmax in C), so per token Python only makes a few foreign calls.

usage: llama_cpp_driver.py MODEL THREADS N_GEN TEXT_FILE
Prints a JSON "ready" line with the 16- and 64-token prompts it cut from TEXT_FILE (at a
word boundary where the count comes out exact, as EMBODIOS tokenizes the same text the
same way), then answers each "round" line on stdin with a JSON line:
prompt16_tokens, ttft16_ms, prompt_tokens, ttft_ms, prefill_tok_s, decode_tok_s, itl_ms
(list), ids (the greedy tokens after the 64-token prompt), base_rss_kb, peak_rss_kb,
model_rss_kb.
"check ID ID ..." replays the 64-token prompt with those tokens (another engine's greedy
choice) and answers {"agree": how many equal llama.cpp's argmax, "margin": at the first
that does not, llama.cpp's top logit minus that token's logit}. "quit" ends it.

Memory: after the imports the driver resets the kernel's peak-RSS mark (writing 5 to
/proc/self/clear_refs) and records its RSS as the base, so peak_rss_kb - base_rss_kb is
what loading and running the model added, not Python's own; model_rss_kb is the resident
part of the model file's mapping (weights never read, such as most rows of an untied
embedding table, are not resident), so the memory beyond the file is
peak_rss_kb - base_rss_kb - model_rss_kb.

Environment: LLAMA_CPP_LIB_PATH selects the libllama build (xtask points it at the one
it built with llama-bench); EMBODIOS_EXTRA_BUFTS=0 turns off llama.cpp's extra buffer
types (repacked weights, AMX), which crash with llama-cpp-python's AMX build here;
EMBODIOS_FLASH_ATTN=0 turns flash attention off. With both, llama.cpp computes as in the
configuration the engine's golden tests were recorded with.
"""
import ctypes
import json
import os
import sys
import time

import llama_cpp as L
import numpy as np


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def mapped_rss_kb(path):
    """Resident KiB of this process's mappings of `path` (the model file)."""
    real = os.path.realpath(path)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:
                inside = len(fields) >= 6 and os.path.realpath(fields[5]) == real
            elif inside and fields and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# llama.cpp logs every graph it builds; a callback that drops the text keeps stderr quiet
# (kept referenced so ctypes does not free it).
_QUIET = L.llama_log_callback(lambda level, text, user: None)


class Model:
    def __init__(self, path, threads):
        L.llama_log_set(_QUIET, None)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = os.environ.get("EMBODIOS_EXTRA_BUFTS", "1") != "0"
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = 512
        cp.n_batch = 512
        cp.n_ubatch = 512
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.no_perf = True
        if os.environ.get("EMBODIOS_FLASH_ATTN") == "0":
            cp.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise SystemExit("llama.cpp could not make a context")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.sampler = L.llama_sampler_init_greedy()
        self.one = (L.llama_token * 1)()

    def tokenize(self, text):
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (L.llama_token * cap)()
        add_bos = L.llama_vocab_get_add_bos(self.vocab)
        n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, True)
        return list(buf[:n])

    def piece(self, tok):
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, False)
        return buf.raw[: max(n, 0)]

    def decode(self, ids):
        arr = (L.llama_token * len(ids))(*ids)
        if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(ids))) != 0:
            raise SystemExit("llama_decode failed")

    def step(self, tok):
        self.one[0] = tok
        if L.llama_decode(self.ctx, L.llama_batch_get_one(self.one, 1)) != 0:
            raise SystemExit("llama_decode failed")

    def sample(self):
        return L.llama_sampler_sample(self.sampler, self.ctx, -1)

    def clear(self):
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)


def cut_prompt(m, text, n):
    """A prefix of `text` that tokenizes to exactly `n` tokens (or the closest below)."""
    words = text.split(" ")
    best = ""
    for k in range(1, len(words) + 1):
        t = " ".join(words[:k])
        ids = m.tokenize(t)
        if len(ids) == n:
            return t
        if len(ids) > n:
            # No word boundary gives n: cut the token list and check the text round-trips.
            bos = 1 if L.llama_vocab_get_add_bos(m.vocab) else 0
            cut = ids[:n]
            t2 = b"".join(m.piece(x) for x in cut[bos:]).decode("utf-8", "replace")
            return t2 if m.tokenize(t2) == cut else best
        best = t
    return best


def one_round(m, p16, p64, n_gen):
    m.clear()
    t0 = time.perf_counter()
    m.decode(p16)
    m.sample()
    ttft16 = time.perf_counter() - t0

    m.clear()
    t0 = time.perf_counter()
    m.decode(p64)
    tok = m.sample()
    t_first = time.perf_counter()
    ids = [tok]
    itl = []
    prev = t_first
    for _ in range(n_gen - 1):
        m.step(tok)
        tok = m.sample()
        now = time.perf_counter()
        itl.append((now - prev) * 1e3)
        prev = now
        ids.append(tok)
    decode_s = prev - t_first
    return {
        "prompt16_tokens": len(p16),
        "ttft16_ms": ttft16 * 1e3,
        "prompt_tokens": len(p64),
        "ttft_ms": (t_first - t0) * 1e3,
        "prefill_tok_s": len(p64) / (t_first - t0),
        "decode_tok_s": (n_gen - 1) / decode_s if decode_s > 0 else 0.0,
        "itl_ms": itl,
        "ids": ids,
    }


def check(m, p64, theirs):
    """Replays the 64-token prompt and another engine's greedy tokens: how many agree with
    llama.cpp's argmax, and at the first that does not, how far llama.cpp's top logit is
    above the logit of the other engine's token (a small margin is a near tie)."""
    m.clear()
    m.decode(p64)
    n_vocab = L.llama_vocab_n_tokens(m.vocab)
    for i, tok in enumerate(theirs):
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(m.ctx, -1), shape=(n_vocab,))
        best = int(logits.argmax())
        if best != tok:
            return {"agree": i, "margin": float(logits[best] - logits[tok])}
        m.step(tok)
    return {"agree": len(theirs), "margin": None}


def main():
    path, threads, n_gen, text_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    text = open(text_file, encoding="utf-8").read().strip()
    reset_peak()
    base_kb = status_kb("VmRSS")
    m = Model(path, threads)
    prompts = {str(n): cut_prompt(m, text, n) for n in (16, 64)}
    ids = {k: m.tokenize(v) for k, v in prompts.items()}
    print(json.dumps({"ready": True, "version": L.__version__, "prompts": prompts,
                      "prompt_ids": ids}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        if line.startswith("check "):
            theirs = [int(x) for x in line.split()[1:]]
            print(json.dumps(check(m, ids["64"], theirs)), flush=True)
            continue
        r = one_round(m, ids["16"], ids["64"], n_gen)
        r["base_rss_kb"] = base_kb
        r["peak_rss_kb"] = status_kb("VmHWM")
        r["model_rss_kb"] = mapped_rss_kb(path)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
