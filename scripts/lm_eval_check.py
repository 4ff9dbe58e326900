"""lm-evaluation-harness against `model serve`, checked against its own HF transformers backend.

  python scripts/lm_eval_check.py tasks DIR       writes two small tasks (arithmetic questions:
                                                  multiple choice, and greedy generation) in DIR
  python scripts/lm_eval_check.py compare A B     compares two `lm_eval --log_samples` outputs
                                                  request by request

The multiple-choice task is scored from log-likelihoods, which `local-completions` asks the
server for as `echo` + `logprobs` completions of batched token-id prompts; the generation task
sends batched prompts with stop strings. The same tasks through lm-eval's `hf` model on the
same checkpoint must give the same log-likelihoods (to 1e-4), the same greedy flags and the
same generations.
"""

import glob
import json
import random
import sys
from pathlib import Path

QUESTIONS = 24
TOLERANCE = 1e-4

MC = """task: arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN = """task: arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def tasks(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    data = out / "arith.jsonl"
    with data.open("w") as f:
        for _ in range(QUESTIONS):
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            choices = [str(a + b), str(a + b + 1), str(abs(a - b)), str(a * b)]
            f.write(json.dumps({"question": f"What is {a} plus {b}?", "choices": choices, "label": 0}) + "\n")
    (out / "arith_mc.yaml").write_text(MC.format(data=data.resolve()))
    (out / "arith_gen.yaml").write_text(GEN.format(data=data.resolve()))


def samples(root: Path, task: str) -> dict:
    files = sorted(glob.glob(f"{root}/*/samples_{task}_*.jsonl"))
    assert files, f"no samples of {task} under {root}"
    return {r["doc_id"]: r["resps"] for r in map(json.loads, open(files[-1]))}


def compare(served: Path, reference: Path) -> None:
    worst, loglik = 0.0, 0
    for task in ("arith_mc", "arith_gen"):
        a, b = samples(served, task), samples(reference, task)
        assert a.keys() == b.keys() and len(a) == QUESTIONS, task
        for doc in a:
            for x, y in zip(a[doc], b[doc], strict=True):
                x, y = x[0], y[0]
                if task == "arith_mc":
                    loglik += 1
                    worst = max(worst, abs(float(x[0]) - float(y[0])))
                    assert x[1] == y[1], f"{task} doc {doc}: greedy flag {x[1]} against {y[1]}"
                else:
                    assert x == y, f"{task} doc {doc}: generated {x!r} against {y!r}"
    assert worst <= TOLERANCE, f"log-likelihoods differ by up to {worst}"
    print(f"{loglik} log-likelihoods within {worst:.1e} of HF's, greedy flags equal; "
          f"{QUESTIONS} generations equal")


if __name__ == "__main__":
    if sys.argv[1:2] == ["tasks"]:
        tasks(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"]:
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
