#!/usr/bin/env bash
# Builds each single-crate consumer under tests/consumers/ exactly as a downstream project would
# (with the lock file, nothing else from the workspace), runs its one real call, and fails if a
# component crate pulls in anything a library user should not pay for (async runtime, HTTP
# client, CLI parser, progress bars, the model crate). Prints each consumer's count of
# compiled dependency crates (`cargo tree -e normal`), the number the closing notes quote.
set -euo pipefail
cd "$(dirname "$0")/.."

# Crates no component library may pull in.
forbidden='^(tokio|reqwest|hyper|clap|clap_builder|indicatif|anyhow|tracing-subscriber|csv|flate2|serde_yaml|model|eval)$'
# The grader needs no tensor library either.
forbidden_judge='^(candle-core|candle-nn|gemm|rayon|safetensors)$'

status=0
for dir in tests/consumers/*/; do
    name="consumer-$(basename "$dir")"
    cargo run --locked --quiet -p "$name"
    deps=$(cargo tree --locked -p "$name" -e normal --prefix none | awk '{print $1}' | sort -u)
    count=$(printf '%s\n' "$deps" | wc -l)
    echo "$name: $count crates in its normal dependency tree (itself included)"
    bad=$(printf '%s\n' "$deps" | grep -E "$forbidden" || true)
    if [ "$name" = consumer-judge ]; then
        bad="$bad$(printf '%s\n' "$deps" | grep -E "$forbidden_judge" || true)"
    fi
    if [ -n "$bad" ]; then
        echo "error: $name pulls in: $(echo $bad)" >&2
        status=1
    fi
done
# The model crate as a library (`default-features = false`): no CLI dependencies. llguidance
# (structured outputs) reports its errors with anyhow, so its subtree is left out of the
# anyhow check (model's own API and errors use thiserror); the rest of the list still applies
# to it.
model_tree() {
    cargo tree --locked -p model --no-default-features -e normal --prefix none "$@" | awk '{print $1}' | sort -u
}
model_deps=$(model_tree)
own_deps=$(model_tree --prune llguidance)
echo "model (library, no default features): $(printf '%s\n' "$model_deps" | wc -l) crates"
bad=$( (printf '%s\n' "$model_deps" | grep -E '^(clap|clap_builder|indicatif|tracing-subscriber|tokio|reqwest)$'; printf '%s\n' "$own_deps" | grep -E '^anyhow$') | sort -u || true)
if [ -n "$bad" ]; then
    echo "error: the model library pulls in: $(echo $bad)" >&2
    status=1
fi
exit $status
