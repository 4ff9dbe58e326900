#!/usr/bin/env bash
# Builds the Python module of the judge crate (crates/judge-py, `deepseek_judge`) with
# maturin in a virtual environment under target/, installs it, runs its test
# (crates/judge-py/tests/test_judge.py: the shared cases of cases.json and the TRL calling
# convention) and, unless --no-bench is given, measures throughput in cases/s: the Rust
# batch (`reward_throughput` example) and the Python module on one thread and on all, and
# math-verify on the same cases when it can be pip-installed (its absence is reported, not
# an error). Prints the measurements as a Markdown table.
#
# Cases for the measurement: the 675 real long-CoT outputs in ../shared/data/real_outputs/
# when present, else the shared cases repeated. Exits nonzero when the build or a test
# fails. Needs python3 (with venv) and network access to PyPI (maturin, math-verify).
#
#   scripts/check-python.sh [--no-bench]
set -euo pipefail
cd "$(dirname "$0")/.."

MATURIN_VERSION=1.16.0
MATH_VERIFY_VERSION=0.9.0
bench=1
for arg in "$@"; do
    case "$arg" in
        --no-bench) bench=0 ;;
        *) echo "usage: $0 [--no-bench]" >&2; exit 2 ;;
    esac
done

work=target/check-python
# shellcheck source=lib/venv.sh
source scripts/lib/venv.sh
python_venv "$work" "maturin==$MATURIN_VERSION"

echo "== building deepseek_judge (maturin $MATURIN_VERSION, release)"
rm -rf "$work/wheels"
"$venv/bin/maturin" build --release --quiet -m crates/judge-py/Cargo.toml -i "$py" -o "$work/wheels"
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$work"/wheels/*.whl

echo "== crates/judge-py/tests/test_judge.py"
if "$py" -c "import pytest" 2>/dev/null; then
    "$py" -m pytest -q crates/judge-py/tests/test_judge.py
else
    "$py" crates/judge-py/tests/test_judge.py
fi

[ "$bench" = 1 ] || exit 0

echo "== throughput"
cases=$work/bench.jsonl
"$py" - "$cases" <<'PY'
import json, os, sys
real = "../shared/data/real_outputs/skythought_math.jsonl"
out = open(sys.argv[1], "w", encoding="utf-8")
if os.path.exists(real):
    for line in open(real, encoding="utf-8"):
        r = json.loads(line)
        out.write(json.dumps({"kind": r["kind"], "gold": r["gold"], "response": r["response"]}) + "\n")
else:
    shared = json.load(open("crates/judge-py/tests/cases.json", encoding="utf-8"))["cases"]
    for _ in range(50):
        for c in shared:
            out.write(json.dumps({"kind": c.get("kind", "math"), "gold": c["gold"], "response": c["response"]}) + "\n")
PY
cargo run --release --quiet -p judge --features parallel --example reward_throughput -- "$cases" 3 > "$work/rust.json"
if "$py" -m pip install --quiet --disable-pip-version-check "math-verify==$MATH_VERIFY_VERSION" >"$work/math-verify-install.log" 2>&1; then
    echo "math-verify $MATH_VERIFY_VERSION installed"
else
    echo "math-verify could not be installed (see $work/math-verify-install.log): not measured"
fi
"$py" crates/judge-py/tests/bench.py "$cases" "$work/rust.json"
