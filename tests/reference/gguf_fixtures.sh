#!/usr/bin/env bash
# Regenerates the GGUF fixtures with llama.cpp's OWN converter and quantiser, so the model
# crate's GGUF reader is tested against files it did not write:
#
#   tests/reference/gguf_fixtures.sh LLAMA_CPP_DIR PYTHON
#
# LLAMA_CPP_DIR: llama.cpp's source tree with build/bin/llama-quantize built (the sources in
# the llama-cpp-python 0.3.36 sdist; ../shared/notes/anchors.md says how). PYTHON: a Python with
# torch, safetensors, numpy, pyyaml and sentencepiece. The fixtures have no tokenizer, so the
# conversion goes through ../shared/tools/gguf_convert_novocab.py (the stock converter with
# `tokenizer.ggml.model = none`). Each case: the f32 GGUF (lossless) and llama-quantize's Q8_0;
# then v3_noaux's Q8_0 file cut by llama-gguf-split into three parts (how DeepSeek-V3/R1 GGUF
# files ship: NAME-0000k-of-0000n.gguf) under split/.
set -euo pipefail
llama=${1:?usage: $0 LLAMA_CPP_DIR PYTHON}
python=${2:?usage: $0 LLAMA_CPP_DIR PYTHON}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures/gguf" && pwd)
tool="$here/../../../../shared/tools/gguf_convert_novocab.py"
for case in v2_group_limited v3_noaux; do
    "$python" "$tool" "$llama" "$here/../$case" "$here/$case-f32.gguf" f32
    "$llama/build/bin/llama-quantize" "$here/$case-f32.gguf" "$here/$case-Q8_0.gguf" Q8_0 2
done
mkdir -p "$here/split"
rm -f "$here"/split/*.gguf
"$llama/build/bin/llama-gguf-split" --split --split-max-tensors 20 \
    "$here/v3_noaux-Q8_0.gguf" "$here/split/v3_noaux-Q8_0"
