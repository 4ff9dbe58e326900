//! Whole-model prefill and decode throughput on the CPU (issue #5), with the decode roofline.
//!
//! Loads a checkpoint directory with a chosen precision (`--dtype` for the activations,
//! `--matrices` for the weight matrices), runs one warm-up generation, then
//! times a prefill of a deterministic `--prompt-len`-token prompt and `--new-tokens` greedy
//! tokens with `model::generate::generate` (the first token comes from the prefill's logits,
//! the other `new_tokens - 1` from single-token decode steps over the latent cache, so decode
//! tok/s = (new_tokens - 1) / decode seconds, as `hf_bench.py` counts it).
//!
//! Roofline: the bytes of weights one decode step must read (one embedding row, every
//! attention/norm/dense-FFN/shared-expert weight, `top_k` routed experts per MoE layer, the
//! final norm and the head, each matrix in the format this run keeps it:
//! `DeepSeek::decode_weight_bytes`) divided by the read bandwidth measured in the same run
//! ([`benchmarks::read_bandwidth`]). It is also given for bf16 weights (issue #5's target).
//!
//! `--matvec` also measures the decode shape `[1, K] x [K, N]` per weight dtype: candle's matmul
//! against the `linear` crate's matrix-vector kernel.
//!
//! Run: `cargo run --release -p benchmarks --bin model_decode -- --model DIR --dtype f32
//! --matrices bf16`
//! (see `benchmarks/model_cpu/run.sh`). The last line of output is JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use benchmarks::{median_time, read_bandwidth};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use mla::AttentionPath;
use model::generate::{generate, GenerateOptions};
use model::plan::expected_tensors;
use model::precision::parse_float_dtype;
use model::{DeepSeek, MatrixFormat, ModelConfig, Precision};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Compute dtype (activations, cache, norms): f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_float_dtype)]
    dtype: DType,
    /// Format the weight matrices are kept in: f32, bf16, f16, fp8, q8, q4, q4k, q6k, q5, q5k, q3k, q2k,
    /// gguf (default: as the
    /// CLI, `Precision::auto`: the checkpoint's own bf16/f16/FP8 under f32 compute).
    #[arg(long)]
    matrices: Option<MatrixFormat>,
    /// Prompt tokens (one prefill).
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Generated tokens (the first from the prefill, the rest from decode steps).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Skip the warm-up generation (32-token prompt, 4 tokens).
    #[arg(long)]
    no_warmup: bool,
    /// Also measure M=1 products on decode shapes: candle matmul vs the `linear` kernel, per dtype.
    #[arg(long)]
    matvec: bool,
    /// MLA path for prefill chunks (more than 8 tokens): flash (the default), expanded or
    /// absorbed (the last two materialise `[heads, chunk, keys]` scores).
    #[arg(long, default_value = "flash", value_parser = parse_path)]
    long_path: AttentionPath,
    /// MLA path for decode steps and blocks of at most 8 tokens (the model's default when
    /// not given): flash, absorbed or expanded.
    #[arg(long, value_parser = parse_path)]
    short_path: Option<AttentionPath>,
    /// Prompt tokens per pass through the layers (the model's default chunk).
    #[arg(long, default_value_t = model::DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// bf16 matrices multiply bf16-rounded activations (the CLI's `--bf16-activations`).
    #[arg(long)]
    bf16_activations: bool,
    /// Copy FP8 weights out of the memory map (the CLI's `--no-mmap`; default: in place).
    #[arg(long)]
    no_mmap: bool,
    /// Quantise the output head at load: q8, q4, q4k, q6k, q5, q5k, q3k or q2k (the CLI's
    /// `--head`;
    /// default: as the
    /// other matrices are kept).
    #[arg(long)]
    head: Option<linear::QuantFormat>,
    /// Keep glibc's default `malloc` settings (a fresh mapping per large tensor) instead of
    /// the CLI's `model::host_memory::retain_freed_memory`: for comparing the two.
    #[arg(long)]
    system_malloc: bool,
    /// Leave the heap as malloc grows it instead of reserving the checkpoint's size in huge
    /// pages before the load (the CLI's `model::host_memory::reserve_huge_page_heap`): for
    /// comparing the two.
    #[arg(long)]
    no_huge_page_heap: bool,
}

fn parse_path(s: &str) -> std::result::Result<AttentionPath, String> {
    match s {
        "flash" => Ok(AttentionPath::Flash),
        "expanded" => Ok(AttentionPath::Expanded),
        "absorbed" => Ok(AttentionPath::Absorbed),
        _ => Err(format!("'{s}' is not one of flash, expanded, absorbed")),
    }
}

/// A memory figure of this process from `/proc/self/status` (Linux), in bytes: `VmHWM` (peak
/// resident set so far), `RssAnon` (resident private memory), `RssFile` (resident pages of
/// mapped files, e.g. weights used in place in the checkpoint's memory map).
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The benchmark prompt: the same ids `hf_bench.py` uses.
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| ((i * 1_000_003 + 12_345) % vocab as u64) as u32)
        .collect()
}

/// Bytes of weights one decode step reads, at `elem` bytes per weight: (total, routed part).
fn decode_weight_bytes_at(cfg: &ModelConfig, elem: usize) -> (usize, usize) {
    let (tensors, _) = expected_tensors(cfg);
    let layers = cfg.num_hidden_layers;
    let (mut total, mut routed) = (0usize, 0usize);
    for t in &tensors {
        let layer = t
            .name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        if layer.is_some_and(|l| l >= layers) {
            continue; // MTP modules are not run
        }
        let n: usize = t.shape.iter().product();
        let n = if t.name == "model.embed_tokens.weight" {
            cfg.hidden_size // one row
        } else if t.name.contains(".mlp.experts.") {
            let g = &cfg.moe.as_ref().expect("experts imply MoE").gate;
            let r = n * g.top_k / g.n_routed_experts;
            routed += r * elem;
            r
        } else {
            n
        };
        total += n * elem;
    }
    (total, routed)
}

/// `[1, K] x [K, N]` with the weight stored `[N, K]`: candle's matmul on a transposed view (as
/// `candle_nn::Linear` runs it, activations in the weight's dtype) and `linear::linear` (f32
/// activations, weights in `dtype`). Returns the weight GB/s of each.
fn matvec(dtype: DType, n: usize, k: usize) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?.to_dtype(dtype)?;
    linear::advise_huge_pages(&w); // as the model loads its matrices
    let x32 = Tensor::randn(0f32, 1.0, (1, k), &dev)?;
    let x = x32.to_dtype(dtype)?;
    let wt = w.t()?;
    let gbs =
        |t: std::time::Duration| (n * k * dtype.size_in_bytes()) as f64 / t.as_secs_f64() / 1e9;
    let candle = median_time(2, 7, || x.matmul(&wt).unwrap());
    let ours = median_time(2, 7, || linear::linear(&x32, &w).unwrap());
    Ok((gbs(candle), gbs(ours)))
}

/// The same product with the weight as a `linear::Matrix` in FP8 blocks (random e4m3 bytes,
/// NaN codes excluded, with random block scales), q8, q4, q4k and q6k: `(format, bytes,
/// weight GB/s)`.
fn matvec_formats(n: usize, k: usize) -> Result<Vec<(&'static str, usize, f64)>> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let x = Tensor::randn(0f32, 1.0, (1, k), &dev)?;
    let codes: Vec<float8::F8E4M3> = (0..n * k)
        .map(|i| float8::F8E4M3::from_bits(((i as u64 * 2_654_435_761) % 251) as u8 & 0xf7))
        .collect();
    let (bn, bk) = linear::FP8_BLOCK;
    let scales = Tensor::rand(0.5f32, 1.5, (n.div_ceil(bn), k.div_ceil(bk)), &dev)?;
    let fp8 = linear::Fp8Matrix::new(Tensor::from_vec(codes, (n, k), &dev)?, &scales, (bn, bk))?;
    let dense = linear::Matrix::from(w);
    let mut out = Vec::new();
    for m in [
        linear::Matrix::from(fp8),
        dense.quantize(linear::QuantFormat::Q8)?,
        dense.quantize(linear::QuantFormat::Q4)?,
        dense.quantize(linear::QuantFormat::Q4K)?,
        dense.quantize(linear::QuantFormat::Q6K)?,
    ] {
        let t = median_time(2, 7, || m.forward(&x).unwrap());
        out.push((
            m.format(),
            m.bytes(),
            m.bytes() as f64 / t.as_secs_f64() / 1e9,
        ));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let retained = !args.system_malloc && model::host_memory::retain_freed_memory();
    // Before the bandwidth probe, as the CLI reserves before anything else: the probe's buffer
    // is freed into the heap, and the load reuses it.
    let reserved = if args.no_huge_page_heap {
        0
    } else {
        model::host_memory::reserve_huge_page_heap(model::host_memory::checkpoint_bytes(
            &args.model,
        ))
    };
    let dtype = args.dtype;
    let threads = candle_core::utils::get_num_threads();
    let bw = read_bandwidth();
    println!(
        "read bandwidth {:.1} GB/s, candle CPU threads {threads}",
        bw / 1e9
    );

    if args.matvec {
        for (n, k, what) in [
            (10944, 2048, "dense gate_proj"),
            (1408, 2048, "expert gate_proj"),
            (102400, 2048, "lm_head"),
        ] {
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let (candle, ours) = matvec(dt, n, k)?;
                println!(
                    "matvec {what} [1,{k}]x[{k},{n}] {dt:?} weights: candle matmul {candle:.2} GB/s, \
                     linear kernel {ours:.2} GB/s"
                );
            }
            for (format, bytes, gbs) in matvec_formats(n, k)? {
                println!(
                    "matvec {what} [1,{k}]x[{k},{n}] {format} weights ({:.1} MB): linear kernel \
                     {gbs:.2} GB/s",
                    bytes as f64 / 1e6
                );
            }
        }
    }

    let t = Instant::now();
    let mut model = DeepSeek::load_with(&args.model, &Device::Cpu, |checkpoint| {
        match args.matrices {
            Some(m) => Precision::mixed(dtype, m),
            None => Precision::auto(checkpoint, dtype, &Device::Cpu),
        }
        .with_bf16_activations(args.bf16_activations)
        .with_mmap(!args.no_mmap)
        .with_head(args.head)
    })?;
    let precision = model.precision();
    let label = if precision.matrices == MatrixFormat::Float(dtype) {
        dtype.as_str().to_string()
    } else {
        format!("{}/{}", dtype.as_str(), precision.matrices)
    };
    model.paths.long = args.long_path;
    if let Some(short) = args.short_path {
        model.paths.short = short;
    }
    model.prefill_chunk = args.prefill_chunk.max(1);
    let load_secs = t.elapsed().as_secs_f64();
    let cfg = model.config().clone();
    let ids = prompt(args.prompt_len, cfg.vocab_size);
    let greedy = |n| GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    if !args.no_warmup {
        generate(&model, &ids[..32.min(ids.len())], &greedy(4), |_| Ok(true))?;
    }
    let gen = generate(&model, &ids, &greedy(args.new_tokens), |_| Ok(true))?;
    let prefill = gen.prefill_tokens_per_sec();
    let decode = gen.decode_tokens_per_sec();

    let (bytes, routed) = model.decode_weight_bytes();
    let (bytes_bf16, _) = decode_weight_bytes_at(&cfg, 2);
    let roof = bw / bytes as f64;
    let roof_bf16 = bw / bytes_bf16 as f64;
    println!(
        "{} compute: load {load_secs:.1} s; prefill {} tokens in {:.2} s = {prefill:.1} tok/s; \
         decode {} tokens in {:.2} s = {decode:.2} tok/s",
        label,
        gen.prompt_tokens,
        gen.prefill_secs,
        gen.tokens.len().saturating_sub(1),
        gen.decode_secs,
    );
    println!(
        "weights read per decoded token: {:.3} GB in {} ({:.3} GB routed experts), {:.3} GB in bf16",
        bytes as f64 / 1e9,
        label,
        routed as f64 / 1e9,
        bytes_bf16 as f64 / 1e9
    );
    println!(
        "roofline: {roof:.1} tok/s with {} weights ({:.0}% reached), {roof_bf16:.1} tok/s with bf16 \
         weights ({:.0}% reached); achieved {:.1} GB/s of weights",
        label,
        100.0 * decode / roof,
        100.0 * decode / roof_bf16,
        decode * bytes as f64 / 1e9
    );
    println!(
        "{{\"impl\":\"ours\",\"dtype\":\"{}\",\"threads\":{threads},\"bandwidth_gbs\":{:.3},\
         \"load_secs\":{load_secs:.3},\"prompt_len\":{},\"new_tokens\":{},\"prefill_secs\":{:.4},\
         \"decode_secs\":{:.4},\"prefill_tok_s\":{prefill:.3},\"decode_tok_s\":{decode:.4},\
         \"decode_bytes\":{bytes},\"decode_bytes_bf16\":{bytes_bf16},\"roofline_tok_s\":{roof:.3},\
         \"roofline_bf16_tok_s\":{roof_bf16:.3},\"matrices\":\"{}\",\"long_path\":\"{:?}\",\"short_path\":\"{:?}\",\
         \"prefill_chunk\":{},\"bf16_activations\":{},\"mmap\":{},\"head\":\"{}\",\"retain_freed_memory\":{retained},\"huge_page_heap_bytes\":{reserved},\"peak_rss_bytes\":{},\"rss_anon_bytes\":{},\"rss_file_bytes\":{},\
         \"first_tokens\":{:?}}}",
        label,
        bw / 1e9,
        gen.prompt_tokens,
        gen.tokens.len(),
        gen.prefill_secs,
        gen.decode_secs,
        precision.matrices,
        args.long_path,
        model.paths.short,
        model.prefill_chunk,
        precision.bf16_activations,
        precision.mmap,
        precision.head_format().map_or("as the matrices", |f| f.name()),
        status_bytes("VmHWM:").unwrap_or(0),
        status_bytes("RssAnon:").unwrap_or(0),
        status_bytes("RssFile:").unwrap_or(0),
        &gen.tokens[..gen.tokens.len().min(8)],
    );
    Ok(())
}
