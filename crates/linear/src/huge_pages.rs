//! Weight matrices in transparent huge pages.
//!
//! A decode step streams every weight matrix once; with 4 KiB pages that is a TLB miss and a
//! restart of the hardware prefetcher every 4 KiB (every row of a 2048-wide bf16 matrix), i.e.
//! ~264k page walks per V2-Lite-4L token. 2 MiB pages cut that 512-fold.
//!
//! Weights usually live in memory the allocator recycled (already backed by 4 KiB pages), so
//! `MADV_HUGEPAGE` alone would only affect future faults; `MADV_COLLAPSE` (Linux 6.1+)
//! rebuilds the range into huge pages synchronously, contents unchanged.
//!
//! Only whole 2 MiB pages inside the advised memory are collapsed, so a matrix alone gets the
//! aligned interior of its allocation. A matrix of a few MiB (V2-Lite's routed experts: 3 MB
//! in 8 bits, 1.6 MB in 4) has at most one such page, often none. Matrices made one after
//! another lie next to each other in the heap, though, so [`advise_matrices_huge_pages`]
//! takes a set of them (a layer's) and advises the union of their allocations: each run of
//! neighbouring allocations is one range, and its interior is almost all of it.

use std::ops::Range;

use rayon::prelude::*;

use candle_core::{Storage, Tensor};

use crate::Matrix;

/// Allocations at most this far apart count as one range ([`advise_matrices_huge_pages`]):
/// the allocator's headers and the small allocations made between two matrices (a matrix's
/// own parameters, the structs that hold it). The memory in between belongs to the process
/// and keeps its contents; at most this much of it per gap becomes resident.
const NEIGHBOUR_GAP: usize = 64 << 10;
const HUGE_PAGE: usize = 2 << 20;
/// The most one task of [`advise_spans`] advises (a multiple of [`HUGE_PAGE`]).
const PIECE: usize = 32 << 20;
/// `MADV_COLLAPSE` (Linux 6.1); spelled out because older `libc` releases lack it.
#[cfg(target_os = "linux")]
const MADV_COLLAPSE: libc::c_int = 25;

/// Asks the kernel to back the 2 MiB-aligned interior of the contiguous CPU tensor `w` with
/// transparent huge pages, in place. Returns whether it applied (Linux, a CPU tensor holding
/// a whole aligned 2 MiB page, and the kernel accepted; THP disabled or an old kernel just
/// leave 4 KiB pages). Values never change.
///
/// Whether to call it at all is the caller's decision (a loader option, say); this crate reads
/// no environment variables.
pub fn advise_huge_pages(w: &Tensor) -> bool {
    tensor_span(w).is_some_and(|span| advise(span) > 0)
}

/// [`advise_huge_pages`] for bytes in place, e.g. a matrix's range of a memory-mapped
/// checkpoint ([`crate::SharedBytes`]). Whether a file's pages can be huge depends on the
/// kernel and the file system (Linux collapses read-only file mappings only with
/// `CONFIG_READ_ONLY_THP_FOR_FS`); the return value says whether it applied.
pub fn advise_huge_pages_bytes(bytes: &[u8]) -> bool {
    advise(bytes_span(bytes)) > 0
}

/// Backs the host memory of `matrices` with transparent huge pages, in place, taken together:
/// their allocations (values and parameters) sorted by address, neighbours at most 64 KiB
/// apart joined into one range, and the 2 MiB-aligned interior of each range advised as
/// [`advise_huge_pages`] does. Returns the bytes the kernel accepted. Values never change;
/// GGML blocks on candle's kernels and device memory are skipped.
///
/// A layer's matrices are made one after another, so their union is a few long ranges where
/// each alone would mostly be too small for a 2 MiB page of its own.
pub fn advise_matrices_huge_pages(matrices: &[&Matrix]) -> usize {
    advise_spans(matrices.iter().flat_map(|m| m.host_spans()).collect())
}

/// [`advise_matrices_huge_pages`] of address ranges: joined where neighbours, each advised.
pub(crate) fn advise_spans(mut spans: Vec<Range<usize>>) -> usize {
    spans.sort_by_key(|s| s.start);
    joined(spans)
        .into_iter()
        .flat_map(pieces)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(advise)
        .sum()
}

/// Advises `MADV_HUGEPAGE` on the 2 MiB-aligned interiors of `spans` (address ranges; sorted
/// and neighbours joined as [`advise_matrices_huge_pages`] joins allocations) and nothing else:
/// for memory nothing has touched yet, whose pages are then faulted in as 2 MiB pages from the
/// first write. Nothing is collapsed or made resident, and no value changes; a range the
/// process does not map is refused by the kernel. Returns the bytes the kernel accepted.
pub fn advise_huge_pages_ahead(mut spans: Vec<Range<usize>>) -> usize {
    spans.sort_by_key(|s| s.start);
    joined(spans)
        .into_iter()
        .map(|span| advise_with(span, false))
        .sum()
}

/// `span` cut at 2 MiB boundaries into pieces of [`PIECE`] at most, advised in parallel:
/// `MADV_COLLAPSE` copies each 2 MiB page it rebuilds, about 1 GB/s per core.
fn pieces(span: Range<usize>) -> Vec<Range<usize>> {
    let start = span.start.next_multiple_of(HUGE_PAGE);
    (start..span.end)
        .step_by(PIECE)
        .map(|s| s..(s + PIECE).min(span.end))
        .collect()
}

/// `spans` (sorted by start) with neighbours at most [`NEIGHBOUR_GAP`] apart, or overlapping,
/// joined.
fn joined(spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans.into_iter().filter(|s| !s.is_empty()) {
        match out.last_mut() {
            Some(last) if span.start <= last.end.saturating_add(NEIGHBOUR_GAP) => {
                last.end = last.end.max(span.end);
            }
            _ => out.push(span),
        }
    }
    out
}

/// The address range of `bytes`.
pub(crate) fn bytes_span(bytes: &[u8]) -> Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

/// The address range of a slice's elements.
pub(crate) fn slice_span<T>(values: &[T]) -> Range<usize> {
    let start = values.as_ptr() as usize;
    start..start + std::mem::size_of_val(values)
}

/// The address range of a contiguous CPU tensor's elements (`None` on a device, for a strided
/// view, or for a dtype whose buffer this does not read).
pub(crate) fn tensor_span(w: &Tensor) -> Option<Range<usize>> {
    use candle_core::CpuStorage as C;
    let (storage, layout) = w.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return None;
    };
    let all = match cpu {
        C::F32(v) => slice_span(v),
        C::BF16(v) => slice_span(v),
        C::F16(v) => slice_span(v),
        C::F64(v) => slice_span(v),
        C::F8E4M3(v) => slice_span(v),
        _ => return None,
    };
    let size = w.dtype().size_in_bytes();
    Some(all.start + start * size..all.start + end * size)
}

/// Advises the 2 MiB-aligned interior of `span` and collapses it into huge pages; the bytes
/// advised, 0 where there is no whole page inside or the kernel refused.
fn advise(span: Range<usize>) -> usize {
    advise_with(span, true)
}

/// `MADV_HUGEPAGE` on the 2 MiB-aligned interior of `span`, then with `collapse`
/// `MADV_COLLAPSE`; the bytes advised, 0 where there is no whole page inside or the kernel
/// refused.
#[cfg(target_os = "linux")]
fn advise_with(span: Range<usize>, collapse: bool) -> usize {
    let start = span.start.next_multiple_of(HUGE_PAGE);
    let end = span.end / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return 0;
    }
    let (ptr, len) = (start as *mut libc::c_void, end - start);
    // SAFETY: these advices change how the kernel backs the pages of [start, end), never
    // their contents (a range the process does not map is refused). The callers pass memory
    // the process holds alive: the storage of tensors and matrices they borrow, borrowed
    // bytes, between neighbouring allocations the process's own heap, and for the advice
    // ahead, heap memory the caller holds.
    let applied = unsafe {
        libc::madvise(ptr, len, libc::MADV_HUGEPAGE) == 0
            && (!collapse || libc::madvise(ptr, len, MADV_COLLAPSE) == 0)
    };
    if applied {
        len
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_with(_span: Range<usize>, _collapse: bool) -> usize {
    0
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn values_are_untouched_and_small_tensors_are_skipped() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (2048, 2048), &dev).unwrap(); // 16 MiB
        let before: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let applied = advise_huge_pages(&w);
        println!("huge pages applied: {applied}");
        let after: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(before, after);
        assert!(!advise_huge_pages(
            &Tensor::ones((4, 4), DType::F32, &dev).unwrap()
        ));
    }

    /// Advice ahead on untouched memory: the aligned interior is accepted (on Linux with THP), small
    /// spans are skipped, and what is written afterwards reads back.
    #[test]
    fn advice_ahead_covers_the_aligned_interior_and_keeps_values() {
        let len = 8 * HUGE_PAGE;
        let mut v: Vec<u32> = Vec::with_capacity(len / 4);
        let span = slice_span(v.spare_capacity_mut());
        let advised = advise_huge_pages_ahead(vec![span.clone()]);
        // (A kernel built without transparent huge pages refuses the advice.)
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        if cfg!(target_os = "linux") && thp {
            let interior =
                span.end / HUGE_PAGE * HUGE_PAGE - span.start.next_multiple_of(HUGE_PAGE);
            assert_eq!(advised, interior);
        }
        let small = span.start..span.start + 4096;
        assert_eq!(advise_huge_pages_ahead(vec![small]), 0);
        v.extend((0..len as u32 / 4).map(|i| i.wrapping_mul(2654435761)));
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u32).wrapping_mul(2654435761)));
    }

    #[test]
    fn neighbours_join_and_distant_allocations_stay_apart() {
        let gap = NEIGHBOUR_GAP;
        assert_eq!(
            joined(vec![
                0..10,
                5..8,
                10..20,
                20 + gap..30 + gap,
                31 + 2 * gap..40 + 2 * gap
            ]),
            vec![0..30 + gap, 31 + 2 * gap..40 + 2 * gap]
        );
        assert_eq!(joined(vec![3..3, 7..9]), vec![7..9]);
        assert!(joined(Vec::new()).is_empty());
    }

    #[test]
    fn pieces_cover_the_aligned_interior_once() {
        let span = HUGE_PAGE + 5..3 * PIECE + 7;
        let p = pieces(span.clone());
        assert_eq!(p.first().unwrap().start, 2 * HUGE_PAGE);
        assert_eq!(p.last().unwrap().end, span.end);
        assert!(p.windows(2).all(|w| w[0].end == w[1].start));
        assert!(p
            .iter()
            .all(|r| r.start % HUGE_PAGE == 0 && r.len() <= PIECE));
    }

    /// A layer's worth of matrices made one after another, each too small for a huge page of
    /// its own, advised together: every product keeps its bits.
    #[test]
    fn matrices_advised_together_keep_their_products() {
        use crate::{Isa, QuantFormat, QuantMatrix};
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 1024), &dev).unwrap();
        let matrices: Vec<Matrix> = (0..6)
            .map(|i| {
                let w = Tensor::randn(0f32, 0.02, (1024 + 32 * i, 1024), &dev).unwrap();
                let format = [QuantFormat::Q8, QuantFormat::Q4][i % 2];
                Matrix::from(QuantMatrix::quantize(&w, format).unwrap())
            })
            .collect();
        let products = |ms: &[Matrix]| -> Vec<Vec<f32>> {
            ms.iter()
                .map(|m| {
                    let y = m.forward_with(Isa::detect(), &x).unwrap();
                    y.flatten_all().unwrap().to_vec1().unwrap()
                })
                .collect()
        };
        let before = products(&matrices);
        let advised = advise_matrices_huge_pages(&matrices.iter().collect::<Vec<_>>());
        println!("bytes advised: {advised}");
        assert_eq!(products(&matrices), before);
    }
}
