//! The panel layout of quantised matrices (8, 6, 5 and 4-bit values: GGUF's Q8_0, Q6_K,
//! Q5_0 / Q5_1 / Q5_K, Q4_0 / Q4_1 / Q4_K and this crate's formats), the storage the
//! AVX512-VNNI panel kernel ([`super::x86_512_panels`]) reads for every number of activation
//! rows: [`NR`] weight rows interleaved so that one `vpdpbusd` multiplies four values of
//! sixteen rows at once, as llama.cpp's CPU "repack" buffers do for Q4_0.
//!
//! Why: a row-by-row kernel spends, per row, the work of forming its group factors and of a
//! horizontal sum at the end; with one row per lane both disappear, and decode (one activation
//! row) is then bound by the bytes it reads. The same panels serve any number of activation
//! rows with the same per-row arithmetic, so the product is batch-invariant at every size.
//!
//! Layout, per panel of [`NR`] rows (rows past the matrix are zeros), per group `g` of 32
//! values ([`group_bytes`] each), every vector 64 bytes of 16 lanes (rows `16h..16h + 16` of
//! half `h`), lane `l` holding four bytes `t`:
//! - **8 bits**: per `p` in `0..4`, half `h` and `s` in `0..2`, byte `t` = value
//!   `32g + 16s + 4p + t` of row `16h + l` (quad `p + 4s`, stored unsigned: the weight plus
//!   128), so the kernel reads the group's bytes in order;
//! - **4, 5 and 6 bits**: per `p` in `0..4` and half, byte `t` = the low four bits of value
//!   `32g + 4p + t` (quad `p`) in its low nibble and of value `32g + 16 + 4p + t` (quad
//!   `p + 4`) in its high nibble: nibbles stay packed and are split in registers. Then the
//!   higher bits, per half: for 5 bits one vector whose byte `t` holds bit 4 of quad `q`'s
//!   value in bit `q`; for 6 bits two vectors (quads `0..4`, then `4..8`) whose byte `t`
//!   holds bits 4-5 of quad `q`'s value in bits `2 (q mod 4)..`.
//!
//! The parameters go to panel order too ([`to_panels`]): every per-row field `[N, per]`
//! becomes `[panels, per, NR]`, so a group's 32 scales are one contiguous load.

use rayon::prelude::*;

use super::act8::GROUP;

/// Weight rows per panel (two halves of 16 lanes).
pub(crate) const NR: usize = 32;

/// Bytes of the four nibble vectors of each half of a group.
const NIBBLES: usize = 4 * 2 * 64;

/// Bytes per (panel, group) of `bits`-bit values (8, 6, 5 or 4).
pub(crate) const fn group_bytes(bits: usize) -> usize {
    match bits {
        8 => 8 * 2 * 64,
        6 => NIBBLES + 2 * 2 * 64,
        5 => NIBBLES + 2 * 64,
        _ => NIBBLES,
    }
}

/// Panels of `n` rows.
pub(crate) fn panels(n: usize) -> usize {
    n.div_ceil(NR)
}

/// Where the bits of value `j` of row `i` (< [`NR`]) of a panel live, relative to its group:
/// `(byte, shift)` of its low part (the whole value for 8 bits, four bits otherwise) and, for
/// 5 and 6 bits, of its higher bits.
fn slots(bits: usize, i: usize, j: usize) -> ((usize, u32), Option<(usize, u32)>) {
    let (within, h, l) = (j % GROUP, i / 16, i % 16);
    let (quad, t) = (within / 4, within % 4);
    let lane = 64 * h + 4 * l + t;
    if bits == 8 {
        return (
            ((((quad % 4) * 2 + h) * 2 + quad / 4) * 64 + 4 * l + t, 0),
            None,
        );
    }
    let low = ((quad % 4) * 128 + lane, 4 * (quad / 4) as u32);
    let high = match bits {
        5 => Some((NIBBLES + lane, quad as u32)),
        6 => Some((
            NIBBLES + 128 * h + 64 * (quad / 4) + 4 * l + t,
            2 * (quad % 4) as u32,
        )),
        _ => None,
    };
    (low, high)
}

/// `[n, k]` values of `bits` bits (unsigned; `row(r, out)` writes row `r`'s `k` values) in the
/// panel layout.
pub(crate) fn pack(
    bits: usize,
    n: usize,
    k: usize,
    row: impl Fn(usize, &mut [u8]) + Sync,
) -> Vec<u8> {
    let (groups, size) = (k.div_ceil(GROUP), group_bytes(bits));
    let mut out = vec![0u8; panels(n) * groups * size];
    let place = match bits {
        8 => place::<8>,
        6 => place::<6>,
        5 => place::<5>,
        _ => place::<4>,
    };
    out.par_chunks_mut((groups * size).max(1))
        .enumerate()
        .for_each(|(b, panel)| {
            // Rows padded with zeros to whole groups.
            let mut values = vec![0u8; groups * GROUP];
            for i in 0..NR.min(n.saturating_sub(b * NR)) {
                row(b * NR + i, &mut values[..k]);
                for (g, v) in values.as_chunks::<GROUP>().0.iter().enumerate() {
                    place(i, v, &mut panel[g * size..(g + 1) * size]);
                }
            }
        });
    out
}

/// The 32 values `v` of one group of panel row `i` into the group's bytes `out` (the layout
/// [`slots`] describes, four bytes at a time; `BITS` a constant, so no branch per byte: this
/// runs over every weight at load).
fn place<const BITS: usize>(i: usize, v: &[u8; GROUP], out: &mut [u8]) {
    let (h, l) = (i / 16, i % 16);
    for p in 0..4 {
        let (a, b) = (&v[4 * p..4 * p + 4], &v[16 + 4 * p..16 + 4 * p + 4]);
        if BITS == 8 {
            let at = (p * 2 + h) * 128 + 4 * l;
            out[at..at + 4].copy_from_slice(a);
            out[at + 64..at + 68].copy_from_slice(b);
            continue;
        }
        let lane = 64 * h + 4 * l;
        for t in 0..4 {
            out[p * 128 + lane + t] = (a[t] & 0xF) | (b[t] & 0xF) << 4;
            if BITS == 5 {
                out[NIBBLES + lane + t] |= (a[t] >> 4) << p | (b[t] >> 4) << (4 + p);
            }
            if BITS == 6 {
                let at = NIBBLES + 128 * h + 4 * l + t;
                out[at] |= (a[t] >> 4) << (2 * p);
                out[at + 64] |= (b[t] >> 4) << (2 * p);
            }
        }
    }
}

/// Row `r`'s `k` values (as [`pack`] took them) from the panels `v` of `bits`-bit values.
pub(crate) fn unpack_row(bits: usize, v: &[u8], k: usize, r: usize, out: &mut [u8]) {
    let (groups, size) = (k.div_ceil(GROUP), group_bytes(bits));
    let panel = &v[r / NR * groups * size..][..groups * size];
    for (j, out) in out[..k].iter_mut().enumerate() {
        let at = j / GROUP * size;
        let ((low, shift), high) = slots(bits, r % NR, j);
        let mask = if bits == 8 { 0xFF } else { 0xF };
        *out = (panel[at + low] >> shift) & mask;
        if let Some((byte, shift)) = high {
            let width = if bits == 5 { 1 } else { 3 };
            *out |= ((panel[at + byte] >> shift) & width) << 4;
        }
    }
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

    /// Packing and unpacking give back every value and field, for every width, partial
    /// panels and a partial last group.
    #[test]
    fn the_layout_round_trips() {
        for bits in [4, 5, 6, 8] {
            for (n, k) in [(1, 2), (5, 30), (32, 64), (33, 96), (70, 290)] {
                let value = |r: usize, j: usize| ((r * 131 + j * 37) % (1 << bits)) as u8;
                let packed = pack(bits, n, k, |r, out| {
                    out.iter_mut()
                        .enumerate()
                        .for_each(|(j, v)| *v = value(r, j))
                });
                assert_eq!(
                    packed.len(),
                    panels(n) * k.div_ceil(GROUP) * group_bytes(bits)
                );
                let mut row = vec![0u8; k];
                for r in 0..n {
                    unpack_row(bits, &packed, k, r, &mut row);
                    assert!(
                        (0..k).all(|j| row[j] == value(r, j)),
                        "{bits} bits [{n}, {k}] row {r}"
                    );
                }
            }
        }
        let (n, per) = (70, 3);
        let field: Vec<u16> = (0..n * per).map(|i| i as u16 + 1).collect();
        let laid = to_panels(&field, n, per);
        assert_eq!(laid[per * NR - 1], field[NR * per - 1]);
        assert_eq!(from_panels(&laid, n, per), field);
    }

    /// Value `j` of row `i` sits where the kernel reads it.
    #[test]
    fn values_sit_in_their_lanes() {
        // 4 bits: quad j % 32 / 4 of the group, low nibbles for the first 16 values.
        assert_eq!(slots(4, 0, 0), ((0, 0), None));
        assert_eq!(slots(4, 0, 16), ((0, 4), None));
        assert_eq!(slots(4, 0, 5), ((128 + 1, 0), None));
        assert_eq!(slots(4, 17, 3), ((64 + 4 + 3, 0), None));
        assert_eq!(slots(4, 2, 32 + 31), ((3 * 128 + 8 + 3, 4), None));
        // 8 bits: quads p and p + 4 of a half side by side.
        assert_eq!(
            slots(8, 17, 29),
            ((((3 * 2 + 1) * 2 + 1) * 64 + 4 + 1, 0), None)
        );
        // The fifth bit of quad 6 in bit 6; bits 4-5 of quad 6 in the second vector, bits 4-5.
        assert_eq!(slots(5, 1, 25).1, Some((NIBBLES + 4 + 1, 6)));
        assert_eq!(slots(6, 17, 25).1, Some((NIBBLES + 128 + 64 + 4 + 1, 4)));
    }
}
