#!/usr/bin/env python3
"""The checks behind ./check (see README.txt). Python 3 with numpy; the stdlib does the rest
(safetensors files are read by the small reader below, so the safetensors package is optional).

Every check prints exactly one line, `PASS <name>: <numbers>` or `FAIL <name>: <why>`; lines
starting with `#` are information. Exit status 1 if any check failed.
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request

import numpy as np

# f32 on the GPU against the HF reference (the CPU meets 1e-4; cuBLAS may reorder sums).
TOL_F32 = 1e-3
# bf16 compute (activations, latent cache, norms) with bf16 weight matrices, against the HF f32
# reference. Measured on the CPU (`model logits --dtype bf16`, the same binary) on the bundled
# fixtures, whose logits are up to ~6 in size (std ~1.2): max |diff| 0.125 (v2_greedy),
# 0.107 (v2_group_limited), 0.155 (v32_dsa), 0.155 (v3_fp8), 0.072 (v3_mtp; its mtp_logits
# 0.156), 0.127 (v3_noaux); mean |diff| 0.014-0.023. (f16 gives ~0.015: bf16 keeps 8 mantissa
# bits, a relative step of 2^-8 per rounding.) A GPU rounds at other places (cuBLAS tiles,
# its own softmax and norms), so the bound is a bit over twice the worst CPU value: 0.35. A
# wrong kernel gives errors of order 1. Arg-max tokens must agree at every position whose
# reference top-2 gap is at least ARGMAX_GAP; positions with a smaller gap are skipped and
# counted (on the CPU in bf16 one position flips: v3_fp8, gap 0.004; mean |diff| is ~0.02, so
# a gap of 0.05 flips only where both top logits err by more than twice the mean, in opposite
# directions). In f32 the gap is the f32 tolerance.
TOL_BF16 = 0.35
ARGMAX_GAP = {"f32": TOL_F32, "bf16": 0.05}

# Peak memory bandwidth (TB/s) by GPU name: (substring of nvidia-smi's name, min memory MiB).
PEAK_TBPS = [
    ("H200", 0, 4.8),
    ("H100 NVL", 0, 3.9),
    ("H100 PCIe", 0, 2.0),
    ("H100", 0, 3.35),  # H100 SXM5 80GB ("NVIDIA H100 80GB HBM3")
    ("A100", 70000, 2.0),  # A100 80GB (SXM 2.04, PCIe 1.94)
]

CUDA_LIB_NAMES = [
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
    "libnvrtc.so.13",
    "libcudart.so.13",
]

BENCH_PROMPT_TOKENS = 512  # with the tiny tokenizer: one token per byte, plus BOS
BENCH_NEW_TOKENS = 128


class Runner:
    def __init__(self, args):
        self.bundle = os.path.abspath(args.bundle)
        self.work = os.path.abspath(args.work)
        self.cpu_mode = os.environ.get("GPU_CHECK_CPU_MODE", "0") == "1"
        self.bin = os.path.join(self.bundle, "model")
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.passed = 0
        self.failed = 0
        self.env = dict(os.environ)
        self.env.setdefault("RUST_LOG", "warn")

    # -- reporting ------------------------------------------------------------------------

    def result(self, ok, name, text):
        print(f"{'PASS' if ok else 'FAIL'} {name}: {text}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def info(self, text):
        print(f"# {text}", flush=True)

    def check(self, name, fn, *a):
        """Runs one check: fn returns the PASS text or raises Fail / anything."""
        if self.left() < 3:
            self.result(False, name, "not run: the time budget is spent")
            return None
        try:
            out = fn(*a)
        except Fail as e:
            self.result(False, name, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - one line per check whatever happens
            self.result(False, name, f"{type(e).__name__}: {e}")
            return None
        text, value = out if isinstance(out, tuple) else (out, None)
        self.result(True, name, text)
        return value

    def left(self):
        return self.deadline - time.monotonic()

    # -- running the binary ---------------------------------------------------------------

    def run(self, argv, limit, what):
        """Runs the binary with at most `limit` seconds (less if the budget is shorter)."""
        t = min(limit, self.left() - 2)
        if t < 1:
            raise Fail(f"{what}: not run, the time budget is spent")
        try:
            p = subprocess.run(
                [self.bin] + argv,
                capture_output=True,
                text=True,
                timeout=t,
                env=self.env,
                errors="replace",
            )
        except subprocess.TimeoutExpired:
            raise Fail(f"{what}: timed out after {t:.0f} s")
        if p.returncode != 0:
            raise Fail(f"{what}: exit {p.returncode}: {last_line(p.stderr)}")
        return p

    def device_args(self, device_run):
        """Flags of the run under test: `--cuda`, or in CPU mode `--device-dispatch` (the MoE
        path --cuda takes, run on the CPU). The baseline runs take none."""
        if not device_run:
            return []
        return ["--device-dispatch"] if self.cpu_mode else ["--cuda"]

    def device_name(self):
        return "CPU --device-dispatch" if self.cpu_mode else "--cuda"


class Fail(Exception):
    pass


def last_line(text):
    """The line that says what went wrong: `error: ...` or a panic, else the last line."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    for key in ("error:", "panicked at"):
        hits = [i for i, l in enumerate(lines) if key in l]
        if hits:
            i = hits[-1]
            # A panic's message is on the line after `panicked at FILE:LINE:COL:`.
            msg = lines[i] + (" " + lines[i + 1] if key == "panicked at" and i + 1 < len(lines) else "")
            return msg[:300]
    return lines[-1][:300] if lines else "(no output)"


# -- safetensors ------------------------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U32": np.uint32}


def load_safetensors(path):
    """name -> numpy array (F32/F64/I64/I32/U32; BF16 and F16 widened to f32)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[base + a : base + b]
        shape = t["shape"]
        dt = t["dtype"]
        if dt in _DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dt]).newbyteorder("<"))
        elif dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        else:
            continue
        out[name] = arr.reshape(shape)
    return out


# -- environment ------------------------------------------------------------------------------


def find_cuda_libs():
    """(directory list, where they came from, missing names)."""
    want = set(CUDA_LIB_NAMES)

    def search(roots):
        found = {}
        for root in roots:
            if not os.path.isdir(root):
                continue
            for dirpath, _, files in os.walk(root):
                for f in files:
                    if f in want and f not in found:
                        found[f] = dirpath
        return found

    given = os.environ.get("CUDA_LIBS")
    if given:
        found = search([given])
        dirs = list(dict.fromkeys([given] + [found[n] for n in CUDA_LIB_NAMES if n in found]))
        return dirs, f"CUDA_LIBS={given}", sorted(want - set(found))
    candidates = []
    spec = importlib.util.find_spec("nvidia")
    if spec and spec.submodule_search_locations:
        candidates.append(("pip nvidia wheels", list(spec.submodule_search_locations)))
    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        candidates.append(
            ("torch's lib dir and its nvidia wheels",
             [os.path.join(os.path.dirname(spec.origin), "lib"), os.path.join(site, "nvidia")])
        )
    candidates.append(("/usr/local/cuda", ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]))
    # Each library from the first place that has it.
    found, used = {}, []
    for label, roots in candidates:
        more = {k: v for k, v in search(roots).items() if k not in found}
        if more:
            found.update(more)
            used.append(f"{label}: {', '.join(sorted(set(more.values())))}")
        if len(found) == len(want):
            break
    dirs = list(dict.fromkeys(found[n] for n in CUDA_LIB_NAMES if n in found))
    return dirs, "; ".join(used) or "nowhere (none found)", sorted(want - set(found))


def gpu_name_and_peak():
    try:
        p = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        )
        line = p.stdout.strip().splitlines()[0]
        name, mem = [s.strip() for s in line.split(",")[:2]]
        mem = float(mem)
    except Exception as e:  # noqa: BLE001
        return None, None, f"nvidia-smi: {e}"
    for key, min_mem, tbps in PEAK_TBPS:
        if key in name and mem >= min_mem:
            return name, tbps, f"{name}, {mem / 1024:.0f} GiB, peak {tbps} TB/s"
    return name, None, f"{name}, {mem / 1024:.0f} GiB, peak bandwidth unknown"


# -- the checks -------------------------------------------------------------------------------


def fixtures(r):
    out = []
    for meta_path in sorted(glob.glob(os.path.join(r.bundle, "fixtures", "*", "meta.json"))):
        d = os.path.dirname(meta_path)
        if not os.path.exists(os.path.join(d, "reference.safetensors")):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        if "input_ids" not in meta:
            continue
        out.append((os.path.basename(d), d, meta))
    return out


def unpack_binary(r):
    """model.xz (a bundle whose plain binary would be over 60 MiB) -> WORK/model."""
    packed = os.path.join(r.bundle, "model.xz")
    if os.path.exists(r.bin) or not os.path.exists(packed):
        return
    import lzma

    t0 = time.monotonic()
    dest = os.path.join(r.work, "model")
    with lzma.open(packed, "rb") as i, open(dest, "wb") as o:
        shutil.copyfileobj(i, o, 1 << 20)
    os.chmod(dest, 0o755)
    r.bin = dest
    r.info(f"unpacked model.xz to {dest} ({os.path.getsize(dest) / 2**20:.1f} MiB, "
           f"{time.monotonic() - t0:.1f} s)")


def check_preflight(r):
    if not os.access(r.bin, os.X_OK):
        raise Fail(f"{r.bin} is missing or not executable")
    p = r.run(["--version"], 30, "model --version")
    return f"{p.stdout.strip()}, {'CPU mode' if r.cpu_mode else 'CUDA mode'}"


def check_logits(r, name, d, meta, dtype):
    ref = load_safetensors(os.path.join(d, "reference.safetensors"))
    ids = ",".join(str(i) for i in meta["input_ids"])
    out = os.path.join(r.work, f"logits-{name}-{dtype}.safetensors")
    r.run(
        ["logits", "--model", d, "--tokens", ids, "--out", out, "--dtype", dtype]
        + r.device_args(True),
        60,
        "model logits",
    )
    got = load_safetensors(out)
    pairs = [("logits", "prefill.logits")]
    if "mtp.logits" in ref:
        pairs.append(("mtp_logits", "mtp.logits"))
    tol = TOL_F32 if dtype == "f32" else TOL_BF16
    parts, bad = [], []
    skipped = compared = 0
    for g, w in pairs:
        if g not in got:
            raise Fail(f"output has no `{g}` (the reference has `{w}`)")
        a, b = got[g].astype(np.float64), ref[w].astype(np.float64)
        if a.shape != b.shape:
            raise Fail(f"`{g}` shape {a.shape} != reference {b.shape}")
        diff = float(np.max(np.abs(a - b)))
        # Arg-max per position, skipping near-ties: reference top-2 gap below ARGMAX_GAP.
        top2 = np.sort(b, axis=-1)[:, -2:]
        gap = top2[:, 1] - top2[:, 0]
        close = gap < ARGMAX_GAP[dtype]
        mism = int(np.sum((np.argmax(a, -1) != np.argmax(b, -1)) & ~close))
        skipped += int(np.sum(close))
        compared += int(np.sum(~close))
        parts.append(f"{g} max|diff| {diff:.2e}")
        if not np.isfinite(diff) or diff > tol:
            bad.append(f"{g} max|diff| {diff:.3e} > {tol:g}")
        if mism:
            bad.append(f"{g} arg-max differs at {mism} position(s) with a clear top-2 gap")
    shape = "x".join(str(s) for s in got["logits"].shape)
    argmax = f"arg-max equal at {compared} positions ({skipped} near-ties skipped)"
    if bad:
        raise Fail("; ".join(bad) + f" [{', '.join(parts)}; {shape}]")
    return f"{', '.join(parts)} (<= {tol:g}), {argmax}, logits {shape}"


class Server:
    """`model serve` on a free port, stopped with SIGTERM on exit."""

    def __init__(self, r, argv, limit):
        self.r = r
        self.p = subprocess.Popen(
            [r.bin, "serve", "--host", "127.0.0.1", "--port", "0"] + argv,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=r.env,
            errors="replace",
        )
        self.limit = limit

    def __enter__(self):
        try:
            return self._wait_listening()
        except BaseException:
            self.__exit__()
            raise

    def _wait_listening(self):
        # Reads stdout until `listening on http://ADDR` (with a deadline).
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        end = time.monotonic() + min(self.limit, self.r.left() - 2)
        buf = ""
        while time.monotonic() < end:
            if self.p.poll() is not None:
                err = self.p.stderr.read()
                raise Fail(f"serve exited {self.p.returncode}: {last_line(err)}")
            if sel.select(timeout=0.2):
                line = self.p.stdout.readline()
                buf += line
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    return self
        raise Fail("serve did not start listening in time")

    def post(self, path, body, timeout):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        t = min(timeout, self.r.left() - 2)
        if t < 1:
            raise Fail("not run, the time budget is spent")
        try:
            with urllib.request.urlopen(req, timeout=t) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise Fail(f"HTTP {e.code}: {e.read()[:300]!r}")

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return False


def serve_greedy(r, d, meta, cuda, n):
    argv = ["--model", d, "--dtype", "f32", "--cache-tokens", "4096", "--max-running", "4"]
    with Server(r, argv + r.device_args(cuda), 90) as s:
        body = {
            "prompt": meta["input_ids"], "max_tokens": n, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True,
        }
        resp = s.post("/v1/completions", body, 60)
    ids = resp["choices"][0].get("token_ids")
    if ids is None:
        raise Fail(f"no token_ids in the response: {json.dumps(resp)[:300]}")
    return ids


def check_greedy(r, name, d, meta):
    want = meta.get("greedy")
    n = len(want) if want else 16
    cpu = serve_greedy(r, d, meta, False, n)
    parts = []
    if want is not None and cpu != want:
        raise Fail(f"CPU greedy {cpu} != reference {want}")
    dev = serve_greedy(r, d, meta, True, n)
    if dev != cpu:
        first = next(i for i in range(min(len(dev), len(cpu)) + 1)
                     if i == min(len(dev), len(cpu)) or dev[i] != cpu[i])
        raise Fail(f"{r.device_name()} greedy differs from the CPU's at token {first}: "
                   f"{dev} vs {cpu}")
    parts.append(f"{r.device_name()} {n} tokens == CPU" + (" == reference" if want else ""))
    return f"{', '.join(parts)} (f32, serve /v1/completions with token ids, ignore_eos)"


def generate_text(r, d, cuda, n):
    tok = os.path.join(r.bundle, "fixtures", "tiny_tokenizer")
    p = r.run(
        ["generate", "--model", d, "--tokenizer", tok, "--prompt",
         "a prompt longer than index_topk", "--max-tokens", str(n), "--temperature", "0",
         "--dtype", "f32"] + r.device_args(cuda),
        60, "model generate",
    )
    m = re.search(r"generated (\d+) tokens", p.stderr)
    if not m:
        raise Fail(f"no summary line: {last_line(p.stderr)}")
    return p.stdout, int(m.group(1))


def check_generate(r, name, d):
    cpu, n_cpu = generate_text(r, d, False, 16)
    dev, n_dev = generate_text(r, d, True, 16)
    if (dev, n_dev) != (cpu, n_cpu):
        raise Fail(f"{r.device_name()} text {dev!r} ({n_dev} tokens) != CPU {cpu!r} "
                   f"({n_cpu} tokens)")
    return (f"{r.device_name()} text == CPU text, {n_dev} tokens "
            f"(generate, tiny tokenizer, f32 greedy)")


def check_bench(r):
    cfg = os.path.join(r.bundle, "bench", "v2_lite_4l.json")
    ckpt = os.path.join(r.work, "ckpt")
    if os.path.exists(ckpt):
        shutil.rmtree(ckpt)
    t0 = time.monotonic()
    r.run(["random-checkpoint", "--config", cfg, "--out", ckpt, "--dtype", "bf16", "--seed", "0"],
          150, "random-checkpoint")
    t_ckpt = time.monotonic() - t0
    text = "the quick brown fox jumps over the lazy dog. " * 20
    prompt = text[: BENCH_PROMPT_TOKENS - 1]  # one token per byte, plus BOS
    tok = os.path.join(r.bundle, "fixtures", "tiny_tokenizer")
    t0 = time.monotonic()
    p = r.run(
        ["generate", "--model", ckpt, "--tokenizer", tok, "--prompt", prompt,
         "--max-tokens", str(BENCH_NEW_TOKENS), "--temperature", "0"] + r.device_args(not r.cpu_mode),
        180, "model generate",
    )
    t_gen = time.monotonic() - t0
    m = re.search(
        r"prompt (\d+) tokens, prefill ([\d.]+) tok/s; generated (\d+) tokens, decode ([\d.]+) tok/s \((\w+)\)",
        p.stderr,
    )
    if not m:
        raise Fail(f"no summary line in generate's output: {last_line(p.stderr)}")
    n_prompt, prefill, n_gen, decode, finish = (
        int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4)), m.group(5))
    m = re.search(r"decode reads (\d+) bytes of weights per token", p.stderr)
    if not m:
        raise Fail(f"no `decode reads N bytes` line (binary older than this check?): {last_line(p.stderr)}")
    wbytes = int(m.group(1))
    gbps = wbytes * decode / 1e9
    bw = f"{gbps:.1f} GB/s of weights ({wbytes / 1e9:.3f} GB per token)"
    if r.cpu_mode:
        bw += ", CPU: no peak to compare"
    else:
        _, peak, desc = gpu_name_and_peak()
        if peak:
            bw += f", {100 * gbps / (peak * 1000):.1f}% of the {peak} TB/s peak ({desc})"
        else:
            bw += f" ({desc})"
    note = "" if n_gen == BENCH_NEW_TOKENS else f" (stopped early: {finish})"
    if n_prompt != BENCH_PROMPT_TOKENS:
        note += f" (prompt was {n_prompt} tokens, not {BENCH_PROMPT_TOKENS})"
    if n_gen == 0 or decode <= 0:
        raise Fail(f"nothing decoded: prompt {n_prompt}, generated {n_gen}, {finish}")
    dev = "CPU" if r.cpu_mode else "--cuda"
    return (f"{dev} prefill {n_prompt} tokens {prefill:.1f} tok/s, decode {n_gen} tokens "
            f"{decode:.2f} tok/s{note}; {bw}; checkpoint written in {t_ckpt:.0f} s, "
            f"generate ran {t_gen:.0f} s")


def check_host_kernels(r):
    """`linear`'s test binaries (host/) on this machine's CPU: every kernel path it supports
    against the f64 oracles, AMX tiles included where the CPU has them and Linux grants them."""
    host = os.path.join(r.bundle, "host")
    exes = sorted(os.path.join(host, f) for f in os.listdir(host))
    if not exes:
        raise Fail(f"no test binaries in {host}")
    cpu, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    wanted = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")
    have = [f for f in wanted if f in flags]
    passed, amx_note = 0, ""
    for exe in exes:
        t = min(120, r.left() - 2)
        if t < 1:
            raise Fail("not run: the time budget is spent")
        try:
            p = subprocess.run([exe, "--nocapture", f"--test-threads={os.cpu_count() or 1}"],
                               capture_output=True, text=True, timeout=t, errors="replace")
        except subprocess.TimeoutExpired:
            raise Fail(f"{os.path.basename(exe)}: timed out after {t:.0f} s")
        if p.returncode != 0:
            failed = [l for l in p.stdout.splitlines() if l.endswith("FAILED")]
            raise Fail(f"{os.path.basename(exe)}: exit {p.returncode}: "
                       f"{'; '.join(failed[:3]) or last_line(p.stderr)}")
        for line in p.stdout.splitlines():
            if line.startswith("test result: ok."):
                passed += int(line.split()[3])
        if "no AMX-BF16 here" in p.stdout:
            amx_note = "; AMX tiles not run (no AMX-BF16 or no tile permission)"
        elif "hardware_tiles_match_the_f64_oracle_where_present ... ok" in p.stdout:
            amx_note = amx_note or "; AMX tiles ran"
    return f"{passed} tests passed on {cpu} ({' '.join(have)}){amx_note}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--budget", type=float, default=285)
    r = Runner(ap.parse_args())

    dirs, source, missing = find_cuda_libs()
    if dirs:
        r.env["LD_LIBRARY_PATH"] = ":".join(dirs + [r.env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    r.info(f"CUDA libraries from {source}" + (f"; missing: {', '.join(missing)}" if missing else ""))
    if r.cpu_mode:
        r.info("GPU_CHECK_CPU_MODE=1: every check on the CPU, --device-dispatch in place of --cuda; "
               "bf16 = --dtype bf16 on the CPU")
    else:
        r.info(f"GPU: {gpu_name_and_peak()[2]}")
    r.info(f"scratch {r.work}, budget {r.deadline - r.start:.0f} s")

    try:
        unpack_binary(r)
    except Exception as e:  # noqa: BLE001 - preflight then reports the missing binary
        r.info(f"could not unpack model.xz: {type(e).__name__}: {e}")
    r.check("preflight", check_preflight, r)
    if os.path.isdir(os.path.join(r.bundle, "host")):
        r.check("host-cpu-kernels", check_host_kernels, r)
    fx = fixtures(r)
    for name, d, meta in fx:
        for dtype in ("f32", "bf16"):
            r.check(f"logits-{name}-{dtype}", check_logits, r, name, d, meta, dtype)
    for name, d, meta in fx:
        if meta.get("arch") == "v32":
            continue  # the engine (serve) refuses DeepSeek-V3.2; `generate` covers it below
        r.check(f"greedy-{name}", check_greedy, r, name, d, meta)
    for name, d, meta in fx:
        if name in ("v2_greedy", "v32_dsa"):
            r.check(f"generate-{name}", check_generate, r, name, d)
    r.check("bench-v2_lite_4l", check_bench, r)

    total = time.monotonic() - r.start
    print(f"TOTAL {total:.1f} s: {r.passed} passed, {r.failed} failed", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
