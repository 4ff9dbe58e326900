#!/usr/bin/env python3
"""llama.cpp's convert_hf_to_gguf.py on the tokenizer-less random benchmark checkpoint, with a
real vocabulary: DeepSeek-LLM's (102,400 ids, the same tokenizer DeepSeek-V2 ships), taken
from the vocab-only GGUF in llama.cpp's own `models/` directory.

`../shared/tools/gguf_convert_novocab.py` writes `tokenizer.ggml.model = "none"`, which
`llama-batched-bench` accepts but `llama-server` aborts on as soon as it detokenises a token
(`llama_vocab::token_get_attr`). The weights are the same either way; only the vocabulary
differs. Like that script, it writes `q_lora_rank = 0` when the HF config has none (llama.cpp
only infers a q_lora-less model from a 26/27-layer depth).

Usage: python gguf_convert_vocab.py LLAMA_CPP_DIR CKPT_DIR OUT.gguf OUTTYPE(bf16|q8_0|f16|f32)
(with a Python that has torch and safetensors, e.g. model_cpu/.venv)
"""
import sys

llama_dir, ckpt, out, outtype = sys.argv[1:5]
sys.path.insert(0, llama_dir)
sys.path.insert(1, llama_dir + "/gguf-py")

import convert_hf_to_gguf  # noqa: E402
from conversion import deepseek  # noqa: E402


def _vocab(self):
    # The converter's own reader of its bundled vocab-only GGUFs; it keeps the first
    # vocab_size ids, and DeepSeek-LLM's file has exactly the checkpoint's 102,400.
    self._set_vocab_builtin("deepseek-llm", self.hparams["vocab_size"])


_orig_params = deepseek.DeepseekV2Model.set_gguf_parameters


def _params(self):
    _orig_params(self)
    if self.hparams.get("q_lora_rank") is None:
        self.gguf_writer.add_q_lora_rank(0)


deepseek.DeepseekV2Model.set_vocab = _vocab
deepseek.DeepseekV2Model.set_gguf_parameters = _params
sys.argv = ["convert_hf_to_gguf.py", ckpt, "--outfile", out, "--outtype", outtype]
convert_hf_to_gguf.main()
