//! Sparse attention patterns against the dense oracle: each pattern's `forward_sparse` equals
//! dense attention under the equivalent additive mask (`forward_masked`, the mask built here
//! from the patterns' definitions, independently of `SparsePattern::select`), on the
//! expanded and absorbed paths, without a cache, through a cache after a prefix, and one
//! decode step at a time; a pattern that selects everything equals dense attention. Proptest
//! over batch, lengths, windows, block sizes, seeds and top-k indices. Tolerance 1e-4 (f32).

mod common;

use candle_core::{Device, Tensor};
use common::{random_layer, rope_for};
use fixtures::{assert_close, max_abs_diff};
use mla::{AttentionPath, BlockPattern, Mla, SparsePattern};
use proptest::prelude::*;

const TOL: f32 = 1e-4;
const SPARSE_PATHS: [AttentionPath; 3] = [
    AttentionPath::Expanded,
    AttentionPath::Absorbed,
    AttentionPath::Flash,
];

fn input(b: usize, t: usize, seed: u64) -> Tensor {
    // Deterministic per seed: proptest shrinks reproducibly.
    let n = b * t * 64;
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let z = (i as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, (b, t, 64), &Device::Cpu).unwrap()
}

/// Is key `s` kept for query row `row` at key index `p`? The definitions, written out.
fn keeps(pattern: &SparsePattern, row: usize, p: usize, s: usize) -> bool {
    if s > p {
        return false;
    }
    match pattern {
        SparsePattern::Local { window } => p - s < *window,
        SparsePattern::Blocks(b) => {
            let (blk, own) = (s / b.size, p / b.size);
            blk < b.sink || own - blk < b.recent || b.fixed.contains(&blk)
        }
        // Random keys are a function of (seed, p) only: the oracle takes the drawn set, whose
        // properties `random_keys_are_distinct_visible_and_chunk_invariant` checks.
        SparsePattern::Random { .. } => pattern.select(row, p).contains(&s),
        SparsePattern::TopK(rows) => rows[row].contains(&s),
        SparsePattern::Union(ps) => ps.iter().any(|q| keeps(q, row, p, s)),
    }
}

/// The additive mask `[B, T, S]` of `pattern` for `t` queries at the end of `s` keys.
fn mask(pattern: &SparsePattern, b: usize, t: usize, s: usize) -> Tensor {
    let mut v = Vec::with_capacity(b * t * s);
    for bi in 0..b {
        for i in 0..t {
            for k in 0..s {
                let keep = keeps(pattern, bi * t + i, s - t + i, k);
                v.push(if keep { 0.0 } else { f32::NEG_INFINITY });
            }
        }
    }
    Tensor::from_vec(v, (b, t, s), &Device::Cpu).unwrap()
}

/// Sparse vs the masked dense oracle for `x[:, past..]` over a cache holding `x[:, ..past]`
/// (no cache when `past` is `None`), on every path.
fn check(mla: &Mla, x: &Tensor, past: Option<usize>, pattern: &SparsePattern, what: &str) {
    let (b, total, _) = x.dims3().unwrap();
    let run = |sparse: bool, path: AttentionPath| -> Tensor {
        let mut rope = rope_for(mla);
        match past {
            None => {
                if sparse {
                    mla.forward_sparse(x, 0, &mut rope, None, path, pattern)
                } else {
                    let m = mask(pattern, b, total, total);
                    mla.forward_masked(x, 0, &mut rope, None, AttentionPath::Expanded, &m)
                }
            }
            Some(past) => {
                let mut cache = mla.new_cache(b).unwrap();
                if past > 0 {
                    let prefix = x.narrow(1, 0, past).unwrap();
                    mla.forward(&prefix, 0, &mut rope, Some(&mut cache), path)
                        .unwrap();
                }
                let rest = x.narrow(1, past, total - past).unwrap();
                if sparse {
                    mla.forward_sparse(&rest, past, &mut rope, Some(&mut cache), path, pattern)
                } else {
                    let m = mask(pattern, b, total - past, total);
                    let oracle = AttentionPath::Expanded;
                    mla.forward_masked(&rest, past, &mut rope, Some(&mut cache), oracle, &m)
                }
            }
        }
        .unwrap()
    };
    let want = run(false, AttentionPath::Expanded);
    for path in SPARSE_PATHS {
        let got = run(true, path);
        let d = max_abs_diff(&got, &want);
        assert!(
            d <= TOL,
            "{what} {path:?}: max |diff| {d:e} vs the masked dense oracle"
        );
    }
}

fn pattern_strategy() -> impl Strategy<Value = SparsePattern> {
    let leaf = prop_oneof![
        (1..12usize).prop_map(|window| SparsePattern::Local { window }),
        (
            1..8usize,
            0..3usize,
            0..3usize,
            prop::collection::vec(0..6usize, 0..3)
        )
            .prop_map(
                |(size, sink, recent, fixed)| SparsePattern::Blocks(BlockPattern {
                    size,
                    sink,
                    recent,
                    fixed,
                })
            ),
        (1..10usize, any::<u64>()).prop_map(|(keys, seed)| SparsePattern::Random { keys, seed }),
    ];
    prop_oneof![
        3 => leaf.clone(),
        2 => prop::collection::vec(leaf, 1..4).prop_map(SparsePattern::Union),
    ]
    .prop_map(|p| {
        // Every query must keep a key: add its own (window 1) to patterns that may keep none.
        SparsePattern::Union(vec![p, SparsePattern::Local { window: 1 }])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn patterns_equal_dense_attention_under_their_mask(
        b in 1..3usize,
        t in 1..24usize,
        past in prop::option::of(0..20usize),
        q_lora in any::<bool>(),
        pattern in pattern_strategy(),
        seed in any::<u64>(),
    ) {
        let mla = random_layer(q_lora, 0.3);
        let total = t + past.unwrap_or(0);
        let x = input(b, total, seed);
        check(&mla, &x, past, &pattern, &format!("b={b} t={t} past={past:?} {pattern:?}"));
    }

    #[test]
    fn top_k_indices_equal_dense_attention_under_their_mask(
        t in 1..16usize,
        past in 0..16usize,
        picks in prop::collection::vec(prop::collection::vec(0..64usize, 1..10), 32),
        seed in any::<u64>(),
    ) {
        let mla = random_layer(true, 0.3);
        let total = past + t;
        let x = input(2, total, seed);
        // Two sequences x t rows; each row's first pick is clamped to a visible key, so no
        // row is empty; the others may be in the future (dropped) or repeated.
        let rows: Vec<Vec<usize>> = (0..2 * t)
            .map(|row| {
                let p = past + row % t;
                let mut r = picks[row % picks.len()].clone();
                r[0] %= p + 1;
                r
            })
            .collect();
        check(&mla, &x, Some(past), &SparsePattern::TopK(rows), &format!("t={t} past={past}"));
    }
}

#[test]
fn selecting_everything_equals_dense_attention() {
    let mla = random_layer(true, 0.3);
    let x = input(2, 30, 5);
    let everything = [
        SparsePattern::Local { window: 1000 },
        SparsePattern::Blocks(BlockPattern {
            size: 7,
            sink: 0,
            recent: 10,
            fixed: vec![],
        }),
        SparsePattern::Random { keys: 100, seed: 3 },
    ];
    for pattern in &everything {
        for path in SPARSE_PATHS {
            let mut rope = rope_for(&mla);
            let dense = mla.forward(&x, 0, &mut rope, None, path).unwrap();
            let sparse = mla
                .forward_sparse(&x, 0, &mut rope, None, path, pattern)
                .unwrap();
            assert_close(
                &sparse,
                &dense,
                1e-5,
                &format!("{pattern:?} {path:?} prefill"),
            );
            // Decode through the cache, one token at a time.
            let mut cache = mla.new_cache(2).unwrap();
            let mut outs = vec![];
            for i in 0..30 {
                let xi = x.narrow(1, i, 1).unwrap();
                outs.push(
                    mla.forward_sparse(&xi, i, &mut rope, Some(&mut cache), path, pattern)
                        .unwrap(),
                );
            }
            let decode = Tensor::cat(&outs, 1).unwrap();
            assert_close(
                &decode,
                &dense,
                1e-5,
                &format!("{pattern:?} {path:?} decode"),
            );
        }
    }
}

#[test]
fn decode_steps_equal_one_prefill_and_drop_keys() {
    // A long-ish context over several cache pages would be slow here; 300 keys in 2 chunks +
    // decode steps are enough to show chunk invariance of a local + sink + random pattern.
    let mla = random_layer(false, 0.3);
    let pattern = SparsePattern::local_sink_random(16, 8, 4, 42);
    let x = input(1, 300, 9);
    let mut rope = rope_for(&mla);
    let path = AttentionPath::Absorbed;
    let one = mla
        .forward_sparse(&x, 0, &mut rope, None, path, &pattern)
        .unwrap();
    let mut cache = mla.new_cache(1).unwrap();
    let mut outs = vec![];
    for (start, n) in [(0, 200), (200, 90)] {
        let xi = x.narrow(1, start, n).unwrap();
        outs.push(
            mla.forward_sparse(&xi, start, &mut rope, Some(&mut cache), path, &pattern)
                .unwrap(),
        );
    }
    for i in 290..300 {
        let xi = x.narrow(1, i, 1).unwrap();
        outs.push(
            mla.forward_sparse(&xi, i, &mut rope, Some(&mut cache), path, &pattern)
                .unwrap(),
        );
    }
    assert_close(
        &Tensor::cat(&outs, 1).unwrap(),
        &one,
        1e-5,
        "chunks + decode",
    );
    // At most 16 + 8 + 4 keys per query out of up to 300: the pattern is really sparse, and
    // the result differs from dense attention.
    assert!(pattern.select(0, 299).len() <= 28);
    let dense = mla.forward(&x, 0, &mut rope, None, path).unwrap();
    assert!(max_abs_diff(&dense, &one) > 1e-3);
}

#[test]
fn random_keys_are_distinct_visible_and_chunk_invariant() {
    let p = SparsePattern::Random { keys: 5, seed: 7 };
    for q in 0..50 {
        let keys = p.select(0, q);
        assert_eq!(keys.len(), 5.min(q + 1), "query {q}");
        assert!(keys.windows(2).all(|w| w[0] < w[1]) && keys.iter().all(|&k| k <= q));
        // A function of the position only (not of the row, i.e. of how calls are split).
        assert_eq!(keys, p.select(17, q));
    }
    let other = SparsePattern::Random { keys: 5, seed: 8 };
    assert_ne!(p.select(0, 49), other.select(0, 49));
}

#[test]
fn errors_name_the_pattern_field() {
    let mla = random_layer(false, 0.3);
    let x = input(1, 4, 1);
    let mut rope = rope_for(&mla);
    let path = AttentionPath::Absorbed;
    let err = |p: SparsePattern| {
        mla.forward_sparse(&x, 0, &mut rope_for(&mla), None, path, &p)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(SparsePattern::Local { window: 0 }),
        "sparse pattern window: must be > 0"
    );
    assert!(err(SparsePattern::TopK(vec![vec![0]; 3])).starts_with("sparse pattern top_k: holds 3"));
    let none = SparsePattern::Blocks(BlockPattern {
        size: 2,
        sink: 0,
        recent: 0,
        fixed: vec![1],
    });
    // Queries 0 and 1 (block 0) select nothing.
    assert!(err(none).contains("query 0 (key 0) of sequence 0 selects no key"));
    let e = mla
        .forward_masked(
            &x,
            0,
            &mut rope,
            None,
            path,
            &Tensor::zeros((4, 5), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("mask: expected [4, 4]"), "{e}");
}
