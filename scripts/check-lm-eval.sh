#!/usr/bin/env bash
# lm-evaluation-harness against `model serve`: installs lm-eval (with its API extras),
# transformers 5.23 and torch from PyPI into a virtual environment under target/ (about
# 6 GB: not part of .ci/run), serves the `v3_noaux` fixture checkpoint with the tiny
# tokenizer, runs two small tasks (log-likelihood multiple choice, greedy generation) through
# lm-eval's `local-completions` model with batches of 4 prompts, runs the same tasks through
# lm-eval's `hf` model (HF transformers on the same checkpoint), and checks that every
# log-likelihood, greedy flag and generation agrees (scripts/lm_eval_check.py). Prints the
# elapsed time. Needs python3 (with venv) and network access to PyPI.
#
#   scripts/check-lm-eval.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LM_EVAL_VERSION=0.4.13
TRANSFORMERS_VERSION=5.23.0
start=$(date +%s)
work=target/check-lm-eval
# shellcheck source=lib/venv.sh
source scripts/lib/venv.sh
# shellcheck source=lib/fixture-server.sh
source scripts/lib/fixture-server.sh
python_venv "$work" "lm_eval[api]==$LM_EVAL_VERSION" "transformers==$TRANSFORMERS_VERSION"
"$py" scripts/lm_eval_check.py tasks "$work/tasks"
rm -rf "$work/served" "$work/hf"
start_fixture_server "$work" "$py"

export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
tokenizer=$PWD/tests/fixtures/tiny_tokenizer
run_tasks() {
    "$venv/bin/lm_eval" --tasks arith_mc,arith_gen --include_path "$work/tasks" \
        --batch_size 4 --log_samples "$@"
}
echo "== lm-eval local-completions -> model serve"
run_tasks --model local-completions --output_path "$work/served" --model_args \
    "base_url=$url/v1/completions,model=tiny,tokenizer=$tokenizer,tokenizer_backend=huggingface,max_length=2048"
stop_fixture_server
trap - EXIT
echo "== lm-eval hf (transformers $TRANSFORMERS_VERSION)"
run_tasks --model hf --device cpu --output_path "$work/hf" --model_args \
    "pretrained=$PWD/tests/fixtures/v3_noaux,tokenizer=$tokenizer,dtype=float32"
"$py" scripts/lm_eval_check.py compare "$work/served" "$work/hf"
echo "check-lm-eval: ok in $(($(date +%s) - start)) s"
