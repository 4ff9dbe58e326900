"""HF transformers side of the model CPU benchmark (issue #5).

Loads the random checkpoint with `DeepseekV2ForCausalLM.from_pretrained` (transformers fuses
the per-expert `experts.{e}.{gate,up,down}_proj.weight` tensors through its conversion
mapping), then times one prefill of a random `--prompt-len`-token prompt and `--new-tokens`
greedy tokens (the first comes from the prefill's logits, the rest from `new_tokens - 1`
single-token decode steps over a DynamicCache), exactly as `model_decode` does on our side.
Prints one JSON line.

Run by `run.sh`; by hand:
    .venv/bin/python hf_bench.py --model ckpt --dtype bf16
"""

import argparse
import json
import time

import torch
import transformers
from transformers import DeepseekV2ForCausalLM, DynamicCache


def step(model, ids, cache):
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].argmax(-1, keepdim=True), out.past_key_values


def run_once(model, prompt, new_tokens):
    cache = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    nxt, cache = step(model, prompt, cache)
    prefill = time.perf_counter() - t0
    tokens = [nxt.item()]
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        nxt, cache = step(model, nxt, cache)
        tokens.append(nxt.item())
    decode = time.perf_counter() - t1
    return prefill, decode, tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", choices=["bf16", "f32", "f16"], default="bf16")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--experts-implementation", default=None,
                   help="eager | grouped_mm | batched_mm (default: transformers' choice, grouped_mm)")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[a.dtype]
    t = time.perf_counter()
    model = DeepseekV2ForCausalLM.from_pretrained(
        a.model, dtype=dtype, experts_implementation=a.experts_implementation).eval()
    load = time.perf_counter() - t
    vocab = model.config.vocab_size
    # The same ids as model_decode's prompt(), so greedy outputs can be compared.
    prompt = torch.tensor([[(i * 1_000_003 + 12_345) % vocab for i in range(a.prompt_len)]])
    with torch.inference_mode():
        # Warm-up (oneDNN/AMX primitive creation, allocator): a short prefill + a few steps.
        run_once(model, prompt[:, :32], 4)
        prefill, decode, tokens = run_once(model, prompt, a.new_tokens)
    steps = a.new_tokens - 1
    print(json.dumps({
        "impl": "hf",
        "dtype": a.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "threads": torch.get_num_threads(),
        "load_secs": load,
        "prompt_len": a.prompt_len,
        "new_tokens": len(tokens),
        "prefill_secs": prefill,
        "decode_secs": decode,
        "prefill_tok_s": a.prompt_len / prefill,
        "decode_tok_s": steps / decode,
        "first_tokens": tokens[:8],
    }))


if __name__ == "__main__":
    main()
