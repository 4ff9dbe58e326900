#!/usr/bin/env bash
# Prefill at several prompt lengths and decode after them (issue 14): this workspace's `model`
# crate vs HF transformers 5.23 (bf16) vs llama.cpp (bf16 GGUF), on the same random
# V2-Lite-shaped 4-layer checkpoint, in the same run, with each process's peak RSS
# (`/usr/bin/time`). Prints a Markdown table.
#
# Usage: benchmarks/model_cpu/long_context.sh
# Environment:
#   PROMPTS        prompt lengths                   (default "512 2048 8192")
#   NEW_TOKENS     tokens generated after each prompt (default 32: decode at that context)
#   PYTHON         a python with torch and transformers==5.23.0 (default: run.sh's .venv,
#                  made on first use); PYTHONPATH passes through. HF_SKIP=1 skips HF.
#   LLAMA_BENCH    llama.cpp's llama-bench binary, and
#   GGUF           the checkpoint converted to a bf16 GGUF (../shared/notes/anchors.md says
#                  how); llama.cpp is skipped when either is unset.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PROMPTS="${PROMPTS:-512 2048 8192}"
NEW_TOKENS="${NEW_TOKENS:-32}"
out="$here/results"
mkdir -p "$out"
res="$out/long_context.jsonl"
: > "$res"

# shellcheck source=common.sh
. "$here/common.sh"
build_and_checkpoint
if [ "${HF_SKIP:-0}" != 1 ] && [ -z "${PYTHON:-}" ]; then
    ensure_hf_venv
    PYTHON="$here/.venv/bin/python"
fi

# Runs a command, appending its last stdout line (JSON) with "peak_rss_bytes" from
# /usr/bin/time to the results.
measure() {
    local log="$out/lc_$1.log"
    shift
    /usr/bin/time -f "RSS_KB %M" -o "$log.rss" "$@" > "$log" 2>"$log.err" || {
        echo "failed: $* (see $log.err)" >&2
        return 0
    }
    python3 - "$log" "$log.rss" >> "$res" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
try:  # llama-bench: the whole output is one JSON array
    row = json.loads(text)
except ValueError:  # ours / HF: the last line is the JSON record
    row = json.loads([l for l in text.splitlines() if l.startswith("{")][-1])
rss = int(open(sys.argv[2]).read().split("RSS_KB")[1].split()[0]) * 1024
rows = row if isinstance(row, list) else [row]
for r in rows:
    r["peak_rss_bytes"] = max(r.get("peak_rss_bytes") or 0, rss)
    print(json.dumps(r))
PY
}

print_machine
for p in $PROMPTS; do
    echo "== prompt $p"
    measure "ours_$p" "$bin/model_decode" --model "$ckpt" --dtype f32 --matrices bf16 \
        --prompt-len "$p" --new-tokens "$NEW_TOKENS"
    # The same arithmetic as the two anchors: bf16 products of bf16-rounded activations.
    measure "ours_bf16act_$p" "$bin/model_decode" --model "$ckpt" --dtype f32 --matrices bf16 \
        --prompt-len "$p" --new-tokens "$NEW_TOKENS" --bf16-activations
    if [ "${HF_SKIP:-0}" != 1 ]; then
        measure "hf_$p" "$PYTHON" "$here/hf_bench.py" --model "$ckpt" --dtype bf16 \
            --prompt-len "$p" --new-tokens "$NEW_TOKENS" --threads 2 --experts-implementation eager
    fi
    if [ -n "${LLAMA_BENCH:-}" ] && [ -n "${GGUF:-}" ]; then
        # pp: prefill of p tokens; tg: NEW_TOKENS decode steps after p tokens of context.
        measure "llama_pp_$p" "$LLAMA_BENCH" -m "$GGUF" -t 2 -r 1 -p "$p" -n 0 -o json
        measure "llama_tg_$p" "$LLAMA_BENCH" -m "$GGUF" -t 2 -r 1 -p 0 -n "$NEW_TOKENS" -d "$p" -o json
    fi
done
echo "== load after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 "$here/long_context_table.py" "$res"
