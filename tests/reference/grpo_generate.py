#!/usr/bin/env python3
"""Parity fixture for the `grpo` crate: the same formulas written straightforwardly in
PyTorch (float64), on fixed random float32 inputs, with losses AND gradients.

Writes tests/fixtures/grpo/reference.json (small, committed; CI never runs Python).

    python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 numpy
    .venv/bin/python tests/reference/grpo_generate.py

Formulas (see crates/grpo/README.md):
  advantages   A_i = (r_i - mean_g) / (std_g + eps), std unbiased (torch.std, as TRL);
               or r_i - mean_g (Dr. GRPO); all-equal groups give exactly 0.
  per token    ratio = exp(logp - old); l = -min(ratio*A, clamp(ratio, 1-el, 1+eh)*A)
               + beta * (exp(ref - logp) - (ref - logp) - 1)
  aggregation  sequence_mean: mean_i( sum_t m l / clamp(sum_t m, 1) )        (GRPO)
               token_mean:    sum m l / clamp(sum m, 1)                       (DAPO)
               constant_normalizer: sum m l / (B * max_len)                   (Dr. GRPO)
  log-probs    log_softmax(logits)[ids]
  distillation T^2 * sum_n m_n KL(softmax(t/T) || softmax(s/T)) / clamp(sum m, 1)
"""

import json
import os

import torch

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "grpo", "reference.json")


def f32(t):
    """Round to float32 (the inputs Rust reads exactly), computed on in float64."""
    return t.to(torch.float32).to(torch.float64)


def lst(t):
    return t.detach().tolist()


def advantages(rewards, scaling, eps):
    mean = rewards.mean(dim=1, keepdim=True)
    centred = rewards - mean
    if scaling == "group_std":
        std = rewards.std(dim=1, keepdim=True)  # unbiased, as torch.std / TRL
        adv = centred / (std + eps)
    else:
        adv = centred
    degenerate = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    return torch.where(degenerate, torch.zeros_like(adv), adv).reshape(-1)


def policy_loss(logp, old, ref, adv, mask, el, eh, beta, aggregation, max_len):
    ratio = torch.exp(logp - old)
    a = adv[:, None] if adv.dim() == 1 else adv
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - el, 1 + eh) * a
    per_token = -torch.min(unclipped, clipped)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    if beta > 0:
        per_token = per_token + beta * k3
    per_token = per_token * mask
    if aggregation == "sequence_mean":
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif aggregation == "token_mean":
        loss = per_token.sum() / mask.sum().clamp(min=1.0)
    else:
        loss = per_token.sum() / (logp.shape[0] * max_len)
    n = mask.sum().clamp(min=1.0)
    kl = (k3 * mask).sum() / n
    r = ratio.detach()
    is_clipped = ((r < 1 - el) & (a < 0)) | ((r > 1 + eh) & (a > 0))
    clip_fraction = (is_clipped.to(mask.dtype) * mask).sum() / n
    return loss, kl.detach(), clip_fraction


def distill(student, teacher, mask, temperature):
    log_pt = torch.log_softmax(teacher / temperature, dim=-1)
    pt = log_pt.exp()
    log_ps = torch.log_softmax(student / temperature, dim=-1)
    kl = (pt * (log_pt - log_ps)).sum(-1)
    return temperature**2 * (kl * mask).sum() / mask.sum().clamp(min=1.0)


def main():
    g = torch.Generator().manual_seed(20250117)

    def randn(*shape, std=1.0):
        return f32(torch.randn(*shape, generator=g, dtype=torch.float64) * std)

    # ---- policy loss: 3 groups x 4 completions, T = 6, ragged masks.
    groups, size, T, max_len = 3, 4, 6, 8
    B = groups * size
    rewards = torch.tensor(
        [[1.0, 0.0, 0.0, 1.0], [0.5, 1.0, 0.0, 0.25], [1.0, 1.0, 1.0, 1.0]]
    )  # the last group is degenerate
    lengths = [6, 3, 1, 5, 0, 6, 2, 4, 6, 6, 3, 1]  # one empty completion
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])
    logp = f32(-torch.rand(B, T, generator=g, dtype=torch.float64) * 3.0)
    old = f32(logp + randn(B, T, std=0.25))
    ref = f32(logp + randn(B, T, std=0.3))

    cases = []
    for scaling in ["group_std", "none"]:
        adv = advantages(rewards, scaling, 1e-4)
        for aggregation in ["sequence_mean", "token_mean", "constant_normalizer"]:
            for beta in [0.0, 0.04]:
                for el, eh in [(0.2, 0.2), (0.2, 0.28)]:
                    for on_policy in [False, True] if beta > 0 and eh == 0.2 else [False]:
                        x = logp.clone().requires_grad_(True)
                        o = x.detach() if on_policy else old
                        loss, kl, cf = policy_loss(
                            x, o, ref, adv, mask, el, eh, beta, aggregation, max_len
                        )
                        loss.backward()
                        cases.append(
                            {
                                "name": f"{scaling}/{aggregation}/beta={beta}/clip={el},{eh}"
                                + ("/on_policy" if on_policy else ""),
                                "scaling": scaling,
                                "eps": 1e-4,
                                "aggregation": aggregation,
                                "max_len": max_len,
                                "epsilon_low": el,
                                "epsilon_high": eh,
                                "beta": beta,
                                "on_policy": on_policy,
                                "advantages": lst(adv),
                                "loss": loss.item(),
                                "kl": kl.item(),
                                "clip_fraction": cf.item(),
                                "grad_logp": lst(x.grad),
                            }
                        )
    policy = {
        "inputs": {
            "rewards": lst(rewards),
            "logp": lst(logp),
            "logp_old": lst(old),
            "logp_ref": lst(ref),
            "mask": lst(mask),
        },
        "cases": cases,
    }

    # ---- per-token log-probs: logits [2, 4, 7], loss = sum(w * logp).
    logits = randn(2, 4, 7, std=2.0)
    ids = torch.randint(0, 7, (2, 4), generator=g)
    w = randn(2, 4)
    x = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(x, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    (w * lp).sum().backward()
    log_probs = {
        "logits": lst(logits),
        "ids": lst(ids),
        "weights": lst(w),
        "logp": lst(lp),
        "grad_logits": lst(x.grad),
    }

    # ---- end to end: logits -> log-probs -> DAPO loss with KL, gradient w.r.t. logits.
    e_logits = randn(4, 5, 6)
    e_ids = torch.randint(0, 6, (4, 5), generator=g)
    e_mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0], [1.0] * 2 + [0.0] * 3])
    e_rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    e_adv = advantages(e_rewards, "group_std", 1e-4)
    with torch.no_grad():
        base = torch.log_softmax(e_logits, -1).gather(-1, e_ids[..., None]).squeeze(-1)
    e_old = f32(base + randn(4, 5, std=0.2))
    e_ref = f32(base + randn(4, 5, std=0.2))
    x = e_logits.clone().requires_grad_(True)
    lp = torch.log_softmax(x, dim=-1).gather(-1, e_ids[..., None]).squeeze(-1)
    loss, kl, cf = policy_loss(lp, e_old, e_ref, e_adv, e_mask, 0.2, 0.28, 0.05, "token_mean", 0)
    loss.backward()
    end_to_end = {
        "logits": lst(e_logits),
        "ids": lst(e_ids),
        "mask": lst(e_mask),
        "rewards": lst(e_rewards),
        "logp_old": lst(e_old),
        "logp_ref": lst(e_ref),
        "epsilon_low": 0.2,
        "epsilon_high": 0.28,
        "beta": 0.05,
        "loss": loss.item(),
        "grad_logits": lst(x.grad),
    }

    # ---- distillation: N = 6 rows over V = 10, two masked rows.
    student = randn(6, 10, std=1.5)
    teacher = randn(6, 10, std=2.0)
    d_mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    d_cases = []
    for temperature in [1.0, 2.0, 0.5]:
        for masked in [True, False]:
            x = student.clone().requires_grad_(True)
            m = d_mask if masked else torch.ones(6)
            loss = distill(x, teacher, m, temperature)
            loss.backward()
            d_cases.append(
                {
                    "temperature": temperature,
                    "masked": masked,
                    "loss": loss.item(),
                    "grad_student": lst(x.grad),
                }
            )
    distillation = {
        "student": lst(student),
        "teacher": lst(teacher),
        "mask": lst(d_mask),
        "cases": d_cases,
    }

    out = {
        "version": 1,
        "generator": "tests/reference/grpo_generate.py",
        "torch": torch.__version__,
        "policy": policy,
        "log_probs": log_probs,
        "end_to_end": end_to_end,
        "distillation": distillation,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT)}: {len(cases)} policy cases, "
          f"{len(d_cases)} distillation cases, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
