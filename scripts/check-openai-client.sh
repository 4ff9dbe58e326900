#!/usr/bin/env bash
# Checks `model serve` with the official `openai` Python client: installs it from PyPI into a
# virtual environment under target/, builds the `model` binary (dev profile: the fixture model
# is tiny), serves the `v3_noaux` fixture checkpoint with the tiny tokenizer and the
# function-calling chat template on a free loopback port (with an API key), runs scripts/openai_client_check.py against it, then stops the
# server with SIGTERM and checks that it drains and exits cleanly. Prints the elapsed time.
# Needs python3 (with venv) and network access to PyPI.
#
#   scripts/check-openai-client.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.57.0
start=$(date +%s)
work=target/check-openai-client
# shellcheck source=lib/venv.sh
source scripts/lib/venv.sh
# shellcheck source=lib/fixture-server.sh
source scripts/lib/fixture-server.sh
python_venv "$work" "openai==$OPENAI_VERSION"
key="check-$$"
# The repository's function-calling template, so the client's `tools` requests are served.
start_fixture_server "$work" "$py" --api-key "$key" \
    --chat-template crates/model/templates/deepseek-v3-tools.jinja

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
