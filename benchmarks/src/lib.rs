//! Shared helpers for the benchmark binaries in `src/bin/`.
#![deny(missing_docs)]

use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Runs `f` `warmup` times untimed, then `iters` times, returning the median wall time.
pub fn median_time<T>(warmup: usize, iters: usize, mut f: impl FnMut() -> T) -> Duration {
    for _ in 0..warmup {
        std::hint::black_box(f());
    }
    let mut times: Vec<Duration> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Measures this machine's read bandwidth in bytes/s: the best of 7 passes summing a 1 GiB
/// buffer (far larger than any cache, in huge pages like the model's weights) with every core,
/// split into 1 MiB rayon tasks so that a core briefly taken by another process does not leave
/// the other idle (a fixed split into one chunk per core under-reads a shared machine by
/// ~20%). The roofline's denominator: the best any kernel streaming weights can do.
pub fn read_bandwidth() -> f64 {
    let n = 256 << 20; // 1 GiB of f32
    let buf = candle_core::Tensor::ones(n, candle_core::DType::F32, &candle_core::Device::Cpu)
        .expect("1 GiB buffer");
    linear::advise_huge_pages(&buf);
    let (storage, _) = buf.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        unreachable!("CPU tensor")
    };
    let data = cpu.as_slice::<f32>().expect("f32 buffer");
    let isa = linear::Isa::detect();
    let best = (0..7)
        .map(|_| {
            let t = Instant::now();
            let s: f32 = data.par_chunks(256 << 10).map(|c| sum_lanes(isa, c)).sum();
            std::hint::black_box(s);
            t.elapsed()
        })
        .min()
        .expect("7 passes");
    (n * 4) as f64 / best.as_secs_f64()
}

/// A sum with independent accumulators, so it is bound by memory, not by the latency of one
/// add chain: AVX2 (8 ymm accumulators) when `isa` (linear's detected kernel path) has it,
/// portable code otherwise, so the probe reads the way the kernels it bounds do. (The
/// portable loop compiles to SSE2 for the default x86-64 target and reads ~20% slower than
/// the AVX2 kernels.)
fn sum_lanes(isa: linear::Isa, xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2_fma() {
        // SAFETY: a `linear::Isa` reports AVX2 only when `linear::Isa::detect` found it at
        // run time (it has no other constructor for a SIMD path).
        return unsafe { sum_avx2(xs) };
    }
    let _ = isa;
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 8];
    let blocks = xs.chunks_exact(64);
    let tail: f32 = blocks.remainder().iter().sum();
    for b in blocks {
        for (u, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(b.as_ptr().add(8 * u)));
        }
    }
    let mut lanes = [0f32; 8];
    let total = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    _mm256_storeu_ps(lanes.as_mut_ptr(), total);
    lanes.iter().sum::<f32>() + tail
}

/// An MLA layer of `cfg` (plain `q_proj`) with random f32 weights scaled by `1/sqrt(fan_in)`
/// and unit norm weights: the layer the MLA benchmarks time.
pub fn random_mla_layer(
    cfg: &mla::MlaConfig,
    dev: &candle_core::Device,
) -> anyhow::Result<mla::Mla> {
    use candle_core::{DType, Tensor};
    let w = |o: usize, i: usize| Tensor::randn(0f32, (i as f32).powf(-0.5), (o, i), dev);
    let (c, h) = (cfg.hidden_size, cfg.num_heads);
    let weights = mla::MlaWeights {
        query: mla::QueryWeights::Direct {
            q_proj: w(h * cfg.qk_head_dim(), c)?.into(),
        },
        kv_a_proj_with_mqa: w(cfg.latent_dim(), c)?.into(),
        kv_a_layernorm: Tensor::ones(cfg.kv_lora_rank, DType::F32, dev)?,
        kv_b_proj: w(
            h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
            cfg.kv_lora_rank,
        )?
        .into(),
        o_proj: w(c, h * cfg.v_head_dim)?.into(),
    };
    Ok(mla::Mla::new(cfg.clone(), weights)?)
}
