//! Shared helpers for the benchmark binaries in `src/bin/`.
#![deny(missing_docs)]

use std::time::{Duration, Instant};

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

/// Measures this machine's read bandwidth in bytes/s by summing a buffer much larger than
/// the caches with every core (the roofline's denominator).
pub fn read_bandwidth() -> f64 {
    let n = 64 << 20; // 256 MiB of f32
    let buf = vec![1.0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = median_time(1, 5, || {
        std::thread::scope(|s| {
            let chunk = n.div_ceil(threads);
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || sum_lanes(part)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum::<f32>()
        })
    });
    (n * 4) as f64 / t.as_secs_f64()
}

/// A sum with 16 independent accumulators, so it vectorises and is bound by memory, not by
/// the latency of one add chain.
fn sum_lanes(xs: &[f32]) -> f32 {
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
