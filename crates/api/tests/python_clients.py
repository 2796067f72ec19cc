"""The official Python clients (PyPI `ollama` and `openai`) against `embodios serve`.

Starts the server on a free loopback port with the given model, then checks that both
clients list the model, complete chats (whole and streamed, with the same greedy text),
that greedy `/api/generate` equals `embodios run --temp 0`, that an unknown model is the
client's not-found error, and that the bearer token is enforced.

usage: python python_clients.py --bin target/release/embodios --model SmolLM2.gguf
Exit status 0 when every check passes; the first failure is printed with a traceback.
"""

import argparse
import json
import pathlib
import subprocess
import sys

import ollama
import openai

TOKENS = 8


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


def greedy_run(binary, model, prompt):
    out = subprocess.run(
        [binary, "run", "-m", model, "-p", prompt, "-n", str(TOKENS), "--temp", "0", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["text"]


def check_ollama(url, name, reference, prompt):
    client = ollama.Client(host=url, timeout=600)
    names = [m.model for m in client.list().models]
    assert name in names, names
    assert client.show(name).details.family == "llama"
    options = {"temperature": 0, "num_predict": TOKENS}

    gen = client.generate(model=name, prompt=prompt, options=options)
    assert gen.response == reference, (gen.response, reference)
    assert gen.done and gen.eval_count > 0 and gen.prompt_eval_count > 0

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat(model=name, messages=messages, options=options)
    assert whole.message.role == "assistant" and whole.message.content
    parts = list(client.chat(model=name, messages=messages, options=options, stream=True))
    assert parts[-1].done and parts[-1].eval_count > 0
    streamed = "".join(p.message.content for p in parts)
    assert streamed == whole.message.content, (streamed, whole.message.content)

    try:
        client.chat(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 404, e
    print(f"ollama {len(parts)} stream parts; chat: {whole.message.content!r}")


def check_openai(url, name, key="unused"):
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=600, max_retries=0)
    assert name in [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(
        model=name, messages=messages, max_tokens=TOKENS, temperature=0, seed=1
    )
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=name, messages=messages, max_tokens=TOKENS, temperature=0, seed=1, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text, (streamed, text)
    comp = client.completions.create(model=name, prompt="1, 2, 3,", max_tokens=TOKENS, temperature=0)
    assert comp.choices[0].text and comp.choices[0].finish_reason in ("stop", "length")
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError:
        pass
    print(f"openai chat: {text!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    name = pathlib.Path(a.model).stem
    prompt = "The capital of France is"
    reference = greedy_run(a.bin, a.model, prompt)

    proc, url = start(a.bin, a.model)
    try:
        check_ollama(url, name, reference, prompt)
        check_openai(url, name)
    finally:
        proc.kill()
        proc.wait()

    proc, url = start(a.bin, a.model, "--api-key", "sekrit")
    try:
        try:
            check_openai(url, name, key="wrong")
            raise AssertionError("wrong key accepted")
        except openai.AuthenticationError:
            pass
        check_openai(url, name, key="sekrit")
    finally:
        proc.kill()
        proc.wait()
    print("python clients: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
