//! The order in which the matrix-vector regime reads weight rows, measured in isolation: one
//! row at a time (one sequential stream per core), one row from each half or each quarter of
//! a task at a time (two or four long streams, each activation load serving two or four rows),
//! on bf16 matrices in huge pages, for the decode shapes of DeepSeek-V2-Lite (`K = 2048`) and
//! rows too long for their f32 activations to stay in L1 (`K = 7168`, V3's hidden size, and
//! `K = 10944`, V2-Lite's dense MLP). `linear` picks between one and four streams by the
//! activations' size (`ONE_ROW_MAX_X_BYTES` in `crates/linear/src/kernel/mod.rs`); this
//! is the measurement behind that choice. A fourth order, one row at a time with every line
//! prefetched into L2 4 KiB ahead, is what `linear`'s row kernels do since the hardware
//! prefetchers alone were found to fall short on a Sapphire Rapids.
//!
//! Those four run one parallel pass per matrix, as a layer calls `linear` per projection. A
//! fifth reads the same rows in the prefetched order with each core taking whole matrices,
//! one pass over all of them: what a step would gain from fewer, larger passes (the gap is
//! the cost of a fork-join per matrix; with one matrix, as `lm_head`, one core reads it
//! alone). The decode step did not gain it when its experts' projections were regrouped so,
//! with nested rayon loops or one flat loop of tasks (`benchmarks/README.md`, "Weights
//! prefetched into L2, and where a bf16 decode step's time goes").
//!
//! The orders run interleaved, one pass each per round, over 1 GiB of matrices of a shape
//! read in turn (so none is cache-resident), and the median of the rounds is reported: a
//! shared machine's bandwidth drifts by up to 2x between minutes, which interleaving cancels.
//! The kernel is a plain AVX-512F bf16 dot (two accumulators per row), the same
//! arithmetic for every order; the binary says so and exits where the CPU lacks AVX-512F.
//!
//! Run: `cargo run --release -p benchmarks --bin weight_streams`
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use std::time::Instant;

use anyhow::Result;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use clap::Parser;
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    /// Interleaved rounds (median reported).
    #[arg(long, default_value_t = 25)]
    rounds: usize,
}

/// Bytes of matrices each shape reads per round: past the last-level cache (a Sapphire Rapids
/// class VM reports 480 MB of L3, which held the 64 expert-shaped matrices first read here, 369
/// MB, and flattered the orders that read them), so every order streams from memory.
const READ_BYTES: usize = 1 << 30;

/// Weight bytes per rayon task, as `linear`'s matrix-vector driver splits rows.
const TASK_BYTES: usize = 256 << 10;

fn main() -> Result<()> {
    let args = Args::parse();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return measure(&args);
    }
    println!("weight_streams needs AVX-512F; this CPU lacks it");
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn measure(args: &Args) -> Result<()> {
    println!("# cores {}", rayon::current_num_threads());
    // (rows N, row length K): as many matrices of each, read in turn, as fill READ_BYTES.
    for (n, k) in [
        (1408, 2048),
        (3072, 2048),
        (102400, 2048),
        (2048, 7168),
        (2048, 10944),
    ] {
        let count = READ_BYTES.div_ceil(n * k * 2);
        let mats: Vec<Tensor> = (0..count)
            .map(|_| {
                let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
                linear::advise_huge_pages(&w);
                Ok(w)
            })
            .collect::<Result<_>>()?;
        let guards: Vec<_> = mats.iter().map(|t| t.storage_and_layout()).collect();
        let rows: Vec<&[u16]> = guards
            .iter()
            .map(|(storage, _)| match &**storage {
                Storage::Cpu(CpuStorage::BF16(v)) => {
                    // SAFETY: bf16 is a 16-bit plain-data type; the slice borrows the storage
                    // the guard keeps alive.
                    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u16, v.len()) }
                }
                _ => unreachable!("bf16 CPU tensor"),
            })
            .collect();
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; n];
        let mut times = [vec![], vec![], vec![], vec![], vec![]];
        let orders = [(1usize, false), (2, false), (4, false), (1, true)];
        let mut outs = vec![0f32; n * count];
        for _ in 0..args.rounds {
            for ((streams, ahead), t) in orders.into_iter().zip(&mut times) {
                let start = Instant::now();
                for w in &rows {
                    pass(w, k, &x, &mut out, streams, ahead);
                }
                t.push(start.elapsed().as_secs_f64());
            }
            // The prefetched order again, with each core taking whole matrices: one parallel
            // pass over all of them instead of one per matrix.
            let start = Instant::now();
            outs.par_chunks_mut(n)
                .zip(&rows)
                .for_each(|(o, w)| one_row_each(w, k, &x, o, true));
            times[4].push(start.elapsed().as_secs_f64());
        }
        let bytes = (count * n * k * 2) as f64;
        let gbs = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            bytes / t[t.len() / 2] / 1e9
        };
        let [one, two, four, ahead, whole] = times.each_mut().map(gbs);
        println!(
            "{{\"shape\":\"{count} x [{n}, {k}]\",\"x_bytes\":{},\"one_row_gbs\":{one:.1},\"two_apart_gbs\":{two:.1},\"four_apart_gbs\":{four:.1},\"one_row_prefetched_gbs\":{ahead:.1},\"whole_matrices_gbs\":{whole:.1}}}",
            k * 4
        );
    }
    Ok(())
}

/// One matrix-vector product of `w` (`[N, K]` bf16 bits) with `x`, the rows of each task read
/// as `streams` streams (1, 2 or 4), with every line asked for [`AHEAD`] bytes early when
/// `ahead`.
#[cfg(target_arch = "x86_64")]
fn pass(w: &[u16], k: usize, x: &[f32], out: &mut [f32], streams: usize, ahead: bool) {
    let n = w.len() / k;
    let per_task = (n / (8 * rayon::current_num_threads()))
        .max(TASK_BYTES / (2 * k))
        .clamp(1, n);
    out[..n]
        .par_chunks_mut(per_task)
        .zip(w.par_chunks(per_task * k))
        .for_each(|(o, rows)| {
            let nr = rows.len() / k;
            let row = |r: usize| &rows[r * k..(r + 1) * k];
            let q = nr / streams;
            for i in 0..q {
                match streams {
                    4 => {
                        let at = [i, q + i, 2 * q + i, 3 * q + i];
                        for (r, v) in at.into_iter().zip(dot(at.map(row), x, ahead)) {
                            o[r] = v;
                        }
                    }
                    2 => {
                        let at = [i, q + i];
                        for (r, v) in at.into_iter().zip(dot(at.map(row), x, ahead)) {
                            o[r] = v;
                        }
                    }
                    _ => o[i] = dot([row(i)], x, ahead)[0],
                }
            }
            one_row_each(&rows[streams * q * k..], k, x, &mut o[streams * q..], ahead);
        });
}

/// Rows `w` (`[n, K]` bf16 bits) against `x` one at a time on this thread, into `out[..n]`.
#[cfg(target_arch = "x86_64")]
fn one_row_each(w: &[u16], k: usize, x: &[f32], out: &mut [f32], ahead: bool) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(k)) {
        *o = dot([row], x, ahead)[0];
    }
}

/// How far ahead the prefetched order asks for each weight line (into L2): `linear`'s row
/// kernels' distance and hint (`PREFETCH_AHEAD` in `crates/linear/src/kernel/x86.rs`).
const AHEAD: usize = 4096;

/// `R` bf16 rows against `x`, prefetching [`AHEAD`] bytes ahead in each row when `ahead`.
#[cfg(target_arch = "x86_64")]
fn dot<const R: usize>(w: [&[u16]; R], x: &[f32], ahead: bool) -> [f32; R] {
    assert!(w.iter().all(|r| r.len() >= x.len()));
    // SAFETY: `measure` runs only where AVX-512F was detected; every load is within `x.len()`.
    unsafe { dot_avx512(w, x, ahead) }
}

/// # Safety
/// AVX-512F must be available and every row at least `x.len()` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512<const R: usize>(w: [&[u16]; R], x: &[f32], ahead: bool) -> [f32; R] {
    use std::arch::x86_64::*;
    let odd = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    let mut i = 0;
    while i + 32 <= x.len() {
        // The activations as stored: the evens and the odds of the pairs meet x[i..i + 16]
        // and x[i + 16..i + 32] (a permuted dot product, the same work as the real kernel's).
        let (xe, xo) = (
            _mm512_loadu_ps(x.as_ptr().add(i)),
            _mm512_loadu_ps(x.as_ptr().add(i + 16)),
        );
        for r in 0..R {
            if ahead {
                // A hint: it never faults, so the address may lie past the row.
                let line = (w[r].as_ptr().add(i) as *const i8).wrapping_add(AHEAD);
                _mm_prefetch::<_MM_HINT_T1>(line);
            }
            let v = _mm512_loadu_si512(w[r].as_ptr().add(i) as *const _);
            lo[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)), xe, lo[r]);
            hi[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, odd)), xo, hi[r]);
        }
        i += 32;
    }
    std::array::from_fn(|r| _mm512_reduce_add_ps(_mm512_add_ps(lo[r], hi[r])))
}
