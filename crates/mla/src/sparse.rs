//! Sparse attention patterns over the latent cache: which keys each query attends to.
//!
//! A [`SparsePattern`] names, for a query whose own key sits at index `p` of the attended keys
//! (its absolute position when a cache holds the earlier tokens), a set of keys `K(p)`; the
//! sparse forward ([`Mla::forward_sparse`](crate::Mla::forward_sparse)) gathers only those
//! latent rows and attends over them:
//!
//! ```text
//! K(p)   = pattern(p) ∩ {0, ..., p}                       always intersected with causality
//! o_h(p) = Σ_{s ∈ K(p)} softmax_{s ∈ K(p)}(score_hs) · W_UV_h c_kv_s
//! ```
//!
//! which equals dense attention under the additive mask `M[p, s] = 0` for `s ∈ K(p)`, `-inf`
//! elsewhere. The patterns:
//!
//! - [`SparsePattern::Local`]: a sliding window, `K(p) = {p - W + 1, ..., p}`.
//! - [`SparsePattern::Blocks`]: keys in blocks of `size`; whole blocks are selected: the first
//!   `sink` blocks, the query's own block and the `recent - 1` before it, and any listed blocks.
//! - [`SparsePattern::Random`]: `min(keys, p + 1)` distinct visible keys drawn uniformly by a
//!   generator seeded with `(seed, p)`, so a query sees the same keys whether its tokens come
//!   in one prefill, in chunks or one decode step at a time.
//! - [`SparsePattern::TopK`]: explicit key indices per query row, e.g. from DeepSeek-V3.2's
//!   lightning indexer ([`Indexer`](crate::Indexer)).
//! - [`SparsePattern::Union`]: the union of several patterns (local + block for long-range
//!   structure, local + random for diversity, ...).
//!
//! A query that selects no key is an error (its softmax would be empty).

use crate::error::{MlaError, Result};

/// The block part of a [`SparsePattern::Blocks`]: key `s` lies in block `s / size`, and a
/// query at `p` (in block `p / size`) sees every visible key of the selected blocks:
///
/// ```text
/// blocks(p) = {0, ..., sink - 1} ∪ {p/size - recent + 1, ..., p/size} ∪ fixed
/// K(p)      = {s ≤ p : s / size ∈ blocks(p)}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPattern {
    /// Keys per block (> 0).
    pub size: usize,
    /// The first `sink` blocks ("attention sinks", global structure).
    pub sink: usize,
    /// The query's own block and the `recent - 1` blocks before it (0: none).
    pub recent: usize,
    /// Further blocks by index, seen by every query they do not lie in the future of.
    pub fixed: Vec<usize>,
}

/// Which keys each query attends to; see the [module docs](self) for the definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SparsePattern {
    /// Each query sees its last `window` keys, itself included: `K(p) = {p - W + 1, ..., p}`.
    Local {
        /// `W` (> 0).
        window: usize,
    },
    /// Whole blocks of keys, selected per query ([`BlockPattern`]).
    Blocks(BlockPattern),
    /// `min(keys, p + 1)` distinct visible keys drawn uniformly at random, from a generator
    /// seeded with `(seed, p)` (SplitMix64, Floyd's sampling): a function of the query's
    /// position, not of how the tokens are split into calls.
    Random {
        /// Keys per query (> 0).
        keys: usize,
        /// The seed.
        seed: u64,
    },
    /// Explicit key indices per query row, for the call they are made for: row `b·T + i` holds
    /// the keys of query `i` (of the call's `T`) in sequence `b`. Indices in a query's future
    /// are dropped (causality), repeats count once.
    TopK(Vec<Vec<usize>>),
    /// The union of the patterns' key sets.
    Union(Vec<SparsePattern>),
}

impl SparsePattern {
    /// Local + sink-block + random, the combination the source material describes: the last
    /// `window` keys, the first block of `block` keys, and `random` keys drawn with `seed`.
    pub fn local_sink_random(window: usize, block: usize, random: usize, seed: u64) -> Self {
        Self::Union(vec![
            Self::Local { window },
            Self::Blocks(BlockPattern {
                size: block,
                sink: 1,
                recent: 0,
                fixed: vec![],
            }),
            Self::Random { keys: random, seed },
        ])
    }

    /// Checks every parameter, naming the one out of range; `rows` is the number of query
    /// rows (`B·T`) of the call, which a [`SparsePattern::TopK`] must match.
    pub fn validate(&self, rows: usize) -> Result<()> {
        let bad =
            |field: &'static str, reason: String| Err(MlaError::InvalidPattern { field, reason });
        match self {
            Self::Local { window: 0 } => bad("window", "must be > 0".into()),
            Self::Blocks(b) if b.size == 0 => bad("size", "block size must be > 0".into()),
            Self::Random { keys: 0, .. } => bad("keys", "must be > 0".into()),
            Self::TopK(r) if r.len() != rows => bad(
                "top_k",
                format!(
                    "holds {} query rows, the call has {rows} (batch · tokens)",
                    r.len()
                ),
            ),
            Self::Union(ps) if ps.is_empty() => bad("union", "is empty".into()),
            Self::Union(ps) => ps.iter().try_for_each(|p| p.validate(rows)),
            _ => Ok(()),
        }
    }

    /// The keys (ascending, distinct, all `<= query`) that query row `row` (`b·T + i`, only
    /// read by [`SparsePattern::TopK`]) whose own key is `query` attends to.
    pub fn select(&self, row: usize, query: usize) -> Vec<usize> {
        let mut out = Vec::new();
        self.collect(row, query, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect(&self, row: usize, p: usize, out: &mut Vec<usize>) {
        match self {
            Self::Local { window } => out.extend((p + 1).saturating_sub(*window)..=p),
            Self::Blocks(b) => {
                let own = p / b.size;
                let mut blocks: Vec<usize> = (0..b.sink.min(own + 1)).collect();
                blocks.extend((own + 1).saturating_sub(b.recent)..=own);
                blocks.extend(b.fixed.iter().copied().filter(|&f| f <= own));
                blocks.sort_unstable();
                blocks.dedup();
                for blk in blocks {
                    let lo = blk * b.size;
                    out.extend(lo..(lo + b.size).min(p + 1));
                }
            }
            Self::Random { keys, seed } => out.extend(random_keys(*seed, p, *keys)),
            Self::TopK(rows) => {
                if let Some(r) = rows.get(row) {
                    out.extend(r.iter().copied().filter(|&s| s <= p));
                }
            }
            Self::Union(ps) => ps.iter().for_each(|q| q.collect(row, p, out)),
        }
    }
}

impl std::str::FromStr for SparsePattern {
    type Err = MlaError;

    /// Parses a comma-separated union of position patterns (the command line's `--sparse`):
    ///
    /// - `local:W`: [`SparsePattern::Local`] with window `W`;
    /// - `block:SIZE[:SINK[:RECENT]]`: [`SparsePattern::Blocks`] of `SIZE` keys, the first
    ///   `SINK` blocks (default 1) and the query's own block with the `RECENT - 1` before it
    ///   (default 1);
    /// - `random:R[:SEED]`: [`SparsePattern::Random`] with `R` keys per query (seed default 0).
    ///
    /// One part gives that pattern, several their [`SparsePattern::Union`]; every parameter is
    /// validated ([`SparsePattern::validate`]). `local:256,block:64:1:0,random:32:7` is a
    /// 256-token window, the first 64 tokens and 32 random keys.
    fn from_str(spec: &str) -> Result<Self> {
        let bad = |field: &'static str, reason: String| MlaError::InvalidPattern { field, reason };
        let mut parts = Vec::new();
        for part in spec.split(',').map(str::trim) {
            let mut fields = part.split(':');
            let kind = fields.next().unwrap_or_default();
            let nums = fields
                .map(|f| {
                    f.parse::<u64>().map_err(|e| {
                        bad(
                            "sparse",
                            format!("{part:?}: {f:?} is not a non-negative integer ({e})"),
                        )
                    })
                })
                .collect::<Result<Vec<u64>>>()?;
            let arity = |lo: usize, hi: usize, usage: &str| {
                if (lo..=hi).contains(&nums.len()) {
                    Ok(())
                } else {
                    Err(bad("sparse", format!("{part:?}: expected {usage}")))
                }
            };
            let at = |i: usize, default: u64| nums.get(i).copied().unwrap_or(default) as usize;
            parts.push(match kind {
                "local" => {
                    arity(1, 1, "local:WINDOW")?;
                    Self::Local { window: at(0, 0) }
                }
                "block" => {
                    arity(1, 3, "block:SIZE[:SINK[:RECENT]]")?;
                    Self::Blocks(BlockPattern {
                        size: at(0, 0),
                        sink: at(1, 1),
                        recent: at(2, 1),
                        fixed: vec![],
                    })
                }
                "random" => {
                    arity(1, 2, "random:KEYS[:SEED]")?;
                    Self::Random {
                        keys: at(0, 0),
                        seed: nums.get(1).copied().unwrap_or(0),
                    }
                }
                other => {
                    return Err(bad(
                        "sparse",
                        format!("{other:?} is not a pattern (local, block or random)"),
                    ))
                }
            });
        }
        let pattern = match <[Self; 1]>::try_from(parts) {
            Ok([one]) => one,
            Err(parts) => Self::Union(parts),
        };
        pattern.validate(0)?;
        Ok(pattern)
    }
}

/// `min(k, p + 1)` distinct keys of `0..=p`, uniformly, by Floyd's algorithm over a
/// SplitMix64 stream seeded with `(seed, p)`.
fn random_keys(seed: u64, p: usize, k: usize) -> Vec<usize> {
    let n = p + 1;
    if k >= n {
        return (0..n).collect();
    }
    let mut state = seed ^ (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    for j in n - k..n {
        let r = (next() % (j as u64 + 1)) as usize;
        let pick = if chosen.contains(&r) { j } else { r };
        chosen.push(pick);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_are_distinct_visible_and_seeded() {
        for p in [0, 1, 5, 63, 200] {
            for k in [1, 3, 8, 300] {
                let a = random_keys(11, p, k);
                let mut d = a.clone();
                d.sort_unstable();
                d.dedup();
                assert_eq!(d.len(), k.min(p + 1), "p={p} k={k}");
                assert!(a.iter().all(|&s| s <= p));
                assert_eq!(a, random_keys(11, p, k));
            }
        }
        assert_ne!(random_keys(1, 200, 8), random_keys(2, 200, 8));
    }

    #[test]
    fn patterns_parse_from_the_command_line_spelling() {
        let p: SparsePattern = "local:256, block:64:1:0,random:32:7".parse().unwrap();
        assert_eq!(
            p,
            SparsePattern::Union(vec![
                SparsePattern::Local { window: 256 },
                SparsePattern::Blocks(BlockPattern {
                    size: 64,
                    sink: 1,
                    recent: 0,
                    fixed: vec![]
                }),
                SparsePattern::Random { keys: 32, seed: 7 },
            ])
        );
        assert_eq!(
            "block:16".parse::<SparsePattern>().unwrap(),
            SparsePattern::Blocks(BlockPattern {
                size: 16,
                sink: 1,
                recent: 1,
                fixed: vec![]
            })
        );
        assert_eq!(
            "random:4".parse::<SparsePattern>().unwrap(),
            SparsePattern::Random { keys: 4, seed: 0 }
        );
        for bad in [
            "",
            "local",
            "local:0",
            "local:-1",
            "local:4:5",
            "dense:3",
            "block:0",
        ] {
            let e = bad.parse::<SparsePattern>().unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn blocks_select_sink_recent_and_fixed() {
        let b = SparsePattern::Blocks(BlockPattern {
            size: 4,
            sink: 1,
            recent: 2,
            fixed: vec![3, 9],
        });
        // p = 25 is in block 6: blocks 0, 3, 5, 6 (9 is in the future).
        let want: Vec<usize> = [0..4, 12..16, 20..26].into_iter().flatten().collect();
        assert_eq!(b.select(0, 25), want);
        let none = SparsePattern::Blocks(BlockPattern {
            size: 4,
            sink: 0,
            recent: 0,
            fixed: vec![],
        });
        assert!(none.select(0, 9).is_empty());
        let sink_only = SparsePattern::Blocks(BlockPattern {
            size: 4,
            sink: 1,
            recent: 0,
            fixed: vec![],
        });
        assert_eq!(sink_only.select(0, 9), vec![0, 1, 2, 3]);
    }
}
