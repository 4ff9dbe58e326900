#!/usr/bin/env bash
# Serving over HTTP (issue 15): our `model serve` against llama.cpp's `llama-server -np N`,
# the same client (http_burst.py: c concurrent streamed /v1/completions requests, distinct
# token-id prompts, ignore_eos) against each, one server at a time, on the random
# V2-Lite-shaped 4-layer checkpoint. One JSON line per (server, concurrency).
#
# Usage: benchmarks/model_cpu/serving_http.sh
# Environment:
#   CONCURRENCY    streams                           (default "1,4,16")
#   PROMPT         prompt tokens per stream          (default 512)
#   NEW_TOKENS     tokens generated per stream       (default 128)
#   SERVE_ARGS     extra `model serve` flags         (default none)
#   LLAMA_SERVER   llama.cpp's llama-server binary, and
#   GGUF           the checkpoint as a bf16 GGUF WITH a vocabulary (gguf_convert_vocab.py:
#                  this llama-server aborts on the tokenizer-less conversion); llama.cpp is
#                  skipped when either is unset.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CONCURRENCY="${CONCURRENCY:-1,4,16}"
PROMPT="${PROMPT:-512}"
NEW_TOKENS="${NEW_TOKENS:-128}"
PORT="${PORT:-8017}"
out="$here/results"
mkdir -p "$out"

# shellcheck source=common.sh
. "$here/common.sh"
build_and_checkpoint
print_machine

server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

# Waits for $1/health to answer 200 (the load included), at most 10 minutes.
wait_healthy() {
    for _ in $(seq 600); do
        if curl -sf "$1/health" > /dev/null; then return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then echo "server exited" >&2; return 1; fi
        sleep 1
    done
    echo "server not healthy after 10 minutes" >&2
    return 1
}

burst() { # label, model name, concurrency list
    python3 "$here/http_burst.py" --url "http://127.0.0.1:$PORT" --model "$2" --label "$1" \
        --concurrency "$3" --prompt-len "$PROMPT" --new-tokens "$NEW_TOKENS"
}

echo "== ours: model serve ${SERVE_ARGS:-}"
# shellcheck disable=SC2086
"$bin/model" serve --model "$ckpt" --port "$PORT" ${SERVE_ARGS:-} > "$out/serve_ours.log" 2>&1 &
server_pid=$!
wait_healthy "http://127.0.0.1:$PORT"
burst "ours" "$ckpt" "$CONCURRENCY" | tee "$out/serving_http.jsonl"
stop_server

if [ -n "${LLAMA_SERVER:-}" ] && [ -n "${GGUF:-}" ]; then
    for c in $(echo "$CONCURRENCY" | tr ',' ' '); do
        echo "== llama.cpp: llama-server -np $c"
        "$LLAMA_SERVER" -m "$GGUF" -t 2 -np "$c" -c $((c * (PROMPT + NEW_TOKENS) + 64)) \
            --port "$PORT" --no-webui > "$out/serve_llama.log" 2>&1 &
        server_pid=$!
        wait_healthy "http://127.0.0.1:$PORT"
        burst "llama-server -np $c" "model" "$c" | tee -a "$out/serving_http.jsonl"
        stop_server
    done
fi
echo "== load after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
