"""The official Python clients (PyPI `ollama` and `openai`) against an EMBODIOS server.

Either starts `embodios serve` on a free loopback port with the given model, or (with
`--url`) talks to a server already running, such as the kernel behind QEMU's hostfwd.
Checks that both clients list the model, complete chats (whole and streamed), that the
greedy texts equal the host CLI's on the same GGUF file (`embodios run --temp 0` for
`/api/generate` and `/v1/completions`, `embodios chat --temp 0` for the chats: the same
engine the kernel's console runs), that an unknown model is the client's not-found error,
and that the bearer token is enforced.

usage: python python_clients.py --bin target/release/embodios --model SmolLM2.gguf
       python python_clients.py --bin ... --model tiny.gguf --url http://127.0.0.1:PORT \
           --model-name tiny [--api-key KEY] [--tokens 2]
Exit status 0 when every check passes; the first failure is printed with a traceback.
"""

import argparse
import json
import pathlib
import subprocess
import sys

import ollama
import openai

GENERATE_PROMPT = "The capital of France is"
OLLAMA_CHAT = "What is the capital of France?"
OPENAI_CHAT = "Name a colour."
COMPLETION_PROMPT = "1, 2, 3,"


def start(binary, model, *extra):
    proc = subprocess.Popen(
        [binary, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    prefix = "embodios serve: listening on "
    for line in proc.stderr:
        if line.startswith(prefix):
            return proc, line[len(prefix):].strip()
    proc.kill()
    raise SystemExit("embodios serve exited before listening")


class Reference:
    """Greedy texts from the host CLI on the same model file."""

    def __init__(self, binary, model, tokens):
        self.binary, self.model, self.tokens = binary, model, tokens

    def run(self, prompt):
        out = subprocess.run(
            [self.binary, "run", "-m", self.model, "-p", prompt, "-n", str(self.tokens),
             "--temp", "0", "--json"],
            check=True, capture_output=True, text=True, timeout=600,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["text"]

    def chat(self, message):
        # `embodios chat` prints each reply on stdout followed by one newline.
        out = subprocess.run(
            [self.binary, "chat", "-m", self.model, "-n", str(self.tokens), "--temp", "0"],
            input=message + "\n/exit\n", check=True, capture_output=True, text=True,
            timeout=600,
        )
        assert out.stdout.endswith("\n"), out.stdout
        return out.stdout[:-1]


def check_ollama(url, name, ref, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else None
    client = ollama.Client(host=url, timeout=600, headers=headers)
    names = [m.model for m in client.list().models]
    assert name in names, names
    assert client.show(name).details.family == "llama"
    options = {"temperature": 0, "num_predict": ref.tokens}

    gen = client.generate(model=name, prompt=GENERATE_PROMPT, options=options)
    want = ref.run(GENERATE_PROMPT)
    assert gen.response == want, (gen.response, want)
    assert gen.done and gen.eval_count > 0 and gen.prompt_eval_count > 0

    messages = [{"role": "user", "content": OLLAMA_CHAT}]
    want = ref.chat(OLLAMA_CHAT)
    whole = client.chat(model=name, messages=messages, options=options)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.message.content == want, (whole.message.content, want)
    parts = list(client.chat(model=name, messages=messages, options=options, stream=True))
    assert parts[-1].done and parts[-1].eval_count > 0
    streamed = "".join(p.message.content for p in parts)
    assert streamed == want, (streamed, want)

    try:
        client.chat(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 404, e
    print(f"ollama: {len(parts)} stream parts; chat {want!r} as the host CLI's")


def check_openai(url, name, ref, key="unused"):
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=600, max_retries=0)
    assert name in [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": OPENAI_CHAT}]
    want = ref.chat(OPENAI_CHAT)
    whole = client.chat.completions.create(
        model=name, messages=messages, max_tokens=ref.tokens, temperature=0, seed=1
    )
    text = whole.choices[0].message.content
    assert text == want, (text, want)
    assert whole.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=name, messages=messages, max_tokens=ref.tokens, temperature=0, seed=1,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == want, (streamed, want)
    comp = client.completions.create(
        model=name, prompt=COMPLETION_PROMPT, max_tokens=ref.tokens, temperature=0
    )
    want_comp = ref.run(COMPLETION_PROMPT)
    assert comp.choices[0].text == want_comp, (comp.choices[0].text, want_comp)
    assert comp.choices[0].finish_reason in ("stop", "length")
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError:
        pass
    print(f"openai: chat {text!r} as the host CLI's")


def check_key_refused(url, name, key):
    """Without the token, or with a wrong one, both clients get a 401."""
    try:
        openai.OpenAI(base_url=url + "/v1", api_key="wrong" + key, max_retries=0,
                      timeout=60).models.list()
        raise AssertionError("openai: wrong key accepted")
    except openai.AuthenticationError:
        pass
    for headers in (None, {"Authorization": "Bearer wrong" + key}):
        try:
            ollama.Client(host=url, timeout=60, headers=headers).show(name)
            raise AssertionError(f"ollama: accepted with headers {headers}")
        except ollama.ResponseError as e:
            assert e.status_code == 401, e
    print("bearer token: refused without it and with a wrong one")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the host CLI (for the reference texts)")
    ap.add_argument("--model", required=True, help="the GGUF file the server runs")
    ap.add_argument("--url", help="a running server (default: start embodios serve)")
    ap.add_argument("--model-name", help="the server's name for the model")
    ap.add_argument("--api-key", help="the running server's bearer token")
    ap.add_argument("--tokens", type=int, default=8, help="tokens per generation")
    a = ap.parse_args()
    name = a.model_name or pathlib.Path(a.model).stem
    ref = Reference(a.bin, a.model, a.tokens)

    if a.url:
        url = a.url.rstrip("/")
        if a.api_key:
            check_key_refused(url, name, a.api_key)
        check_ollama(url, name, ref, key=a.api_key)
        check_openai(url, name, ref, key=a.api_key or "unused")
        print("python clients: all checks passed")
        return 0

    proc, url = start(a.bin, a.model)
    try:
        check_ollama(url, name, ref)
        check_openai(url, name, ref)
    finally:
        proc.kill()
        proc.wait()

    proc, url = start(a.bin, a.model, "--api-key", "sekrit")
    try:
        check_key_refused(url, name, "sekrit")
        check_openai(url, name, ref, key="sekrit")
    finally:
        proc.kill()
        proc.wait()
    print("python clients: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
