#!/usr/bin/env bash
# Judging throughput and agreement: this crate's engine vs HF math-verify, same case file.
# Usage (from the repository root): benchmarks/eval_judge/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q math-verify==0.9.0
fi
python3 make_cases.py
echo "== math-verify $(.venv/bin/pip show math-verify | awk '/^Version/{print $2}')"
.venv/bin/python run_math_verify.py cases.jsonl mv.jsonl
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-eval}"
cargo build --release -q -p eval
echo "== eval (in-process, --repeat 20)"
cargo run --release -q -p eval -- bench --input "$here/cases.jsonl" --repeat 20
cargo run --release -q -p eval -- judge --input "$here/cases.jsonl" --out "$here/ours.jsonl"
cd "$here"
python3 compare.py cases.jsonl ours.jsonl mv.jsonl
