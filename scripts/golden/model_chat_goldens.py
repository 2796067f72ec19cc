#!/usr/bin/env python3
"""Record llama.cpp's built-in chat-template rendering for the engine's chat tests.

Run with the llama-cpp-python venv:
    /root/.cache/embodios/venv-llama/bin/python scripts/golden/model_chat_goldens.py

For each template (llama.cpp built-in names, short marker strings written here that
exercise llama.cpp's detection, and SmolLM2's own template read from the model file) it
renders a conversation (system + two user turns + one assistant turn) through
`llama_chat_apply_template`, with and without the generation prompt, and writes
crates/engine/tests/golden/chat_templates.json.
"""
import ctypes
import json
import os
import sys

import llama_cpp
from gguf import GGUFReader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "engine", "tests", "golden", "chat_templates.json")
CACHE = os.environ.get("EMBODIOS_CACHE", os.path.expanduser("~/.cache/embodios"))

NAMES = [
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip",
    "mistral-v1", "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken",
    "phi3", "phi4", "falcon3", "zephyr", "glmedge", "gemma", "llama3",
]

# Minimal strings carrying the markers each family is recognised by (not real
# templates: they only need to steer the detection).
MARKERS = {
    "marker-chatml": "{{ '<|im_start|>' + message['role'] }}",
    "marker-llama2-sys": "{{ '[INST] <<SYS>>' }}",
    "marker-llama2-sys-bos": "{{ bos_token + '[INST] ' + '<<SYS>>' }}",
    "marker-llama2-strip": "{{ '[INST] ' + message['content'].strip() }}",
    "marker-llama2": "{{ '[INST] ' + message['content'] }}",
    "marker-mistral-v7": "{{ '[SYSTEM_PROMPT]' + '[INST]' }}",
    "marker-mistral-v1": "{{ ' [INST] ' + system_message }}",
    "marker-mistral-v3": "{{ '[AVAILABLE_TOOLS]' + '[INST]' }}",
    "marker-phi3": "{{ '<|user|>' + '<|end|>' + '<|assistant|>' }}",
    "marker-tinyllama": "{{ '<|user|>\\n' + message['content'] + eos_token }}{{ '<|assistant|>' }}",
    "marker-falcon3": "{{ '<|user|>' + '</s>' + '<|assistant|>' }}",
    "marker-zephyr": "{{ '<|user|>' + '<|endoftext|>' }}",
    "marker-gemma": "{{ '<start_of_turn>' + role }}",
    "marker-llama3": "{{ '<|start_header_id|>' + role + '<|end_header_id|>' }}",
}

CONVERSATION = [
    ("system", "  You are a terse assistant.  "),
    ("user", "What is the capital of France?"),
    ("assistant", " Paris. "),
    ("user", "And of Italy?\n"),
]


def render(tmpl: str, messages, add_ass: bool):
    arr = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, (role, content) in enumerate(messages):
        r, c = role.encode(), content.encode()
        keep += [r, c]
        arr[i].role = r
        arr[i].content = c
    n = llama_cpp.llama_chat_apply_template(tmpl.encode(), arr, len(messages), add_ass, None, 0)
    if n < 0:
        return None
    buf = ctypes.create_string_buffer(n + 1)
    llama_cpp.llama_chat_apply_template(tmpl.encode(), arr, len(messages), add_ass, buf, n + 1)
    return buf.raw[:n].decode("utf-8")


def main():
    smol = os.environ.get("EMBODIOS_MODEL_SMOLLM2_135M") or os.path.join(
        CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = GGUFReader(smol)
    field = reader.fields["tokenizer.chat_template"]
    smol_tmpl = bytes(field.parts[field.data[0]]).decode("utf-8")

    templates = [(n, n) for n in NAMES] + list(MARKERS.items()) + [("smollm2", smol_tmpl)]
    cases = []
    for label, tmpl in templates:
        for add_ass in (True, False):
            for msgs in (CONVERSATION, CONVERSATION[1:2]):
                out = render(tmpl, msgs, add_ass)
                cases.append({
                    "label": label,
                    "template": tmpl,
                    "messages": [{"role": r, "content": c} for r, c in msgs],
                    "add_generation_prompt": add_ass,
                    "expected": out,
                })
    with open(OUT, "w") as f:
        json.dump({"generator": "scripts/golden/model_chat_goldens.py",
                   "llama_cpp_python": llama_cpp.__version__, "cases": cases}, f, indent=1)
    print(f"wrote {OUT}: {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
