//! Prefill-shaped products (`m` activation rows > 8) on the CPU: `linear`'s register-blocked
//! GEMM on every kernel path this machine runs, against candle's matmul (the `gemm` crate)
//! on the same machine in the same run, for f32 / bf16 / f16 / FP8 / 8-bit / 4-bit weights
//! (`--rows 1` gives the decode shape); for bf16 weights also
//! with the activations rounded to bf16 (`linear::linear_bf16_activations_with`).
//!
//! Baselines: `candle f32` is candle's matmul on a weight already held in f32 (its best case,
//! at twice the memory of bf16); `candle convert` converts the stored weight to f32 on every
//! call (what `linear` did for more than 8 rows before it had a GEMM). Shapes are the
//! DeepSeek-V2-Lite projections at a 512-token chunk, and one routed expert's share of it
//! (`512 · 6 / 64 = 48` rows). One JSON line per (shape, weight dtype, implementation).
//!
//! Run: `cargo run --release -p benchmarks --bin gemm`
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use anyhow::Result;
use benchmarks::median_time;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use linear::Isa;

#[derive(Parser)]
struct Args {
    /// Activation rows of the projection shapes (the chunk length).
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Timed calls per measurement (median reported), after one untimed call.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Weight dtypes to run (fp8: e4m3 with 128 x 128 block scales, DeepSeek's format; q8, q4,
    /// q4k, q6k, q5, q5k, q3k, q2k: `linear`'s group formats).
    #[arg(long, value_delimiter = ',', default_value = "bf16,f32,f16,fp8")]
    dtypes: Vec<String>,
    /// Only these shapes (q_proj, o_proj, dense_up, dense_down, expert_up, head); all if
    /// empty.
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// For the quantised dtypes, only the layout the model loads on this CPU (no baseline, no
    /// other paths): for comparing builds of one kernel.
    #[arg(long)]
    loaded_only: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Every name checked before the first measurement, so a typo does not surface minutes in.
    if let Some(bad) = args.dtypes.iter().find(|dt| !known_dtype(dt)) {
        anyhow::bail!("unknown dtype {bad:?}: {}", dtype_names());
    }
    let dev = Device::Cpu;
    let m = args.rows;
    // (name, rows, out features N, in features K)
    let shapes = [
        ("q_proj", m, 3072, 2048),
        ("o_proj", m, 2048, 2048),
        ("dense_up", m, 10944, 2048),
        ("dense_down", m, 2048, 10944),
        ("expert_up", (m * 6 / 64).max(1), 1408, 2048),
        // The output head: the one shape here that does not fit in the caches.
        ("head", m, 102400, 2048),
    ];
    println!(
        "# cores {}, paths {:?}",
        rayon::current_num_threads(),
        Isa::supported()
    );
    for (name, rows, n, k) in shapes {
        if !args.shapes.is_empty() && !args.shapes.iter().any(|s| s == name) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
        let w32 = (Tensor::randn(0f32, 1.0, (n, k), &dev)? / (k as f64).sqrt())?;
        let flops = 2.0 * rows as f64 * n as f64 * k as f64;
        for dt in &args.dtypes {
            if dt == "fp8" {
                let w = quantize_fp8(&w32)?;
                // In huge pages, as the model's weights are (in place in the map, or copied).
                w.advise_huge_pages();
                let wf = w.dequantize()?;
                let base = median_time(1, args.iters, || x.matmul(&wf.t().unwrap()).unwrap())
                    .as_secs_f64();
                print_row(
                    name,
                    rows,
                    n,
                    k,
                    dt,
                    "candle f32 (dequantised)",
                    base,
                    flops,
                    None,
                );
                for isa in Isa::supported() {
                    let t = median_time(1, args.iters, || {
                        linear::linear_fp8_with(isa, &x, &w).unwrap()
                    })
                    .as_secs_f64();
                    print_row(
                        name,
                        rows,
                        n,
                        k,
                        dt,
                        &format!("linear {isa}"),
                        t,
                        flops,
                        Some(base),
                    );
                }
                continue;
            }
            if let Some(format) = quant_format(dt) {
                let q = linear::QuantMatrix::quantize(&w32, format)?;
                q.advise_huge_pages();
                let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
                // The layout the model loads this CPU's matrices in (panels on AVX512-VNNI).
                let isa = Isa::detect();
                let laid = q.clone().for_isa(isa);
                laid.advise_huge_pages();
                let time_laid =
                    || median_time(1, args.iters, || laid.matmul(isa, &xs, rows)).as_secs_f64();
                if args.loaded_only {
                    let imp = format!("linear {isa}, as loaded");
                    print_row(name, rows, n, k, dt, &imp, time_laid(), flops, None);
                    continue;
                }
                let wf = q.dequantize()?;
                let base = median_time(1, args.iters, || x.matmul(&wf.t().unwrap()).unwrap())
                    .as_secs_f64();
                let imp = "candle f32 (dequantised)";
                print_row(name, rows, n, k, dt, imp, base, flops, None);
                for isa in Isa::supported() {
                    let t = median_time(1, args.iters, || q.matmul(isa, &xs, rows)).as_secs_f64();
                    let imp = format!("linear {isa}");
                    print_row(name, rows, n, k, dt, &imp, t, flops, Some(base));
                }
                // (Where the loaded layout differs from the rows timed above.)
                if laid.in_panels() {
                    let imp = format!("linear {isa}, panels");
                    print_row(name, rows, n, k, dt, &imp, time_laid(), flops, Some(base));
                }
                continue;
            }
            let dtype = match dt.as_str() {
                "f32" => DType::F32,
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                other => anyhow::bail!("unknown dtype {other:?}: {}", dtype_names()),
            };
            let w = w32.to_dtype(dtype)?;
            // In huge pages, as the model's weights are (the candle baseline's too).
            linear::advise_huge_pages(&w);
            let wf = w.to_dtype(DType::F32)?;
            linear::advise_huge_pages(&wf);
            let report = |imp: &str, secs: f64, base: Option<f64>| {
                print_row(name, rows, n, k, dt, imp, secs, flops, base)
            };
            let base =
                median_time(1, args.iters, || x.matmul(&wf.t().unwrap()).unwrap()).as_secs_f64();
            report("candle f32", base, None);
            if dtype != DType::F32 {
                let conv = median_time(1, args.iters, || {
                    x.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                        .unwrap()
                })
                .as_secs_f64();
                report("candle convert", conv, Some(base));
            }
            for isa in Isa::supported() {
                let t = median_time(1, args.iters, || linear::linear_with(isa, &x, &w).unwrap())
                    .as_secs_f64();
                report(&format!("linear {isa}"), t, Some(base));
            }
            if dtype == DType::BF16 {
                // Activations rounded to bf16 (HF's and llama.cpp's bf16 arithmetic):
                // `vdpbf16ps` on the avx512bf16 path, the f32 kernels on rounded values below.
                for isa in Isa::supported() {
                    let t = median_time(1, args.iters, || {
                        linear::linear_bf16_activations_with(isa, &x, &w).unwrap()
                    })
                    .as_secs_f64();
                    report(&format!("linear {isa}, bf16 activations"), t, Some(base));
                }
            }
        }
    }
    Ok(())
}

/// The float dtypes `--dtypes` takes besides the quantised formats.
const FLOAT_DTYPES: [&str; 4] = ["f32", "bf16", "f16", "fp8"];

/// Whether `--dtypes` takes `name`.
fn known_dtype(name: &str) -> bool {
    FLOAT_DTYPES.contains(&name) || quant_format(name).is_some()
}

/// Every name `--dtypes` takes, for the error message.
fn dtype_names() -> String {
    let quant = linear::QuantFormat::ALL.iter().map(|f| f.to_string());
    let all: Vec<String> = FLOAT_DTYPES
        .iter()
        .map(|s| s.to_string())
        .chain(quant)
        .collect();
    format!("one of {}", all.join(", "))
}

/// The 8/4-bit format a `--dtypes` entry names, if it names one.
fn quant_format(name: &str) -> Option<linear::QuantFormat> {
    name.parse().ok()
}

/// One JSON line.
#[allow(clippy::too_many_arguments)]
fn print_row(
    name: &str,
    rows: usize,
    n: usize,
    k: usize,
    dt: &str,
    imp: &str,
    secs: f64,
    flops: f64,
    base: Option<f64>,
) {
    let gflops = flops / secs / 1e9;
    let ratio = base.map(|b| b / secs);
    println!(
        "{{\"shape\":\"{name}\",\"m\":{rows},\"n\":{n},\"k\":{k},\"weights\":\"{dt}\",\
         \"impl\":\"{imp}\",\"ms\":{:.3},\"gflops\":{gflops:.1},\
         \"speedup_vs_candle_f32\":{}}}",
        secs * 1e3,
        ratio.map_or("null".into(), |r| format!("{r:.2}"))
    );
}

/// `w` in DeepSeek's format: per 128 x 128 block, `scale = max|w| / 448` and
/// `q = e4m3(w / scale)`.
fn quantize_fp8(w: &Tensor) -> Result<linear::Fp8Matrix> {
    let (n, k) = w.dims2()?;
    let (bn, bk) = linear::FP8_BLOCK;
    let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let (sn, sk) = (n.div_ceil(bn), k.div_ceil(bk));
    let mut scale = vec![0f32; sn * sk];
    for r in 0..n {
        for c in 0..k {
            let s = &mut scale[(r / bn) * sk + c / bk];
            *s = s.max(v[r * k + c].abs() / 448.0);
        }
    }
    let q: Vec<float8::F8E4M3> = (0..n * k)
        .map(|i| {
            let s = scale[(i / k / bn) * sk + (i % k) / bk].max(f32::MIN_POSITIVE);
            float8::F8E4M3::from_f32(v[i] / s)
        })
        .collect();
    let q = Tensor::from_vec(q, (n, k), w.device())?;
    let scale = Tensor::from_vec(scale, (sn, sk), w.device())?;
    Ok(linear::Fp8Matrix::new(q, &scale, (bn, bk))?)
}
