//! Reads of tensor data into host memory, counted.
//!
//! On a GPU, reading a tensor's values on the host is a device-to-host copy that waits for
//! every queued kernel: inside a forward pass it stalls the device once per read. The engine
//! crates (`linear`, `rope-yarn`, `mla`, `moe`, `mtp`, `model`) therefore read tensors only
//! through this module (clippy's `disallowed_methods`, configured in the workspace's
//! `clippy.toml`, rejects `Tensor::to_vec*` / `to_scalar` elsewhere; the CPU kernels, which
//! read CPU tensors only, are marked where they do), and [`reads`] counts every such read, on
//! any device. A test can then prove that a code path makes none: the model's device-dispatch
//! decode step is checked this way on the CPU.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor, WithDType};

static READS: AtomicU64 = AtomicU64::new(0);

/// Host reads made so far by this process (all threads).
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

fn count() {
    READS.fetch_add(1, Ordering::Relaxed);
}

/// A rank-0 tensor's value on the host (one counted read).
#[allow(clippy::disallowed_methods)] // the counted read itself
pub fn scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    count();
    t.to_scalar()
}

/// A rank-1 tensor's values on the host (one counted read).
#[allow(clippy::disallowed_methods)] // the counted read itself
pub fn vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count();
    t.to_vec1()
}

/// A rank-2 tensor's rows on the host (one counted read).
#[allow(clippy::disallowed_methods)] // the counted read itself
pub fn vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
    count();
    t.to_vec2()
}
