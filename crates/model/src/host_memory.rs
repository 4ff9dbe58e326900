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

/// Free memory at the top of the heap above which `malloc` gives it back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

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
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
