#!/usr/bin/env python3
"""Prints agreement with the expected labels per group and the hard-case table."""
import json
import sys

cases = [json.loads(l) for l in open(sys.argv[1])]
ours = {json.loads(l)["id"]: json.loads(l) for l in open(sys.argv[2])}
mv = {json.loads(l)["id"]: json.loads(l) for l in open(sys.argv[3])}

groups = {}
for c in cases:
    g = groups.setdefault(c["group"], [0, 0, 0])
    g[0] += 1
    g[1] += ours[c["id"]]["correct"] == c["expected"]
    g[2] += mv[c["id"]]["correct"] == c["expected"]
print("| group | cases | eval agrees with label | math-verify agrees with label |")
print("|---|---:|---:|---:|")
for name, (n, a, b) in groups.items():
    print(f"| {name} | {n} | {a} ({100*a/n:.1f}%) | {b} ({100*b/n:.1f}%) |")
print()
print("| hard case | gold | answer | expected | eval | math-verify | weak spot |")
print("|---|---|---|---|---|---|---|")
for c in cases:
    if c["group"] != "hard":
        continue
    ans = c["response"].rsplit("</think>", 1)[1].strip() if "</think>" in c["response"] else "(unterminated think)"
    o, m = ours[c["id"]]["correct"], mv[c["id"]]["correct"]
    mark = lambda v: ("**" + str(v).lower() + "**") if v != c["expected"] else str(v).lower()
    print(f"| {c['id'][5:]} | `{c['gold']}` | `{ans}` | {str(c['expected']).lower()} | {mark(o)} | {mark(m)} | {c['why']} |")
misses = {k: sum(1 for c in cases if c["group"] == "hard" and d[c["id"]]["correct"] != c["expected"]) for k, d in (("eval", ours), ("math-verify", mv))}
print()
print(f"hard-case disagreements with the expected verdict: eval {misses['eval']}, math-verify {misses['math-verify']}")
