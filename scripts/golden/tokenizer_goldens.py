#!/usr/bin/env python3
"""Record llama.cpp's tokenization of the tokenizer test corpus for the two test models.

Run with the llama-cpp-python venv:
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/tokenizer_goldens.py

Reads crates/tokenizer/tests/corpus.json (a JSON list of strings) and writes
crates/tokenizer/tests/golden/{smollm2,gemma3}.json with, per model:
- vocabulary facts: size, bos/eos/eot ids, the end-of-generation set, add_bos;
- a SHA-256 over every token's piece (llama_token_to_piece with lstrip 0), once with
  special=True and once with special=False; each piece is hashed as its length
  (u32 little-endian) followed by its bytes, ids in order;
- per corpus string:
  ids        llama_tokenize(add_special=True, parse_special=True)
  ids_plain  llama_tokenize(add_special=True, parse_special=False)
  detok      llama_detokenize(ids, remove_special=True, unparse_special=True)
  detok_plain llama_detokenize(ids_plain, remove_special=False, unparse_special=False)
  roundtrip  whether Llama.detokenize(ids) (llama-cpp-python's own decoding) gives
             back the string's bytes.
- fuzz: the same fields (without detok) for FUZZ_COUNT random strings drawn with a fixed
  seed from FUZZ_PARTS (mixing scripts, digits, whitespace, apostrophes, special tokens).
Byte strings that are not valid UTF-8 are stored as {"hex": "..."}.

It also writes crates/tokenizer/tests/golden/gemma3_phi3_name.json: the Gemma 3 vocabulary
with general.name set to a Phi-3 name (llama.cpp then makes special tokens strip the
whitespace after them), with the ids of the corpus, fuzz and a few extra strings; and
crates/tokenizer/tests/golden/smollm2_pre_variants.json: the SmolLM2
vocabulary saved as vocab-only GGUF files whose tokenizer.ggml.pre is changed to each of
PRE_VARIANTS (None = key removed, llama.cpp's "default"), and for each the ids
(add_special, parse_special) and llama_detokenize(ids, False, False) of the corpus and fuzz
strings, to check the other BPE pre-tokenizers against llama.cpp.
"""
import ctypes
import hashlib
import json
import os
import random
import struct
import tempfile

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "crates", "tokenizer", "tests", "corpus.json")
OUT_DIR = os.path.join(ROOT, "crates", "tokenizer", "tests", "golden")
CACHE = os.environ.get("EMBODIOS_CACHE", os.path.expanduser("~/.cache/embodios"))

MODELS = {
    "smollm2": ("EMBODIOS_MODEL_SMOLLM2_135M", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": ("EMBODIOS_MODEL_GEMMA3_270M", "gemma-3-270m-q4_k_m.gguf"),
}


FUZZ_COUNT = 200
FUZZ_SEED = 20261127
FUZZ_PARTS = [
    "a", "b", "Z", "x", "Hello", "world", " the", "ing", "é", "ß", "ǅ", "ﬁ", "日", "本", "語", "한",
    "😀", "👍🏽", "\u200d", "🇯🇵", "1", "23", "456", "7890", "١٢", "½", " ", "  ", "   ", "\t",
    "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "'", "'s", "'LL", "'ve", "!", "?", ".", ",",
    "-", "_", "(", ")", "{", "\"", "$", "+", "<", ">", "`", "▁", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "</s>", "<b>", "<0x41>",
]

PRE_VARIANTS = [None, "gpt-2", "llama-bpe", "qwen2"]
PHI3_NAME = "Phi-3 vocabulary test"
PHI3_RENAME = {6: "<|endoftext|>"}  # Gemma's <unused0>


def fuzz_strings():
    rng = random.Random(FUZZ_SEED)
    out = []
    for _ in range(FUZZ_COUNT):
        out.append("".join(rng.choice(FUZZ_PARTS) for _ in range(rng.randint(1, 14))))
    return out


def write_variant(src, dest, key, value, rename=None):
    """Copies src's metadata (no tensors: enough for vocab_only) with the string key set
    to value (None: removed) and the tokens in rename ({id: text}) renamed."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dest, arch=r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k in ("general.architecture", key):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            v = f.contents()
            if k == "tokenizer.ggml.tokens" and rename:
                v = [rename.get(i, t) for i, t in enumerate(v)]
            w.add_array(k, v)
        else:
            w.add_key_value(k, f.contents(), f.types[0])
    if value is not None:
        w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def model_path(env, file):
    p = os.environ.get(env)
    if p:
        return p
    return os.path.join(CACHE, "models", file)


def as_json_bytes(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": b.hex()}


def tokenize(vocab, text, add_special, parse_special):
    n_max = len(text) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, n_max, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"tokenize failed for {text!r}: {n}")
    return list(buf[:n])


def detokenize(vocab, ids, remove_special, unparse_special):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 64 * len(ids)
    while True:
        out = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, size, remove_special, unparse_special)
        if n >= 0:
            return out.raw[:n]
        size = -n + 16


def piece(vocab, tid, special):
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, tid, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n + 16


def main():
    with open(CORPUS, encoding="utf-8") as f:
        corpus = json.load(f)
    fuzz = fuzz_strings()
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, (env, file) in MODELS.items():
        path = model_path(env, file)
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

        digests = {}
        for special in (True, False):
            h = hashlib.sha256()
            for tid in range(n_vocab):
                p = piece(vocab, tid, special)
                h.update(struct.pack("<I", len(p)))
                h.update(p)
            digests["special" if special else "plain"] = h.hexdigest()

        def opt(x):
            return None if x < 0 else x

        cases = []
        for s in corpus:
            b = s.encode("utf-8")
            ids = tokenize(vocab, b, True, True)
            ids_plain = tokenize(vocab, b, True, False)
            # Cross-check the high-level API gives the same ids.
            assert llm.tokenize(b, add_bos=True, special=True) == ids
            assert llm.tokenize(b, add_bos=True, special=False) == ids_plain
            cases.append({
                "text": s,
                "ids": ids,
                "ids_plain": ids_plain,
                "detok": as_json_bytes(detokenize(vocab, ids, True, True)),
                "detok_plain": as_json_bytes(detokenize(vocab, ids_plain, False, False)),
                "roundtrip": llm.detokenize(ids) == b,
            })

        fuzz_cases = []
        for s in fuzz:
            b = s.encode("utf-8")
            fuzz_cases.append({
                "text": s,
                "ids": tokenize(vocab, b, True, True),
                "ids_plain": tokenize(vocab, b, True, False),
            })

        out = {
            "model_file": file,
            "llama_cpp_python": llama_cpp.__version__,
            "vocab_size": n_vocab,
            "bos": opt(llama_cpp.llama_vocab_bos(vocab)),
            "eos": opt(llama_cpp.llama_vocab_eos(vocab)),
            "eot": opt(llama_cpp.llama_vocab_eot(vocab)),
            "eog": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            "pieces_sha256": digests,
            "cases": cases,
            "fuzz": fuzz_cases,
        }
        dest = os.path.join(OUT_DIR, f"{name}.json")
        with open(dest, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=None, separators=(",", ":"))
            f.write("\n")
        print(f"{dest}: {len(cases)} cases, {len(fuzz_cases)} fuzz cases")

    # Other BPE pre-tokenizers, on the SmolLM2 vocabulary.
    env, file = MODELS["smollm2"]
    texts = corpus + fuzz
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_VARIANTS:
            dest = os.path.join(tmp, f"v_{pre}.gguf")
            write_variant(model_path(env, file), dest, "tokenizer.ggml.pre", pre)
            llm = llama_cpp.Llama(model_path=dest, vocab_only=True, verbose=False)
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            rows = []
            for s in texts:
                ids = tokenize(vocab, s.encode("utf-8"), True, True)
                rows.append({"ids": ids, "detok_plain": as_json_bytes(detokenize(vocab, ids, False, False))})
            variants["" if pre is None else pre] = rows
            del llm
    dest = os.path.join(OUT_DIR, "smollm2_pre_variants.json")
    with open(dest, "w", encoding="utf-8") as f:
        json.dump({"texts": texts, "variants": variants}, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{dest}: {len(variants)} variants x {len(texts)} strings")

    # llama.cpp recognises Phi-3 by general.name and makes its special tokens strip the
    # whitespace after them; checked on the Gemma 3 vocabulary renamed.
    env, file = MODELS["gemma3"]
    extra = [s + tail for s in ["<start_of_turn>", "<end_of_turn>", "<bos>", "<table>", "</s>", "<unk>", "<s>", "<|endoftext|>"]
             for tail in [" x", "\n x", "\t\n", "  ", "x"]]
    texts = corpus + fuzz + extra
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(tmp, "phi3_name.gguf")
        # llama.cpp's Phi-3 rule needs a <|endoftext|> token, which Gemma lacks.
        write_variant(model_path(env, file), dest, "general.name", PHI3_NAME, PHI3_RENAME)
        llm = llama_cpp.Llama(model_path=dest, vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        rows = [tokenize(vocab, s.encode("utf-8"), True, True) for s in texts]
        rows_plain = [tokenize(vocab, s.encode("utf-8"), True, False) for s in texts]
        del llm
    dest = os.path.join(OUT_DIR, "gemma3_phi3_name.json")
    with open(dest, "w", encoding="utf-8") as f:
        json.dump({"name": PHI3_NAME, "rename": {str(k): v for k, v in PHI3_RENAME.items()}, "texts": texts, "ids": rows, "ids_plain": rows_plain},
                  f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{dest}: {len(texts)} strings")


if __name__ == "__main__":
    main()
