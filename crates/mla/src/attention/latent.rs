//! The absorbed attention of a few query rows over the latent cache, fused on the CPU: the
//! flash-decoding form of [`super::Mla`]'s absorbed path, which reads each cached latent once
//! per step while it is in cache, where the candle-ops path (kept as the oracle) reads the
//! cache twice and materialises the scores.
//!
//! For one sequence with query rows `q_j = (q_lat_j, q_pe_j)` (heads x new tokens) and keys
//! `k_s = (c_s, kpe_s)`:
//!
//! ```text
//! score_js = scale · (q_lat_j · c_s + q_pe_j · kpe_s)      (-inf past row j's causal limit)
//! out_j    = Σ_s softmax_s(score_j)_s · c_s                 [R], W_UV applied by the caller
//! ```
//!
//! The keys are cut into chunks of at most [`KEY_CHUNK`] keys inside one page, and the chunks
//! into at most [`MAX_GROUPS`] consecutive groups (fewer when many query rows would make
//! their accumulators large) that run in parallel. A group walks its
//! chunks in order with the online softmax (running max `m`, running sum `l`, accumulator
//! rescaled by `exp(m_old - m_new)`); a chunk's scores come from [`linear::slices::x_wt`]
//! and its weighted sum from [`linear::slices::add_x_w`] while the chunk's latents are in L2.
//! The groups' partial results merge in order:
//!
//! ```text
//! M = max_g m_g,   out = Σ_g e^{m_g - M} acc_g / Σ_g e^{m_g - M} l_g
//! ```
//!
//! Chunk and group boundaries depend only on the keys' layout, never on the thread count, so
//! a row's result is the same on every run and whatever else is in the batch.

use std::ops::Deref;

use candle_core::{CpuStorage, Storage, Tensor};
use linear::{slices, Isa};
use rayon::prelude::*;

use crate::cache::LatentKeys;
use crate::error::Result;

/// Most keys per chunk: `256 · R · 4` bytes of latents (512 KiB for R = 512) stay in L2
/// between the scores and the weighted sum.
pub(crate) const KEY_CHUNK: usize = 256;

/// Most groups of chunks.
pub(crate) const MAX_GROUPS: usize = 64;

/// Bytes the groups' `[rows, R]` f32 accumulators may take together (fewer groups for many
/// rows, at least one).
const ACC_BUDGET: usize = 32 << 20;

/// One sequence's queries: `rows` rows ordered head-major (`row = head · tokens + token`).
pub(crate) struct Queries<'a> {
    /// `[rows, R]`: `q_nope · W_UK` per head.
    pub q_lat: &'a [f32],
    /// `[rows, r]`: the roped query part.
    pub q_pe: &'a [f32],
    /// New tokens `T`: row `h · T + t` sees keys `0..=S - T + t`.
    pub tokens: usize,
    /// The softmax scale.
    pub scale: f32,
}

/// One page's keys: `c` `[len, R]` and `k_pe` `[len, r]`, row-major.
#[derive(Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub c: &'a [f32],
    pub k_pe: &'a [f32],
}

/// A chunk: segment, first key inside it, keys, first key's global index.
#[derive(Clone, Copy)]
struct Chunk {
    seg: usize,
    start: usize,
    len: usize,
    global: usize,
}

/// A group's online-softmax state.
struct Partial {
    /// Per row: running max (`-inf` while every key seen is masked).
    m: Vec<f32>,
    /// Per row: running sum of `exp(score - m)`.
    l: Vec<f32>,
    /// `[rows, R]`: running weighted sum.
    acc: Vec<f32>,
}

/// `out` `[rows, R]` of the module docs, for `keys` (the segments in order; `rk` = R, `r` the
/// rope width). `S` (the total key count) must be at least `q.tokens`.
pub(crate) fn attend(
    isa: Isa,
    q: &Queries<'_>,
    keys: &[Segment<'_>],
    rk: usize,
    r: usize,
) -> Vec<f32> {
    let rows = q.q_lat.len() / rk;
    let mut chunks = vec![];
    let mut global = 0;
    for (seg, s) in keys.iter().enumerate() {
        let len = s.c.len() / rk;
        for start in (0..len).step_by(KEY_CHUNK) {
            let n = KEY_CHUNK.min(len - start);
            chunks.push(Chunk {
                seg,
                start,
                len: n,
                global: global + start,
            });
        }
        global += len;
    }
    let total = global;
    let groups = MAX_GROUPS.min(ACC_BUDGET / (rows * rk * 4).max(1)).max(1);
    let per_group = chunks.len().div_ceil(groups).max(1);
    let partials: Vec<Partial> = chunks
        .par_chunks(per_group)
        .map(|group| {
            let mut p = Partial {
                m: vec![f32::NEG_INFINITY; rows],
                l: vec![0.0; rows],
                acc: vec![0.0; rows * rk],
            };
            for c in group {
                chunk_step(isa, q, &keys[c.seg], *c, total, rk, r, &mut p);
            }
            p
        })
        .collect();
    merge(partials, rows, rk)
}

/// One chunk of the online softmax into `p`.
#[allow(clippy::too_many_arguments)]
fn chunk_step(
    isa: Isa,
    q: &Queries<'_>,
    seg: &Segment<'_>,
    chunk: Chunk,
    total: usize,
    rk: usize,
    r: usize,
    p: &mut Partial,
) {
    let rows = p.m.len();
    let n = chunk.len;
    let c = &seg.c[chunk.start * rk..(chunk.start + n) * rk];
    let k_pe = &seg.k_pe[chunk.start * r..(chunk.start + n) * r];
    let mut s = slices::x_wt(isa, q.q_lat, rows, c, rk); // [rows, n]
    let s_pe = slices::x_wt(isa, q.q_pe, rows, k_pe, r);
    for row in 0..rows {
        // Row h·T + t sees keys up to S - T + t.
        let visible = (total - q.tokens + row % q.tokens + 1)
            .saturating_sub(chunk.global)
            .min(n);
        let sr = &mut s[row * n..(row + 1) * n];
        for (v, pe) in sr.iter_mut().zip(&s_pe[row * n..]) {
            *v = (*v + pe) * q.scale;
        }
        let chunk_max = sr[..visible]
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let m_new = p.m[row].max(chunk_max);
        if m_new == f32::NEG_INFINITY {
            sr.fill(0.0); // nothing visible yet
            continue;
        }
        let alpha = (p.m[row] - m_new).exp(); // 0 when m was -inf
        let mut sum = 0.0;
        for (i, v) in sr.iter_mut().enumerate() {
            *v = if i < visible { (*v - m_new).exp() } else { 0.0 };
            sum += *v;
        }
        p.l[row] = p.l[row] * alpha + sum;
        p.m[row] = m_new;
        if alpha != 1.0 {
            for a in &mut p.acc[row * rk..(row + 1) * rk] {
                *a *= alpha;
            }
        }
    }
    slices::add_x_w(isa, &s, rows, c, rk, &mut p.acc);
}

/// The groups' states merged in order (module docs).
fn merge(partials: Vec<Partial>, rows: usize, rk: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * rk];
    for row in 0..rows {
        let big = partials
            .iter()
            .map(|p| p.m[row])
            .fold(f32::NEG_INFINITY, f32::max);
        let o = &mut out[row * rk..(row + 1) * rk];
        let mut l = 0.0;
        for p in &partials {
            if p.m[row] == f32::NEG_INFINITY {
                continue;
            }
            let w = (p.m[row] - big).exp();
            l += w * p.l[row];
            for (o, a) in o.iter_mut().zip(&p.acc[row * rk..(row + 1) * rk]) {
                *o += w * a;
            }
        }
        for o in o.iter_mut() {
            *o /= l;
        }
    }
    out
}

/// [`attend`] for every sequence of `q_lat` `[B, rows, R]` and `q_pe` `[B, rows, r]` over
/// `keys` (`[B, len, ·]` segments): `[B, rows, R]`, or `None` when an operand is not f32 in CPU
/// memory with contiguous rows (the caller runs the candle-ops path then).
pub(crate) fn attend_tensors(
    q_lat: &Tensor,
    q_pe: &Tensor,
    tokens: usize,
    scale: f32,
    keys: &LatentKeys,
) -> Result<Option<Tensor>> {
    let (b, rows, rk) = q_lat.dims3()?;
    let r = q_pe.dim(2)?;
    let (q_lat, q_pe) = (q_lat.contiguous()?, q_pe.contiguous()?);
    let Some(q_lat_all) = CpuRows::of(&q_lat) else {
        return Ok(None);
    };
    let Some(q_pe_all) = CpuRows::of(&q_pe) else {
        return Ok(None);
    };
    let mut segs = Vec::with_capacity(keys.segments().len());
    for (c, k) in keys.segments() {
        match (CpuRows::of(c), CpuRows::of(k)) {
            (Some(c), Some(k)) => segs.push((c, k)),
            _ => return Ok(None),
        }
    }
    let isa = Isa::detect();
    let mut out = Vec::with_capacity(b * rows * rk);
    for seq in 0..b {
        let queries = Queries {
            q_lat: q_lat_all.seq(seq, rows * rk),
            q_pe: q_pe_all.seq(seq, rows * r),
            tokens,
            scale,
        };
        let segments: Vec<Segment> = segs
            .iter()
            .map(|(c, k)| {
                let len = c.len;
                Segment {
                    c: c.seq(seq, len * rk),
                    k_pe: k.seq(seq, len * r),
                }
            })
            .collect();
        out.extend(attend(isa, &queries, &segments, rk, r));
    }
    Ok(Some(Tensor::from_vec(out, (b, rows, rk), q_lat.device())?))
}

/// A `[B, len, width]` f32 CPU tensor whose rows of each sequence lie back to back: the read
/// guard on its storage and where each sequence starts.
struct CpuRows<G> {
    storage: G,
    start: usize,
    seq_stride: usize,
    len: usize,
}

impl CpuRows<()> {
    fn of(t: &Tensor) -> Option<CpuRows<impl Deref<Target = Storage> + '_>> {
        let (storage, layout) = t.storage_and_layout();
        let (&[_, len, width], &[seq_stride, row_stride, 1]) = (layout.dims(), layout.stride())
        else {
            return None;
        };
        if row_stride != width && len > 1 {
            return None;
        }
        if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
            return None;
        }
        Some(CpuRows {
            start: layout.start_offset(),
            storage,
            seq_stride,
            len,
        })
    }
}

impl<G: Deref<Target = Storage>> CpuRows<G> {
    /// Sequence `seq`'s `n` values.
    fn seq(&self, seq: usize, n: usize) -> &[f32] {
        let Storage::Cpu(CpuStorage::F32(v)) = &*self.storage else {
            unreachable!("checked in CpuRows::of")
        };
        let at = self.start + seq * self.seq_stride;
        &v[at..at + n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module docs' equations in f64, over the keys joined.
    fn oracle(q: &Queries<'_>, c: &[f32], k_pe: &[f32], rk: usize, r: usize) -> Vec<f64> {
        let rows = q.q_lat.len() / rk;
        let s = c.len() / rk;
        let mut out = vec![0f64; rows * rk];
        for row in 0..rows {
            let limit = s - q.tokens + row % q.tokens; // last visible key
            let scores: Vec<f64> = (0..=limit)
                .map(|j| {
                    let lat: f64 = (0..rk)
                        .map(|i| q.q_lat[row * rk + i] as f64 * c[j * rk + i] as f64)
                        .sum();
                    let pe: f64 = (0..r)
                        .map(|i| q.q_pe[row * r + i] as f64 * k_pe[j * r + i] as f64)
                        .sum();
                    (lat + pe) * q.scale as f64
                })
                .collect();
            let big = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = scores.iter().map(|v| (v - big).exp()).sum();
            for (j, v) in scores.iter().enumerate() {
                let p = (v - big).exp() / l;
                for i in 0..rk {
                    out[row * rk + i] += p * c[j * rk + i] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn fused_attention_matches_f64_reference() {
        let (rk, r) = (40, 8);
        let val = |i: usize, s: f32| ((i as f32 * 0.377 + s).sin()) * 1.3;
        // Pages of unequal length: several chunks and groups, a page shorter than a chunk.
        for (lens, heads, tokens) in [
            (vec![700usize, 5, 300], 3usize, 3usize),
            (vec![1], 2, 1),
            (vec![2, 2], 4, 4),
            (vec![KEY_CHUNK * MAX_GROUPS + 77], 2, 1),
        ] {
            let s: usize = lens.iter().sum();
            let rows = heads * tokens;
            let c: Vec<f32> = (0..s * rk).map(|i| val(i, 0.2)).collect();
            let k_pe: Vec<f32> = (0..s * r).map(|i| val(i, 1.1)).collect();
            let q_lat: Vec<f32> = (0..rows * rk).map(|i| val(i, 2.9)).collect();
            let q_pe: Vec<f32> = (0..rows * r).map(|i| val(i, 0.6)).collect();
            let q = Queries {
                q_lat: &q_lat,
                q_pe: &q_pe,
                tokens,
                scale: 0.3,
            };
            let mut segments = vec![];
            let mut at = 0;
            for &len in &lens {
                segments.push(Segment {
                    c: &c[at * rk..(at + len) * rk],
                    k_pe: &k_pe[at * r..(at + len) * r],
                });
                at += len;
            }
            let want = oracle(&q, &c, &k_pe, rk, r);
            for isa in Isa::supported() {
                let got = attend(isa, &q, &segments, rk, r);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()),
                        "{isa} {lens:?}: element {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
