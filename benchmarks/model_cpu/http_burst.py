#!/usr/bin/env python3
"""A burst of concurrent streamed `/v1/completions` requests against an OpenAI-compatible
server (ours, `model serve`; llama.cpp's `llama-server -np N`): the same client, the same
prompts, the same measurements for both.

Each of the `c` requests sends a distinct `--prompt-len`-token prompt as token ids (the
OpenAI API allows them; the benchmark checkpoint's vocabulary is random), `max_tokens`
`--new-tokens`, `ignore_eos` (vLLM's and llama-server's extension) and `stream: true`, all
`c` at once. Measured from the client, per request: time to the first streamed token, the
arrival time of every token, and the end. Reported, one JSON line per burst:
- `ttft_mean` / `ttft_max`: seconds from submission to a request's first token (waiting for
  the other prompts' prefills included);
- `decode_tok_s`: tokens that arrived once every stream had its first token, over the time
  from that moment to the end of the last stream (every stream decoding in every step, as
  llama-batched-bench's S_TG; a server that admits fewer than `c` streams at once shows it
  here);
- `e2e_tok_s`: all `c · --new-tokens` tokens over the burst's wall time, prefills included.

Tokens are counted as streamed chunks: every chunk before the finishing one, and that one
when it carries text or token ids. `model serve` sends one chunk per token; llama-server
sometimes a few fewer (0.1-0.5% in a measured run). The sum of the final `usage` counts is
printed beside the client's count as the check.

Usage: http_burst.py --url http://127.0.0.1:8000 --concurrency 1,4,16 [--prompt-len 512]
       [--new-tokens 128] [--vocab 102400] [--model NAME] [--label ours] [--warmup 1]
Standard library only.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse


def prompt(i, length, vocab):
    """Deterministic token ids for request i: benchmarks/src/bin/engine.rs's xorshift, but drawn
    below the top 1000 ids (so not the engine benchmark's prompts)."""
    mask = (1 << 64) - 1
    state = (0x9E3779B97F4A7C15 ^ (i * 0x2545F4914F6CDD1D)) & mask
    out = []
    for _ in range(length):
        state ^= (state << 13) & mask
        state ^= state >> 7
        state ^= (state << 17) & mask
        # Past the special ids at the top of DeepSeek's vocabulary, which llama-server's
        # detokeniser treats apart.
        out.append(state % (vocab - 1000))
    return out


def one_request(url, body, t0, result):
    """Stream one completion; record first-token, per-token and end times (from t0)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=3600)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            result["error"] = f"HTTP {resp.status}: {resp.read()[:300]!r}"
            return
        times, usage = [], None
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                # A chunk before the finish is one token (its piece may be empty: text held
                # back for a whole UTF-8 character); the finishing chunk only if it has one.
                if choice.get("finish_reason") is None or choice.get("text") \
                        or choice.get("token_ids"):
                    times.append(time.perf_counter() - t0)
        result["times"] = times
        result["end"] = time.perf_counter() - t0
        result["usage"] = usage
    except Exception as e:  # noqa: BLE001 - reported, not raised: the burst goes on
        result["error"] = repr(e)
    finally:
        conn.close()


def burst(args, c):
    bodies = [{
        "model": args.model,
        "prompt": prompt(i, args.prompt_len, args.vocab),
        "max_tokens": args.new_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    } for i in range(c)]
    results = [{} for _ in range(c)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one_request, args=(args.url, b, t0, r))
               for b, r in zip(bodies, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"label": args.label, "concurrency": c, "errors": errors[:3]}
    counts = [len(r["times"]) for r in results]
    ttft = [r["times"][0] for r in results if r["times"]]
    all_started = max(ttft)
    end = max(r["end"] for r in results)
    after = sum(1 for r in results for t in r["times"] if t > all_started)
    usage = [r["usage"]["completion_tokens"] for r in results if r.get("usage")]
    return {
        "label": args.label,
        "concurrency": c,
        "tokens": sum(counts),
        "tokens_min": min(counts),
        "usage_completion_tokens": sum(usage) if usage else None,
        "ttft_mean": sum(ttft) / len(ttft),
        "ttft_max": all_started,
        "decode_tok_s": after / (end - all_started) if end > all_started else None,
        "e2e_tok_s": sum(counts) / wall,
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=102400)
    ap.add_argument("--model", default="model")
    ap.add_argument("--label", default="server")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed short requests first (a server that maps its weights "
                         "lazily pays the page faults there, not in the first burst)")
    args = ap.parse_args()
    for i in range(args.warmup):
        r = {}
        one_request(args.url, {"model": args.model, "prompt": prompt(10**6 + i, 16, args.vocab),
                               "max_tokens": 4, "ignore_eos": True, "stream": True},
                    time.perf_counter(), r)
        if "error" in r:
            sys.exit(f"warm-up request failed: {r['error']}")
    for c in [int(x) for x in args.concurrency.split(",")]:
        print(json.dumps(burst(args, c)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
