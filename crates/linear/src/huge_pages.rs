//! Weight matrices in transparent huge pages.
//!
//! A decode step streams every weight matrix once; with 4 KiB pages that is a TLB miss and a
//! restart of the hardware prefetcher every 4 KiB (every row of a 2048-wide bf16 matrix), i.e.
//! ~264k page walks per V2-Lite-4L token. 2 MiB pages cut that 512-fold.
//!
//! Weights usually live in memory the allocator recycled (already backed by 4 KiB pages), so
//! `MADV_HUGEPAGE` alone would only affect future faults; `MADV_COLLAPSE` (Linux 6.1+)
//! rebuilds the range into huge pages synchronously, contents unchanged.

use candle_core::{Storage, Tensor};

/// Below this size a matrix holds too little of an aligned 2 MiB page to matter.
const MIN_BYTES: usize = 4 << 20;
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;
/// `MADV_COLLAPSE` (Linux 6.1); spelled out because older `libc` releases lack it.
#[cfg(target_os = "linux")]
const MADV_COLLAPSE: libc::c_int = 25;

/// Asks the kernel to back the 2 MiB-aligned interior of the contiguous CPU tensor `w` with
/// transparent huge pages, in place. Returns whether it applied (Linux, a CPU tensor of at
/// least 4 MiB, and the kernel accepted; THP disabled or an old kernel just leave 4 KiB pages).
/// Values never change.
///
/// Whether to call it at all is the caller's decision (a loader option, say); this crate reads
/// no environment variables.
pub fn advise_huge_pages(w: &Tensor) -> bool {
    let bytes = w.elem_count() * w.dtype().size_in_bytes();
    if bytes < MIN_BYTES {
        return false;
    }
    let (storage, layout) = w.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, _))) = (&*storage, layout.contiguous_offsets()) else {
        return false;
    };
    let Some(base) = cpu_base_address(cpu) else {
        return false;
    };
    advise(base + start * w.dtype().size_in_bytes(), bytes)
}

/// [`advise_huge_pages`] for bytes in place, e.g. a matrix's range of a memory-mapped
/// checkpoint ([`crate::SharedBytes`]). Whether a file's pages can be huge depends on the
/// kernel and the file system (Linux collapses read-only file mappings only with
/// `CONFIG_READ_ONLY_THP_FOR_FS`); the return value says whether it applied.
pub fn advise_huge_pages_bytes(bytes: &[u8]) -> bool {
    bytes.len() >= MIN_BYTES && advise(bytes.as_ptr() as usize, bytes.len())
}

/// Address of the first element of a CPU buffer.
fn cpu_base_address(cpu: &candle_core::CpuStorage) -> Option<usize> {
    use candle_core::CpuStorage as C;
    Some(match cpu {
        C::F32(v) => v.as_ptr() as usize,
        C::BF16(v) => v.as_ptr() as usize,
        C::F16(v) => v.as_ptr() as usize,
        C::F64(v) => v.as_ptr() as usize,
        _ => return None,
    })
}

#[cfg(target_os = "linux")]
fn advise(addr: usize, len: usize) -> bool {
    let start = addr.next_multiple_of(HUGE_PAGE);
    let end = (addr + len) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return false;
    }
    let (ptr, len) = (start as *mut libc::c_void, end - start);
    // SAFETY: [start, end) lies inside memory the caller holds alive (a tensor's storage under
    // its read guard, or borrowed bytes); these advices change how the kernel backs the pages,
    // never their contents.
    unsafe {
        libc::madvise(ptr, len, libc::MADV_HUGEPAGE) == 0
            && libc::madvise(ptr, len, MADV_COLLAPSE) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_addr: usize, _len: usize) -> bool {
    false
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
}
