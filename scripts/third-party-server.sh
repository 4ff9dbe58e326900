#!/usr/bin/env bash
# `eval run --endpoint` against a third-party OpenAI-compatible server: HF `transformers serve`
# on a random-weight fixture checkpoint (tests/fixtures/v2_greedy) with the tiny byte-level
# tokenizer (tests/fixtures/tiny_tokenizer). The model writes noise, so this shows the run
# diagnostics firing where they should, and that nothing is graded correct out of noise:
#
#   - identical samples: transformers serve ignores `temperature` when the checkpoint has no
#     generation config asking for sampling, so the k samples of each problem are identical;
#   - token-limit hits: the task allows 48 tokens and the noise never ends on its own;
#   - degenerate responses: the byte-level noise decodes to U+FFFD and control characters;
#   - grading: GSM8K and MATH-500 answers taken from noise count for nothing.
#
# Not run by CI (it needs Python with torch and transformers 5.23 with its serving extras).
#
# Usage: scripts/third-party-server.sh [OUT_DIR]     (default: eval-out/third-party)
#   PYTHON     a python with torch, transformers==5.23 and its serving extras
#              (`pip install "transformers[serving]==5.23.0"`; default: python3)
#   DATA_DIR   folder with gsm8k_test.jsonl and math500.jsonl (default: ../shared/data;
#              `cargo run -p eval --features https -- data fetch gsm8k math500` writes them)
#   PORT       server port (default 8765)
#   PROBLEMS   problems per task (default 6); SAMPLES per problem (default 4)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-eval-out/third-party}
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-../shared/data}
PORT=${PORT:-8765}
PROBLEMS=${PROBLEMS:-6}
SAMPLES=${SAMPLES:-4}

for f in gsm8k_test.jsonl math500.jsonl; do
  [ -f "$DATA_DIR/$f" ] || { echo "missing $DATA_DIR/$f (set DATA_DIR)" >&2; exit 1; }
done

WORK=$(mktemp -d)
SERVER=
cleanup() {
  local rc=$?
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# The checkpoint folder transformers loads: the fixture's weights and config, the tiny
# tokenizer with its chat template. No generation_config.json, as with many random or
# converted checkpoints.
MODEL="$WORK/model"
mkdir -p "$MODEL"
cp tests/fixtures/v2_greedy/config.json tests/fixtures/v2_greedy/model*.safetensors* "$MODEL/"
cp tests/fixtures/tiny_tokenizer/tokenizer.json tests/fixtures/tiny_tokenizer/tokenizer_config.json "$MODEL/"

echo "== starting transformers serve on 127.0.0.1:$PORT ($MODEL)"
"$PYTHON" -m transformers.cli.transformers serve "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --device cpu --log-level warning > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health" > /dev/null || { cat "$WORK/server.log" >&2; exit 1; }

echo "== eval run --endpoint http://127.0.0.1:$PORT"
# The built-in tasks (their prompts, checkers and T=0.6), k samples, a 48-token budget.
cargo run -q -p eval -- run --task gsm8k --task math500 --samples "$SAMPLES" --limit "$PROBLEMS" \
  --max-tokens 48 --request-timeout 120 --endpoint "http://127.0.0.1:$PORT" --model "$MODEL" \
  --data-dir "$DATA_DIR" --concurrency 4 --retries 2 --out "$OUT"

echo
echo "== what was graded correct (nothing should be):"
python3 - "$OUT/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for t in r["tasks"]:
    d = t["diagnostics"]
    correct = [s for s in t["samples"] if s["correct"]]
    print(f'{t["name"]}: {t["problems"]} problems x {t["k"]} samples; correct {len(correct)}; '
          f'identical-sample problems {d["identical_problems"]}/{d["multi_sample_problems"]}; '
          f'truncated {d["truncated"]}/{d["finish_reason_known"]}; '
          f'degenerate: {d["repetition_loops"]} loops, {d["non_text"]} non-text of {d["responses"]}')
    for w in d["warnings"]:
        print("  WARN", w)
    for s in correct:
        print("  graded correct:", s["id"], s["sample"], repr(s["extracted"]))
sys.exit(1 if any(s["correct"] for t in r["tasks"] for s in t["samples"]) else 0)
EOF
