#!/usr/bin/env python3
"""Builds cases.jsonl: MATH-500 solutions judged against their own answer (expected
correct) and against a far-away problem's answer (expected wrong, unless the two answers
are the same string), followed by the hard cases of hard_cases.jsonl.

Each line: {"id", "kind": "math", "gold", "response", "expected", "group"}.
"""
import json
import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
data = here.parent.parent.parent / "shared" / "data" / "math500.jsonl"
out = here / "cases.jsonl"

rows = []
if data.exists():
    rows = [json.loads(l) for l in data.open()]
else:
    print(f"note: {data} not found; only hard cases are used", file=sys.stderr)

cases = []
n = len(rows)
for i, r in enumerate(rows):
    resp = "<think>\nLet me work through it.\n</think>\n" + r["solution"]
    cases.append({"id": f"self-{i}", "kind": "math", "gold": r["answer"], "response": resp,
                  "expected": True, "group": "math500-self"})
    other = rows[(i + n // 2 + 1) % n]["answer"]
    if other.replace(" ", "") != r["answer"].replace(" ", ""):
        cases.append({"id": f"cross-{i}", "kind": "math", "gold": other, "response": resp,
                      "expected": False, "group": "math500-cross"})
for l in (here / "hard_cases.jsonl").open():
    c = json.loads(l)
    c.setdefault("kind", "math")
    c["group"] = "hard"
    cases.append(c)
with out.open("w") as f:
    for c in cases:
        f.write(json.dumps(c) + "\n")
print(f"wrote {len(cases)} cases to {out}")
