//! The process's heap, tuned for a forward pass (a setting for binaries, never called by the
//! library itself: it changes `malloc` for the whole process).
//!
//! A prefill chunk allocates and frees tensors of megabytes many times per layer. glibc's
//! `malloc` serves such blocks with `mmap` and hands them back with `munmap` (or trims the
//! heap), so every tensor costs fresh pages: a page fault and a zeroed page per 4 KiB, and a
//! TLB shoot-down on release. On a 512-token prefill of the V2-Lite-shaped benchmark checkpoint
//! that was ~14% of the samples (page faults, `munmap`). Keeping freed blocks in the heap lets
//! the next tensor of the same size reuse pages already mapped.

/// Largest block `malloc` still takes from the heap rather than `mmap` (bigger blocks: the
/// 4-layer benchmark's largest activation in a 2,048-token chunk is ~90 MB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 30;

/// Free memory at the top of the heap above which `malloc` gives it back to the system: -1,
/// never (glibc's value for "no trimming"; [`reserve_huge_page_heap`] frees more than the
/// largest positive value).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = -1;

/// Arenas `malloc` may create. A forward pass runs on rayon's worker threads, and each thread
/// would otherwise get an arena of its own, whose heaps are at most 64 MiB: bigger tensors
/// allocated there are mapped fresh whatever `M_MMAP_THRESHOLD` says, and each arena keeps its
/// own free blocks. One arena lets every thread reuse the same freed blocks (small blocks stay
/// in each thread's cache, so the shared lock is rarely taken).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;

/// Tells glibc's `malloc` to serve blocks up to 1 GiB from the heap, to keep freed memory
/// for reuse instead of returning it to the system, and to keep one heap for all threads
/// (`mallopt` `M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`, `M_ARENA_MAX`). The process then holds
/// its peak heap until it exits, which an inference process does anyway from the first prompt
/// on. Returns whether the settings applied (false off glibc, where nothing changes).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; both values are in range.
        let applied = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
        };
        RETAINED.store(applied, std::sync::atomic::Ordering::SeqCst);
        applied
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether [`retain_freed_memory`] applied.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static RETAINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The pieces [`reserve_huge_page_heap`] takes: under `MMAP_THRESHOLD`, so from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RESERVE_PIECE: usize = 256 << 20;

/// Grows the heap by about `bytes`, advises that memory `MADV_HUGEPAGE` while nothing has
/// touched it, and frees it for `malloc` to hand out: what the process allocates next there
/// (weights re-laid at load, then activations) is faulted in as 2 MiB pages from the start,
/// instead of 4 KiB pages that `linear`'s `MADV_COLLAPSE` later copies into huge pages (a third
/// of a GGUF file's load here, `benchmarks/README.md`). The memory stays virtual until used.
/// Call it after [`retain_freed_memory`] (without it the heap would be trimmed back, and it
/// does nothing); returns the bytes advised. Huge pages at fault time follow the system's THP
/// setting (`madvise` or `always`; nothing with `never`).
pub fn reserve_huge_page_heap(bytes: usize) -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if !RETAINED.load(std::sync::atomic::Ordering::SeqCst) || bytes == 0 {
            return 0;
        }
        // Sized up front: a reallocation here could land between the pieces.
        let mut pieces: Vec<(*mut libc::c_void, usize)> =
            Vec::with_capacity(bytes.div_ceil(RESERVE_PIECE));
        let mut left = bytes;
        while left > 0 {
            let size = left.min(RESERVE_PIECE);
            // SAFETY: a plain allocation, freed below.
            let p = unsafe { libc::malloc(size) };
            if p.is_null() {
                break;
            }
            pieces.push((p, size));
            left -= size;
        }
        // The pieces lie one after another in the heap (only malloc's chunk headers between
        // them), so joined they are one range, and the 2 MiB pages across their boundaries
        // count too.
        let advised = linear::advise_huge_pages_ahead(
            pieces
                .iter()
                .map(|&(p, size)| p as usize..p as usize + size)
                .collect(),
        );
        for (p, _) in pieces {
            // SAFETY: allocated above by malloc, freed once.
            unsafe { libc::free(p) };
        }
        advised
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        0
    }
}

/// Both settings a CPU inference process makes before loading the checkpoint at `path`:
/// [`retain_freed_memory`], then [`reserve_huge_page_heap`] of [`checkpoint_bytes`]. Returns
/// the bytes advised (0 where the settings do not apply).
pub fn prepare_heap_for(path: &std::path::Path) -> usize {
    retain_freed_memory();
    reserve_huge_page_heap(checkpoint_bytes(path))
}

/// The bytes of the checkpoint at `path` (a file, or a directory's `.safetensors` and `.gguf`
/// files), capped at the machine's memory: about what a load copies into the heap at most,
/// for [`reserve_huge_page_heap`]. 0 where it cannot be read (the load reports that).
pub fn checkpoint_bytes(path: &std::path::Path) -> usize {
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let total = if path.is_dir() {
        std::fs::read_dir(path).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "safetensors" || e == "gguf")
                })
                .map(|p| size(&p))
                .sum()
        })
    } else {
        size(path)
    };
    usize::try_from(total)
        .unwrap_or(usize::MAX)
        .min(physical_memory())
}

/// The machine's memory in bytes (`usize::MAX` where unknown).
fn physical_memory() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf reads a system value.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && page > 0 {
            return (pages as usize).saturating_mul(page as usize);
        }
    }
    usize::MAX
}
