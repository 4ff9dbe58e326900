#!/usr/bin/env bash
# Two builds of `model_decode` (and optionally llama.cpp) alternated in one run on the 4-layer
# V2-Lite-shaped checkpoints: what a kernel change is worth when the machine's memory
# bandwidth drifts between minutes (a shared VM's does, by up to 2x), so that a ratio taken
# across separate runs means little. Each round runs every (build, case) once, in the same
# order; the table gives each case's median decode tok/s per build and the per-round ratio
# NEW / BASE (its median and range).
#
# Usage: BASE=path/to/old/model_decode benchmarks/model_cpu/ab.sh
#   (build the base first, e.g. `git worktree add /tmp/base <commit>` and
#   `cargo build --release -p benchmarks --bin model_decode` there, or copy the binary aside
#   before rebuilding)
# Environment:
#   BASE        the baseline model_decode binary (required); NEW defaults to this tree's
#               release build
#   CASES       "label:checkpoint-dir:extra args" entries separated by ';' (default: bf16,
#               bf16 with --bf16-activations, fp8)
#   ROUNDS      rounds (default 3); PROMPT / NEW_TOKENS: decode NEW_TOKENS after PROMPT
#               tokens (default 512 / 128)
#   LLAMA_BIN / GGUF_DIR  as in formats.sh: llama-bench on ckpt-bf16.gguf and ckpt-Q8_0.gguf
#               joins every round (LLAMA_QUANTS: other GGUF types to run, e.g. "Q8_0 Q4_K_M")
#   A flag as the difference: NEW (or BASE) may be a script that runs model_decode with it,
#               e.g. `exec .../model_decode "$@" --head q8`
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/results"
mkdir -p "$out"
# shellcheck source=common.sh
. "$here/common.sh"
build_and_checkpoint
fp8_checkpoint
: "${BASE:?set BASE to the baseline model_decode binary}"
NEW="${NEW:-$bin/model_decode}"
CASES="${CASES:-bf16:$ckpt:;bf16-act:$ckpt:--bf16-activations;fp8:$fp8:}"
ROUNDS="${ROUNDS:-3}"
PROMPT="${PROMPT:-512}"
NEW_TOKENS="${NEW_TOKENS:-128}"
res="$out/ab.jsonl"
: > "$res"
print_machine
IFS=';' read -r -a cases <<< "$CASES"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round"
    for c in "${cases[@]}"; do
        IFS=':' read -r label dir extra <<< "$c"
        for build in base new; do
            exe="$BASE"
            [ "$build" = new ] && exe="$NEW"
            # shellcheck disable=SC2086
            line=$("$exe" --model "$dir" $extra --prompt-len "$PROMPT" --new-tokens "$NEW_TOKENS" \
                2>/dev/null | tail -n 1)
            echo "$line" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); \
r.update(round=$round, case='$label', build='$build'); print(json.dumps(r))" | tee -a "$res" \
                | cut -c1-160
        done
    done
    if [ -n "${LLAMA_BIN:-}" ] && [ -n "${GGUF_DIR:-}" ]; then
        for q in ${LLAMA_QUANTS:-bf16 Q8_0}; do
            [ -f "$GGUF_DIR/ckpt-$q.gguf" ] || continue
            "$LLAMA_BIN/llama-bench" -m "$GGUF_DIR/ckpt-$q.gguf" -t 2 -p 0 -n "$NEW_TOKENS" \
                -d "$PROMPT" -r 1 -o jsonl 2>/dev/null | python3 -c "import json,sys; \
r=json.loads(sys.stdin.readline()); print(json.dumps(dict(round=$round, case='llama.cpp $q', \
build='llama.cpp', decode_tok_s=r['avg_ts'])))" | tee -a "$res"
        done
    fi
done
echo "== load after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$res" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = list(dict.fromkeys(r["case"] for r in rows))
print("| case | base decode tok/s | new decode tok/s | new / base (median, range) |")
print("|---|---:|---:|---:|")
for c in cases:
    by = {b: {r["round"]: r["decode_tok_s"] for r in rows if r["case"] == c and r["build"] == b}
          for b in ("base", "new", "llama.cpp")}
    if by["llama.cpp"]:
        print(f"| {c} | | {statistics.median(by['llama.cpp'].values()):.1f} "
              f"({min(by['llama.cpp'].values()):.1f}-{max(by['llama.cpp'].values()):.1f}) | |")
        continue
    ratios = [by["new"][k] / by["base"][k] for k in by["base"] if k in by["new"]]
    print(f"| {c} | {statistics.median(by['base'].values()):.1f} | "
          f"{statistics.median(by['new'].values()):.1f} | {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}) |")
PY
