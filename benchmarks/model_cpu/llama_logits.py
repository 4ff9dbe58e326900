"""llama.cpp's next-token logits for the quality comparison of issue 13 (`quant_quality --reference`).

Runs one GGUF through llama.cpp (the llama-cpp-python bindings, on token ids: the benchmark
checkpoints' GGUFs have no vocabulary) over the prompt `model_decode` and `quant_quality` use,
`id_i = (i * 1_000_003 + 12_345) mod vocab`, in one batch with every position's logits kept,
and writes `ids` (i64) and `logits` (f32, `[positions, vocab]`) to an `.npz`.

The bindings are the package inside the llama-cpp-python sdist, pointed at the llama.cpp
libraries built from the same sdist (`../shared/notes/anchors.md`), so no second build of
llama.cpp is needed:

    python benchmarks/model_cpu/llama_logits.py --sdist A/llama_cpp_python-0.3.36 \
        --gguf ckpt-Q8_0.gguf --positions 512 --out llama_Q8_0.npz

Needs numpy, diskcache, jinja2, typing_extensions (the bindings' imports).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sdist", type=Path, required=True,
                   help="the unpacked llama-cpp-python sdist, with vendor/llama.cpp/build/bin built")
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--positions", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()

    lib = a.sdist / "vendor" / "llama.cpp" / "build" / "bin"
    if not (lib / "libllama.so").is_file():
        sys.exit(f"{lib}/libllama.so: not found (build llama.cpp as ../shared/notes/anchors.md says)")
    # The bindings read the library's directory from this variable when imported.
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib)
    sys.path.insert(0, str(a.sdist))
    import llama_cpp  # noqa: E402  (needs the variable above)

    n = a.positions
    llm = llama_cpp.Llama(
        model_path=str(a.gguf), n_ctx=max(n, 64), n_batch=n, n_ubatch=n,
        logits_all=True, n_threads=a.threads, verbose=False,
    )
    vocab = llm.n_vocab()
    ids = [(i * 1_000_003 + 12_345) % vocab for i in range(n)]
    llm.eval(ids)
    logits = np.asarray(llm.scores[:n], dtype=np.float32)
    if logits.shape != (n, vocab) or not np.isfinite(logits).all():
        sys.exit(f"{a.gguf}: llama.cpp returned logits of shape {logits.shape} or non-finite values")
    np.savez(a.out, ids=np.asarray(ids, dtype=np.int64), logits=logits)
    print(f"{a.gguf.name}: {n} positions x {vocab} logits -> {a.out}")


if __name__ == "__main__":
    main()
