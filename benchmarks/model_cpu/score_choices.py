"""Multiple-choice scoring against `model serve`, as lm-evaluation-harness's `local-completions`
sends it: per question one `/v1/completions` request whose `prompt` is the context followed by
each choice (token ids), with `echo`, `logprobs` 1 and `max_tokens` 1. Contexts and choices
are random token ids (seeded), so any checkpoint serves.

Prints one JSON line: questions, prompt tokens sent, seconds, prompt tokens per second, the
tokens the server reports as cached, and each choice's summed continuation log-probability
(what lm-eval compares), so that two runs can be checked against each other.

Usage: python3 score_choices.py URL MODEL [--questions 6] [--context 600] [--choices 4]
       [--vocab 1000] [--seed 0]
Standard library only.
"""

import argparse
import json
import random
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--context", type=int, default=600)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    sent = cached = 0
    sums = []
    start = time.time()
    for _ in range(a.questions):
        context = [rng.randrange(1, a.vocab) for _ in range(a.context)]
        choices = [
            [rng.randrange(1, a.vocab) for _ in range(rng.randrange(2, 7))]
            for _ in range(a.choices)
        ]
        prompts = [context + c for c in choices]
        out = post(
            a.url.rstrip("/") + "/v1/completions",
            {
                "model": a.model,
                "prompt": prompts,
                "max_tokens": 1,
                "echo": True,
                "logprobs": 1,
                "temperature": 0,
            },
        )
        sent += sum(len(p) for p in prompts)
        details = out["usage"].get("prompt_tokens_details") or {}
        cached += details.get("cached_tokens") or 0
        for choice, c in zip(sorted(out["choices"], key=lambda c: c["index"]), choices):
            lps = choice["logprobs"]["token_logprobs"]
            sums.append(sum(lps[a.context : a.context + len(c)]))
    seconds = time.time() - start
    print(
        json.dumps(
            {
                "questions": a.questions,
                "prompt_tokens": sent,
                "seconds": round(seconds, 2),
                "prompt_tok_s": round(sent / seconds, 1),
                "cached_tokens": cached,
                "choice_logprobs": sums,
            }
        )
    )


if __name__ == "__main__":
    main()
