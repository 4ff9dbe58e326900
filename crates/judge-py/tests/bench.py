"""Throughput of deepseek_judge (and math-verify when installed) on one case file, as a
Markdown table. Used by scripts/check-python.sh:

    python bench.py CASES.jsonl [RUST_RESULT.json]

CASES.jsonl holds {"kind", "gold", "response"} lines; RUST_RESULT.json is the line printed
by `cargo run --release -p judge --features parallel --example reward_throughput`.
"""

import json
import multiprocessing
import os
import sys
import time

import deepseek_judge as dj


def rate(n, f, repeat=3):
    t = time.perf_counter()
    for _ in range(repeat):
        out = f()
    return n * repeat / (time.perf_counter() - t), out


def math_verify_one(case):
    """math-verify's verdict on one (gold, response) pair; a failure to parse is wrong."""
    from math_verify import parse, verify

    g, r = case
    try:
        return bool(verify(parse(str(g) if "$" in str(g) else f"${g}$"), parse(r)))
    except Exception:
        return False


def main():
    cases = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
    rust = None
    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        with open(sys.argv[2], encoding="utf-8") as f:
            rust = json.loads(f.read().strip().splitlines()[-1])
    responses = [c["response"] for c in cases]
    golds = [c["gold"] for c in cases]
    kinds = [c.get("kind", "math") for c in cases]
    n = len(cases)
    threads = os.cpu_count()
    rows = []
    if rust:
        rows.append(("Rust `score_batch` (all rewards)", "1", rust["one_thread_cases_per_s"], ""))
        rows.append(("Rust `score_batch` (all rewards)", str(rust["threads"]), rust["all_threads_cases_per_s"], ""))
    one, r1 = rate(n, lambda: dj.rewards(responses, golds, kind=kinds, threads=1))
    rows.append(("Python `deepseek_judge.rewards`", "1", one, ""))
    allr, r2 = rate(n, lambda: dj.rewards(responses, golds, kind=kinds))
    assert r1 == r2, "results must not depend on the thread count"
    rows.append(("Python `deepseek_judge.rewards`", str(threads), allr, ""))
    acc, ours = rate(n, lambda: dj.accuracy_reward(responses, golds, kind=kinds, threads=1))
    ours_correct = sum(1 for x in ours if x == 1.0)
    rows.append(("Python `deepseek_judge.accuracy_reward`", "1", acc, f"{ours_correct}/{n} correct"))
    acc_all, _ = rate(n, lambda: dj.accuracy_reward(responses, golds, kind=kinds))
    rows.append(("Python `deepseek_judge.accuracy_reward`", str(threads), acc_all, ""))
    try:
        import math_verify
    except ImportError:
        math_verify = None
    if math_verify is not None:
        math_cases = [(g, r) for g, r, k in zip(golds, responses, kinds) if k == "math"]
        mv_rate, mv_out = rate(len(math_cases), lambda: [math_verify_one(c) for c in math_cases],
                               repeat=1)

        def mv_pool():
            # math-verify is single-threaded Python: all cores means one process per core.
            with multiprocessing.Pool(threads) as pool:
                return pool.map(math_verify_one, math_cases, chunksize=8)

        mv_all_rate, mv_all_out = rate(len(math_cases), mv_pool, repeat=1)
        assert mv_out == mv_all_out, "math-verify's verdicts must not depend on the process count"
        try:
            from importlib.metadata import version as dist_version
            version = dist_version("math-verify")
        except Exception:
            version = ""
        what = f"math-verify {version} `verify(parse(gold), parse(response))`"
        rows.append((what, "1", mv_rate, f"{sum(mv_out)}/{len(math_cases)} correct"))
        rows.append((what, f"{threads} processes", mv_all_rate, ""))
    print(f"Cases: {n} from {os.path.basename(sys.argv[1])} "
          f"(mean {sum(map(len, responses)) / max(n, 1) / 1000:.1f} KB per response); {threads} CPUs.\n")
    print("| what | threads | cases/s | note |")
    print("|---|---:|---:|---|")
    for what, t, r, note in rows:
        print(f"| {what} | {t} | {r:,.0f} | {note} |")
    if math_verify is None:
        print("\nmath-verify is not installed (pip install failed or was skipped): not measured.")


if __name__ == "__main__":
    main()
