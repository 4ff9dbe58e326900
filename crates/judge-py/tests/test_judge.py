"""Tests of the deepseek_judge module: the shared cases of cases.json (also checked by
crates/judge/tests/shared_cases.rs), batch behaviour and the TRL calling convention.

Run with pytest, or as a plain script: python crates/judge-py/tests/test_judge.py
"""

import json
import math
import os

import deepseek_judge as dj

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
    FILE = json.load(f)
WEIGHTS = FILE["weights"]
CASES = FILE["cases"]


def close(a, b):
    return math.isclose(a, b, abs_tol=1e-6)


def options(c):
    return dict(
        kind=c.get("kind", "math"),
        policy=c.get("policy", "careful"),
        think_prefilled=c.get("think_prefilled", False),
    )


def test_shared_cases():
    assert len(CASES) >= 10
    for c in CASES:
        e, name, o = c["expect"], c["name"], options(c)
        v = dj.judge(c["response"], c["gold"], **o)
        assert v["correct"] == e["correct"], (name, v)
        if "extracted" in e:
            assert v["extracted"] == e["extracted"], (name, v)
        assert v["format"] == e["format"], (name, v)
        assert v["format_ok"] == (e["format_reward"] == 1.0), (name, v)
        lang = c.get("language", "english")
        [r] = dj.rewards([c["response"]], [c["gold"]], weights=WEIGHTS, language=lang, **o)
        assert r["accuracy"] == e["accuracy"], (name, r)
        assert r["format"] == e["format_reward"], (name, r)
        assert close(r["language"], e["language"]), (name, r)
        assert close(r["total"], e["total"]), (name, r)
        # The single-reward functions agree with the breakdown.
        assert dj.accuracy_reward([c["response"]], [c["gold"]], **o) == [e["accuracy"]], name
        tp = o["think_prefilled"]
        assert dj.format_reward([c["response"]], think_prefilled=tp) == [e["format_reward"]], name
        [l] = dj.language_reward([c["response"]], language=lang, think_prefilled=tp)
        assert close(l, e["language"]), (name, l)


def test_one_batch_with_per_completion_options():
    cases = [c for c in CASES if c.get("policy", "careful") == "careful" and not c.get("think_prefilled")]
    args = dict(
        kind=[c.get("kind", "math") for c in cases],
        language=[c.get("language", "english") for c in cases],
        weights=(WEIGHTS["accuracy"], WEIGHTS["format"], WEIGHTS["language"]),
    )
    responses = [c["response"] for c in cases]
    golds = [c["gold"] for c in cases]
    out = dj.rewards(responses, golds, **args)
    for c, r in zip(cases, out):
        assert close(r["total"], c["expect"]["total"]), (c["name"], r)
    # Same results on one thread, many threads and rayon's pool; many copies.
    big_r, big_g = responses * 40, golds * 40
    big_args = dict(args, kind=args["kind"] * 40, language=args["language"] * 40)
    one = dj.rewards(big_r, big_g, threads=1, **big_args)
    assert one == dj.rewards(big_r, big_g, threads=4, **big_args) == dj.rewards(big_r, big_g, **big_args)
    assert one[: len(out)] == out


def test_trl_calling_convention():
    # GRPOTrainer calls f(prompts=..., completions=..., completion_ids=..., **dataset_columns).
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "三加四等于多少？"}]]
    completions = [
        [{"role": "assistant", "content": "<think>Three plus four.</think>\\boxed{7}"}],
        [{"role": "assistant", "content": "<think>三加四得七。</think>\\boxed{8}"}],
    ]
    kw = dict(prompts=prompts, completions=completions, completion_ids=[[1], [2]], answer=["7", 7])
    assert dj.accuracy_reward(**kw) == [1.0, 0.0]
    assert dj.format_reward(**kw) == [1.0, 1.0]
    assert dj.language_reward(language="auto", **kw) == [1.0, 1.0]
    assert dj.language_reward(language="english", **kw) == [1.0, 0.0]
    r = dj.rewards(language="auto", weights={"accuracy": 2.0, "format": 0.0}, **kw)
    assert [x["total"] for x in r] == [3.0, 1.0], r
    # Plain-text prompts and completions; gold aliases.
    assert dj.accuracy_reward(["</think>It is Paris."], [["Paris", "City of Light"]], kind="factual") == [1.0]


def test_errors():
    def raises(exc, f, *a, **k):
        try:
            f(*a, **k)
        except exc:
            return
        raise AssertionError(f"{f.__name__} did not raise {exc.__name__}")

    raises(ValueError, dj.judge, "x", "1", kind="algebra")
    raises(ValueError, dj.judge, "x", "1", policy="lenient")
    raises(ValueError, dj.accuracy_reward, ["a", "b"], ["1"])
    raises(TypeError, dj.accuracy_reward, ["a"])
    raises(ValueError, dj.language_reward, ["a"], language="klingon")
    raises(ValueError, dj.rewards, ["a"], ["1"], weights={"speed": 1.0})
    raises(TypeError, dj.format_reward, [3])


def test_degenerate_inputs():
    big = "<think>" + "Let me see. " * 90_000 + "</think>\\boxed{7}"
    r = dj.rewards(["", big, "$" * 100_000, "\\(" * 50_000], ["7"] * 4)
    assert r[1]["accuracy"] == 1.0 and r[1]["language"] == 1.0
    assert all(0.0 <= x["total"] <= 3.0 for x in r)
    assert dj.count_words("We add 所以 the numbers 是七") == {"latin": 4, "cjk": 4, "other": 0}
    assert dj.rewards([], []) == []


if __name__ == "__main__":
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    for t in tests:
        t()
        print(f"ok {t.__name__}")
    print(f"{len(tests)} tests passed ({len(CASES)} shared cases)")
