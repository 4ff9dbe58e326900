#!/usr/bin/env python3
"""Judges cases.jsonl with HF math-verify: verdicts to mv.jsonl, throughput to stdout.

math-verify is given the gold wrapped in $...$ (its documented usage) and the text after
the last </think> (no answer when the think block is unterminated), so that both graders
see the same answer section.
"""
import json
import multiprocessing as mp
import sys
import time

from math_verify import parse, verify


def judge(case):
    resp = case["response"]
    if "</think>" in resp:
        resp = resp.rsplit("</think>", 1)[1]
    elif "<think>" in resp:
        return False, None
    try:
        gold = parse("$" + case["gold"] + "$")
        pred = parse(resp)
        return bool(verify(gold, pred)), str(pred[1]) if len(pred) > 1 else (str(pred[0]) if pred else None)
    except Exception as e:  # math-verify raises on some inputs
        return False, f"error: {e}"


def judge_ok(case):
    return judge(case)[0]


def main():
    cases = [json.loads(l) for l in open(sys.argv[1])]
    out = sys.argv[2]
    t = time.perf_counter()
    verdicts = [judge(c) for c in cases]
    single = len(cases) / (time.perf_counter() - t)
    with open(out, "w") as f:
        for c, (ok, ex) in zip(cases, verdicts):
            f.write(json.dumps({"id": c["id"], "correct": ok, "extracted": ex}) + "\n")
    procs = mp.cpu_count()
    with mp.Pool(procs) as pool:
        t = time.perf_counter()
        pool.map(judge_ok, cases, chunksize=16)
        allc = len(cases) / (time.perf_counter() - t)
    print(json.dumps({"cases": len(cases), "single_thread_cases_per_s": single,
                      "all_cores_cases_per_s": allc, "processes": procs}))


if __name__ == "__main__":
    main()
