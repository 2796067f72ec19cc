"""A small load measurement for an EMBODIOS API server (host `embodios serve` or the
kernel behind QEMU's hostfwd): requests/s and generated tokens/s with 1, 4 and 16
clients at once, each sending greedy `/api/generate` requests, and the time to the first
streamed byte of a token (NDJSON line) when the server is otherwise idle.

usage: python load.py --url http://127.0.0.1:PORT --model NAME [--tokens 8]
       [--requests 32] [--clients 1,4,16] [--api-key KEY]
Standard library only; talks to 127.0.0.1 only. Prints one line per measurement.
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse


def connect(url, timeout):
    u = urllib.parse.urlparse(url)
    if u.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("load.py measures loopback servers only")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def headers(key):
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def generate(a, stream):
    body = json.dumps({"model": a.model, "prompt": "Once upon a time", "stream": stream,
                       "options": {"temperature": 0, "num_predict": a.tokens}})
    c = connect(a.url, a.timeout)
    t0 = time.monotonic()
    c.request("POST", "/api/generate", body, headers(a.api_key))
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()!r}")
    if not stream:
        v = json.loads(r.read())
        c.close()
        return v["eval_count"], None
    first = None
    count = 0
    for line in r:
        if first is None:
            first = time.monotonic() - t0
        v = json.loads(line)
        if v.get("done"):
            count = v["eval_count"]
    c.close()
    return count, first


def load(a, clients):
    per = max(1, a.requests // clients)
    tokens = [0] * clients
    errors = []

    def worker(i):
        for _ in range(per):
            try:
                tokens[i] += generate(a, False)[0]
            except Exception as e:  # reported below, the measurement is void
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = time.monotonic() - t0
    n = per * clients
    if errors:
        print(f"{clients:2} clients: {len(errors)} of {n} requests failed: {errors[0]}")
        return
    print(f"{clients:2} clients: {n} requests in {s:.1f} s: {n / s:.2f} requests/s, "
          f"{sum(tokens) / s:.1f} generated tokens/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--api-key")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    generate(a, False)  # loads the model, warms caches
    firsts = sorted(generate(a, True)[1] for _ in range(5))
    print(f"time to first streamed token: median {firsts[2] * 1000:.0f} ms "
          f"(min {firsts[0] * 1000:.0f}, max {firsts[-1] * 1000:.0f}) of 5")
    for c in (int(x) for x in a.clients.split(",")):
        load(a, c)


if __name__ == "__main__":
    main()
