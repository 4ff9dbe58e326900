#!/usr/bin/env bash
# Checks `model serve` with the official `openai` Python client: installs it from PyPI into a
# virtual environment under target/, builds the `model` binary (dev profile: the fixture model
# is tiny), serves the `v3_noaux` fixture checkpoint with the tiny tokenizer on a free loopback
# port (with an API key), runs scripts/openai_client_check.py against it, then stops the
# server with SIGTERM and checks that it drains and exits cleanly. Prints the elapsed time.
# Needs python3 (with venv) and network access to PyPI.
#
#   scripts/check-openai-client.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.57.0
start=$(date +%s)
work=target/check-openai-client
venv=$work/venv
mkdir -p "$work"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py=$venv/bin/python
"$py" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"

echo "== building model"
cargo build --quiet -p model
target_dir=$(cargo metadata --format-version 1 --no-deps | "$py" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/debug/model

echo "== model serve (v3_noaux + tiny_tokenizer)"
key="check-$$"
out=$work/server.out
log=$work/server.log
"$bin" serve --model tests/fixtures/v3_noaux --tokenizer tests/fixtures/tiny_tokenizer \
    --host 127.0.0.1 --port 0 --served-model-name tiny --api-key "$key" \
    --cache-tokens 65536 --page-tokens 16 --prefill-chunk 32 >"$out" 2>"$log" &
server=$!
stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
trap stop_server EXIT

url=
for _ in $(seq 1 600); do
    url=$(sed -n 's/^listening on //p' "$out")
    [ -n "$url" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "error: the server exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "error: the server did not start within 60 s" >&2
    exit 1
fi
echo "serving on $url"

echo "== scripts/openai_client_check.py"
"$py" scripts/openai_client_check.py "$url" tiny "$key"

echo "== SIGTERM: drain and exit"
kill -TERM "$server"
status=0
wait "$server" || status=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
    echo "error: the server exited with status $status after SIGTERM" >&2
    cat "$log" >&2
    exit 1
fi
echo "check-openai-client: ok in $(($(date +%s) - start)) s"
