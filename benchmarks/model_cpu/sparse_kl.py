#!/usr/bin/env python3
"""Logit KL of `--sparse` patterns against dense attention, from `model logits` outputs.

    python benchmarks/model_cpu/sparse_kl.py DENSE.safetensors NAME=SPARSE.safetensors ... [--from P]

For each pattern: KL(dense || sparse) = sum_v p_dense(v) (log p_dense(v) - log p_sparse(v)) per
position (nats), averaged over positions >= P (those whose pattern drops keys), its maximum, and
how often the argmax agrees with dense.
"""
import sys

import torch
from safetensors import safe_open


def logits(path):
    with safe_open(path, "pt") as f:
        return f.get_tensor("logits")


def main():
    args = sys.argv[1:]
    start = 0
    if "--from" in args:
        i = args.index("--from")
        start = int(args[i + 1])
        del args[i:i + 2]
    dense = logits(args[0])[start:].double()
    logp_d = dense.log_softmax(-1)
    print(f"| pattern | positions | mean KL (nats) | max KL | argmax agreement |")
    print("|---|---:|---:|---:|---:|")
    for spec in args[1:]:
        name, path = spec.split("=", 1)
        logp_s = logits(path)[start:].double().log_softmax(-1)
        kl = (logp_d.exp() * (logp_d - logp_s)).sum(-1)
        agree = (logp_d.argmax(-1) == logp_s.argmax(-1)).double().mean()
        print(f"| `{name}` | {start}..{start + len(kl) - 1} | {kl.mean():.4f} | {kl.max():.4f} | {100 * agree:.1f}% |")


if __name__ == "__main__":
    main()
