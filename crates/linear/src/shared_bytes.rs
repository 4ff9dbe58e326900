//! [`SharedBytes`]: host bytes someone else owns (a memory-mapped checkpoint), used in place.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use candle_core::Result;

/// What can own the bytes: a read-only memory map of a checkpoint shard (`memmap2::Mmap`
/// implements `AsRef<[u8]>`), or any other buffer.
pub type ByteOwner = dyn AsRef<[u8]> + Send + Sync;

/// A byte range of a buffer someone else owns, kept alive by a shared handle. A matrix built
/// on it ([`crate::Fp8Matrix::from_shared`]) reads the bytes where they are: for a memory-mapped
/// checkpoint that means no copy at load, and pages that belong to the page cache (shared
/// with every process that maps the same file, and dropped under memory pressure instead of
/// swapped) rather than to the process.
///
/// A file mapped this way must not be modified while it is mapped (the same contract as
/// `memmap2::Mmap` itself).
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<ByteOwner>,
    range: Range<usize>,
}

impl SharedBytes {
    /// `range` of `owner`'s bytes; an error if it does not lie inside them.
    pub fn new(owner: Arc<ByteOwner>, range: Range<usize>) -> Result<Self> {
        let len = (*owner).as_ref().len();
        if range.start > range.end || range.end > len {
            candle_core::bail!("byte range {range:?} does not lie inside a buffer of {len} bytes");
        }
        Ok(Self { owner, range })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    /// Their number.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The bytes `range` of these (relative to their start), held by the same owner: no copy.
    /// An error if it does not lie inside them.
    pub fn slice(&self, range: Range<usize>) -> Result<Self> {
        if range.start > range.end || range.end > self.len() {
            candle_core::bail!(
                "byte range {range:?} does not lie inside {} shared bytes",
                self.len()
            );
        }
        let start = self.range.start;
        Ok(Self {
            owner: Arc::clone(&self.owner),
            range: start + range.start..start + range.end,
        })
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_the_buffer_are_refused() {
        let owner: Arc<ByteOwner> = Arc::new(vec![1u8, 2, 3, 4]);
        let b = SharedBytes::new(owner.clone(), 1..3).unwrap();
        assert_eq!(b.as_slice(), &[2, 3]);
        assert_eq!(b.len(), 2);
        assert!(SharedBytes::new(owner.clone(), 2..5).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 3..2;
        assert!(SharedBytes::new(owner, reversed).is_err());
        assert_eq!(b.slice(1..2).unwrap().as_slice(), &[3]);
        assert!(b.slice(1..3).is_err());
    }
}
