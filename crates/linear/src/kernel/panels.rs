//! The panel layout of 4-bit matrices (GGUF's Q4_0, Q4_1, Q4_K and this crate's Q4), the
//! storage the AVX512-VNNI panel kernel ([`super::x86_512_panels`]) reads for every number of
//! activation rows: [`NR`] weight rows interleaved so that one `vpdpbusd` multiplies four
//! values of sixteen rows at once, as llama.cpp's CPU "repack" buffers do for Q4_0.
//!
//! Why: a row-by-row kernel spends, per row, the work of forming its group factors and of a
//! horizontal sum at the end; with one row per lane both disappear, and decode (one activation
//! row) is then bound by the bytes it reads. The same panels serve any number of activation
//! rows with the same per-row arithmetic, so the product is batch-invariant at every size.
//!
//! Layout, per panel of [`NR`] rows (rows past the matrix are zeros), per group `g` of 32
//! values, per `p` in `0..4`, per half `h` (rows `16h..16h + 16`): 64 bytes, lane `l` holding
//! four bytes, byte `t` = value `32g + 4p + t` of row `16h + l` in its low nibble and value
//! `32g + 16 + 4p + t` in its high nibble. So the low nibbles of the four vectors are quads
//! `0..4` of the group, the high nibbles quads `4..8`; nibbles stay packed (4 bits per weight
//! read, as stored on disk) and are split in registers.
//!
//! The parameters go to panel order too ([`to_panels`]): every per-row field `[N, per]`
//! becomes `[panels, per, NR]`, so a group's 32 scales are one contiguous load.

use rayon::prelude::*;

use super::act8::GROUP;
use super::U4x2;

/// Weight rows per panel (two halves of 16 lanes).
pub(crate) const NR: usize = 32;

/// Bytes per (panel, group): four vectors of 64 bytes per half.
pub(crate) const GROUP_BYTES: usize = 4 * 2 * 64;

/// Panels of `n` rows.
pub(crate) fn panels(n: usize) -> usize {
    n.div_ceil(NR)
}

/// Where value `j` (< `K`) of row `i` (< [`NR`]) of a panel lives: its byte and whether it is
/// the high nibble.
fn slot(i: usize, j: usize) -> (usize, bool) {
    let (g, within) = (j / GROUP, j % GROUP);
    let (high, v) = (within >= 16, within % 16);
    let (p, t) = (v / 4, v % 4);
    let (h, l) = (i / 16, i % 16);
    ((((g * 4 + p) * 2 + h) * 64) + 4 * l + t, high)
}

/// `[n, k]` 4-bit values (row-major pairs, `k` even) in the panel layout.
pub(crate) fn pack_u4(w: &[U4x2], n: usize, k: usize) -> Vec<u8> {
    let groups = k.div_ceil(GROUP);
    let mut out = vec![0u8; panels(n) * groups * GROUP_BYTES];
    out.par_chunks_mut((groups * GROUP_BYTES).max(1))
        .enumerate()
        .for_each(|(b, panel)| {
            for i in 0..NR.min(n.saturating_sub(b * NR)) {
                let row = &w[(b * NR + i) * k / 2..][..k / 2];
                for (j, pair) in row.iter().enumerate() {
                    for (half, v) in [(0, pair.0 & 0xF), (1, pair.0 >> 4)] {
                        let (at, high) = slot(i, 2 * j + half);
                        panel[at] |= if high { v << 4 } else { v };
                    }
                }
            }
        });
    out
}

/// The inverse of [`pack_u4`]: the row-major pairs.
pub(crate) fn unpack_u4(v: &[u8], n: usize, k: usize) -> Vec<U4x2> {
    let groups = k.div_ceil(GROUP);
    let mut out = vec![U4x2(0); n * k / 2];
    out.par_chunks_mut((k / 2).max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let panel = &v[r / NR * groups * GROUP_BYTES..][..groups * GROUP_BYTES];
            let value = |j: usize| {
                let (at, high) = slot(r % NR, j);
                if high {
                    panel[at] >> 4
                } else {
                    panel[at] & 0xF
                }
            };
            for (j, pair) in row.iter_mut().enumerate() {
                *pair = U4x2(value(2 * j) | value(2 * j + 1) << 4);
            }
        });
    out
}

/// A per-row field `[n, per]` (row-major) as `[panels, per, NR]`, rows past `n` the default.
pub(crate) fn to_panels<T: Copy + Default + Send + Sync>(
    src: &[T],
    n: usize,
    per: usize,
) -> Vec<T> {
    if src.is_empty() {
        return Vec::new();
    }
    let mut out = vec![T::default(); panels(n) * per * NR];
    out.par_chunks_mut((per * NR).max(1))
        .enumerate()
        .for_each(|(b, panel)| {
            for i in 0..NR.min(n.saturating_sub(b * NR)) {
                for (c, &x) in src[(b * NR + i) * per..][..per].iter().enumerate() {
                    panel[c * NR + i] = x;
                }
            }
        });
    out
}

/// The inverse of [`to_panels`].
pub(crate) fn from_panels<T: Copy + Default + Send + Sync>(
    src: &[T],
    n: usize,
    per: usize,
) -> Vec<T> {
    if src.is_empty() {
        return Vec::new();
    }
    let mut out = vec![T::default(); n * per];
    out.par_chunks_mut(per.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let panel = &src[r / NR * per * NR..];
            for (c, x) in row.iter_mut().enumerate() {
                *x = panel[c * NR + r % NR];
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing and unpacking give back every value and field, for partial panels and a
    /// partial last group.
    #[test]
    fn the_layout_round_trips() {
        for (n, k) in [(1, 2), (5, 30), (32, 64), (33, 96), (70, 290)] {
            let w: Vec<U4x2> = (0..n * k / 2).map(|i| U4x2((i * 37 % 251) as u8)).collect();
            let packed = pack_u4(&w, n, k);
            assert_eq!(packed.len(), panels(n) * k.div_ceil(GROUP) * GROUP_BYTES);
            assert!(unpack_u4(&packed, n, k) == w, "[{n}, {k}]");
            let per = 3;
            let field: Vec<u16> = (0..n * per).map(|i| i as u16 + 1).collect();
            let laid = to_panels(&field, n, per);
            assert_eq!(
                laid[per * NR - 1],
                if n >= NR { field[NR * per - 1] } else { 0 }
            );
            assert_eq!(from_panels(&laid, n, per), field);
        }
    }

    /// Value `j` of row `i` sits where the kernel reads it: quad `j % 32 / 4` of the group in
    /// the low nibbles for the first 16 values, the high ones for the rest.
    #[test]
    fn values_sit_in_their_lanes() {
        assert_eq!(slot(0, 0), (0, false));
        assert_eq!(slot(0, 16), (0, true));
        assert_eq!(slot(0, 5), (64 * 2 + 1, false));
        assert_eq!(slot(17, 3), (64 + 4 + 3, false));
        assert_eq!(slot(2, 32 + 31), (512 + 3 * 128 + 8 + 3, true));
    }
}
