# Sourced by the checks that drive `model serve` with real clients
# (check-openai-client.sh, check-lm-eval.sh).
#
# Builds the `model` binary (dev profile: the fixture model is tiny) and serves the
# `v3_noaux` fixture checkpoint with the tiny tokenizer on a free loopback port as model
# `tiny`.
#
#   start_fixture_server WORKDIR PYTHON [serve flags...]
#
# sets `server` (its pid), `url` (http://127.0.0.1:PORT) and `log` (its stderr), and stops
# the server on exit unless the caller clears the EXIT trap.
start_fixture_server() {
    local work=$1 py=$2
    shift 2
    echo "== building model"
    cargo build --quiet -p model
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps | "$py" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    echo "== model serve (v3_noaux + tiny_tokenizer)"
    local out=$work/server.out
    log=$work/server.log
    "$target_dir/debug/model" serve --model tests/fixtures/v3_noaux \
        --tokenizer tests/fixtures/tiny_tokenizer --host 127.0.0.1 --port 0 \
        --served-model-name tiny --cache-tokens 65536 --page-tokens 16 --prefill-chunk 32 \
        "$@" >"$out" 2>"$log" &
    server=$!
    trap stop_fixture_server EXIT
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
}

stop_fixture_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
