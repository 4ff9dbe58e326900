//! The latent cache: rollback leaves no stale entries, growth keeps contents, batches with
//! per-sequence lengths, and exactly (R + rope) values per token.
#![allow(clippy::disallowed_methods)] // tests read results on the host

mod common;

use candle_core::{DType, Device, Tensor};
use common::{random_layer, rope_for, run_every_path, PATHS};
use fixtures::max_abs_diff;
use mla::{AttentionPath, KvLayout, LatentKvCache, LayerCache, MlaConfig};

fn decode(
    mla: &mla::Mla,
    rope: &mut rope_yarn::RopeCache,
    cache: &mut LayerCache,
    xs: &Tensor,
    start: usize,
    path: AttentionPath,
) -> Tensor {
    let t = xs.dim(1).unwrap();
    let steps: Vec<Tensor> = (0..t)
        .map(|i| {
            mla.forward(
                &xs.narrow(1, i, 1).unwrap(),
                start + i,
                rope,
                Some(cache),
                path,
            )
            .unwrap()
        })
        .collect();
    Tensor::cat(&steps, 1).unwrap()
}

#[test]
fn rollback_leaves_no_stale_entries() {
    // Decode 5 tokens, truncate to 3, decode 2 different tokens: must equal a fresh run of
    // the 3 kept tokens followed by the 2 new ones (speculative-decoding rejection).
    let mla = random_layer(true, 0.2);
    let a = fixtures::seeded_randn(&[1, 5, 64], 1.0, 42);
    let b = fixtures::seeded_randn(&[1, 2, 64], 1.0, 43);
    for path in PATHS {
        let mut rope = rope_for(&mla);
        let mut cache = mla.new_cache(1).unwrap();
        decode(&mla, &mut rope, &mut cache, &a, 0, path);
        cache.truncate(3);
        assert_eq!(cache.lens(), &[3]);
        let rolled = decode(&mla, &mut rope, &mut cache, &b, 3, path);

        let mut fresh_cache = mla.new_cache(1).unwrap();
        let kept = a.narrow(1, 0, 3).unwrap();
        decode(&mla, &mut rope, &mut fresh_cache, &kept, 0, path);
        let fresh = decode(&mla, &mut rope, &mut fresh_cache, &b, 3, path);
        assert_eq!(max_abs_diff(&rolled, &fresh), 0.0, "{path:?}");
        let (c1, k1) = cache.views().unwrap();
        let (c2, k2) = fresh_cache.views().unwrap();
        assert_eq!(max_abs_diff(&c1, &c2), 0.0);
        assert_eq!(max_abs_diff(&k1, &k2), 0.0);
    }
}

#[test]
fn truncate_beyond_length_is_a_no_op_and_multi_layer_truncates_all() {
    let cfg = common::small_config(false);
    let mut cache = LatentKvCache::new(&cfg, 3, 1, DType::F32, &Device::Cpu).unwrap();
    for l in 0..3 {
        let layer = cache.layer_mut(l).unwrap();
        let c = Tensor::ones((1, 4, 32), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::ones((1, 4, 8), DType::F32, &Device::Cpu).unwrap();
        layer.append(&c, &k).unwrap();
    }
    cache.truncate(10);
    assert_eq!(cache.layer(2).unwrap().lens(), &[4]);
    cache.truncate(1);
    for l in 0..3 {
        assert_eq!(cache.layer(l).unwrap().lens(), &[1]);
    }
    assert!(cache.layer(3).is_err());
    assert_eq!(cache.bytes_per_token(), 3 * (32 + 8) * 4);
}

#[test]
fn growth_adds_pages_and_never_moves_stored_tokens() {
    let dev = Device::Cpu;
    let mut cache = LayerCache::new(2, 32, 8, DType::F32, &dev)
        .unwrap()
        .with_page_tokens(16)
        .unwrap();
    let mut caps = vec![];
    let mut all_c = vec![];
    let mut early_view = None;
    for i in 0..100 {
        let c = Tensor::full(i as f32, (2, 1, 32), &dev).unwrap();
        let k = Tensor::full(-(i as f32), (2, 1, 8), &dev).unwrap();
        cache.append(&c, &k).unwrap();
        all_c.push(c);
        if caps.last() != Some(&cache.capacity()) {
            caps.push(cache.capacity());
        }
        if i == 9 {
            // A view of the first page, taken before any growth.
            early_view = Some(cache.keys().unwrap().segments()[0].0.clone());
        }
    }
    // One page of 16 tokens at a time.
    assert_eq!(caps, (1..=7).map(|p| 16 * p).collect::<Vec<_>>());
    let keys = cache.keys().unwrap();
    assert_eq!((keys.len(), keys.segments().len()), (100, 7));
    let (c, k) = cache.views().unwrap();
    assert_eq!(c.dims(), &[2, 100, 32]);
    assert_eq!(max_abs_diff(&c, &Tensor::cat(&all_c, 1).unwrap()), 0.0);
    let k0: Vec<f32> = k
        .narrow(1, 99, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(k0.iter().all(|&v| v == -99.0));
    assert_eq!(cache.allocated_bytes(), 2 * 112 * (32 + 8) * 4);
    // The first page is where it was: a write after all that growth shows in the old view.
    cache.truncate(5);
    let c = Tensor::full(1000f32, (2, 1, 32), &dev).unwrap();
    let k = Tensor::full(0f32, (2, 1, 8), &dev).unwrap();
    cache.append(&c, &k).unwrap();
    let seen: f32 = early_view
        .unwrap()
        .narrow(1, 5, 1)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(seen, 1000.0);
    // Keys that straddle pages come back joined; within a page, as a view.
    let keys = cache.keys().unwrap();
    let (c, _) = keys.narrow(0, 6).unwrap();
    assert_eq!(c.dims(), &[2, 6, 32]);
    assert!(keys.narrow(3, 4).is_err());
}

#[test]
fn every_path_over_many_small_pages_equals_one_pass() {
    // Pages of 7 tokens, chunks of 5 then single steps: every key block of the flash path
    // and every write straddles page boundaries somewhere.
    let mla = random_layer(true, 0.2);
    let x = fixtures::seeded_randn(&[2, 23, 64], 1.0, 150);
    for path in PATHS {
        let mut rope = rope_for(&mla);
        let want = mla.forward(&x, 0, &mut rope, None, path).unwrap();
        let mut cache = mla.new_cache(2).unwrap().with_page_tokens(7).unwrap();
        let mut outs = vec![];
        let mut pos = 0;
        for len in [5, 5, 5, 1, 1, 1, 5] {
            let xi = x.narrow(1, pos, len).unwrap();
            outs.push(
                mla.forward(&xi, pos, &mut rope, Some(&mut cache), path)
                    .unwrap(),
            );
            pos += len;
        }
        assert_eq!(pos, 23);
        let got = Tensor::cat(&outs, 1).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "{path:?}: {d:e}");
        assert_eq!(cache.capacity(), 28);
    }
}

#[test]
fn batch_of_two_equals_two_single_runs() {
    let mla = random_layer(false, 0.2);
    let x = fixtures::seeded_randn(&[2, 6, 64], 1.0, 177);
    // Uniform batch: every path agrees, and each row equals its batch-1 run.
    let outs = run_every_path(&mla, &x, 1e-5);
    for i in 0..2 {
        let xi = x.narrow(0, i, 1).unwrap();
        let single = run_every_path(&mla, &xi, 1e-5);
        for ((name, y), (_, y1)) in outs.iter().zip(&single) {
            let d = max_abs_diff(&y.narrow(0, i, 1).unwrap(), y1);
            assert!(d <= 1e-5, "{name} row {i}: {d:e}");
        }
    }
}

#[test]
fn ragged_batch_continues_each_sequence_from_its_own_length() {
    let mla = random_layer(true, 0.2);
    let dev = Device::Cpu;
    let a = fixtures::seeded_randn(&[1, 5, 64], 1.0, 194);
    let b = fixtures::seeded_randn(&[1, 3, 64], 1.0, 195);
    let next = fixtures::seeded_randn(&[2, 1, 64], 1.0, 196);
    for path in PATHS {
        let mut rope = rope_for(&mla);
        // Batched cache: sequence 0 holds 5 tokens, sequence 1 holds 3.
        let mut cache = mla.new_cache(2).unwrap();
        let both = Tensor::cat(&[&a.narrow(1, 0, 3).unwrap(), &b], 0).unwrap();
        mla.forward(&both, 0, &mut rope, Some(&mut cache), path)
            .unwrap();
        let x0 = a.narrow(1, 3, 2).unwrap();
        for i in 0..2 {
            let xi = x0.narrow(1, i, 1).unwrap();
            let pad = Tensor::zeros((1, 1, 64), DType::F32, &dev).unwrap();
            let x = Tensor::cat(&[&xi, &pad], 0).unwrap();
            // Only sequence 0 advances: roll sequence 1 back afterwards.
            mla.forward_ragged(&x, &mut rope, &mut cache, path).unwrap();
            cache.truncate_seq(1, 3).unwrap();
        }
        assert_eq!(cache.lens(), &[5, 3]);
        // forward needs equal lengths and says so.
        let err = mla
            .forward(&next, 5, &mut rope, Some(&mut cache), path)
            .unwrap_err();
        assert!(err.to_string().contains("forward_ragged"), "{err}");
        let y = mla
            .forward_ragged(&next, &mut rope, &mut cache, path)
            .unwrap();
        assert_eq!(cache.lens(), &[6, 4]);

        // Reference: each sequence alone.
        for (i, (prompt, start)) in [(&a, 5usize), (&b, 3usize)].into_iter().enumerate() {
            let mut c1 = mla.new_cache(1).unwrap();
            mla.forward(prompt, 0, &mut rope, Some(&mut c1), path)
                .unwrap();
            let want = mla
                .forward(
                    &next.narrow(0, i, 1).unwrap(),
                    start,
                    &mut rope,
                    Some(&mut c1),
                    path,
                )
                .unwrap();
            let d = max_abs_diff(&y.narrow(0, i, 1).unwrap(), &want);
            assert!(d <= 1e-5, "{path:?} sequence {i}: {d:e}");
        }
    }
}

#[test]
fn cache_holds_exactly_latent_plus_rope_values() {
    let v2 = MlaConfig::deepseek_v2_lite();
    let c = LayerCache::for_config(&v2, 1, DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(c.bytes_per_token(), (512 + 64) * 2);
    assert_eq!(
        KvLayout::mla(&v2).bytes_per_token(1, DType::BF16),
        c.bytes_per_token()
    );
}

#[test]
fn accounting_matches_the_v3_figures() {
    let v3 = MlaConfig::deepseek_v3();
    let bf16 = DType::BF16;
    assert_eq!(KvLayout::mla(&v3).bytes_per_token(61, bf16), 70_272);
    let mha = KvLayout::mha(&v3).bytes_per_token(61, bf16);
    assert_eq!(mha, 128 * (192 + 128) * 61 * 2);
    assert_eq!(mha, 4_997_120);
    assert!((mha as f64 / (1024.0 * 1024.0) - 4.77).abs() < 0.01);
    assert_eq!(
        KvLayout::gqa(&v3, 8).bytes_per_token(61, bf16),
        8 * 320 * 61 * 2
    );
    assert_eq!(KvLayout::mqa(&v3).bytes_per_token(61, bf16), 320 * 61 * 2);
    assert_eq!(KvLayout::mla(&v3).bytes_per_token(61, DType::F32), 140_544);
    assert_eq!(KvLayout::mla(&v3).bytes(1000, 61, bf16), 70_272_000);
    let full = LatentKvCache::new(&v3, 61, 1, bf16, &Device::Cpu).unwrap();
    assert_eq!(full.bytes_per_token(), 70_272);
}

#[test]
fn packed_sequences_equal_each_sequence_alone() {
    // Three sequences at different lengths, packed as a prefill chunk of 4 plus two decode
    // tokens: each part equals its own batch-1 forward, on every path. With 6 rows the
    // projections take the same matrix-vector kernel as 4 or 1 rows, so equality is exact.
    let mla = random_layer(true, 0.2);
    let prompts: Vec<Tensor> = [3usize, 9, 1]
        .iter()
        .enumerate()
        .map(|(i, &t)| fixtures::seeded_randn(&[1, t, 64], 1.0, 284 + i as u64))
        .collect();
    let new_tokens = [4usize, 1, 1];
    let news: Vec<Tensor> = new_tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| fixtures::seeded_randn(&[1, t, 64], 1.0, 2890 + i as u64))
        .collect();
    for path in PATHS {
        let mut rope = rope_for(&mla);
        let mut caches: Vec<LayerCache> = prompts
            .iter()
            .map(|p| {
                let mut c = mla.new_cache(1).unwrap().with_page_tokens(4).unwrap();
                mla.forward(p, 0, &mut rope, Some(&mut c), path).unwrap();
                c
            })
            .collect();
        let mut alone = caches.clone();
        let x = Tensor::cat(&news, 1).unwrap();
        let mut parts: Vec<mla::PackedPart> = caches
            .iter_mut()
            .zip(new_tokens)
            .map(|(cache, tokens)| mla::PackedPart {
                tokens,
                cache,
                path,
            })
            .collect();
        let y = mla.forward_packed(&x, &mut parts, &mut rope).unwrap();
        let mut row = 0;
        for (i, (cache, new)) in alone.iter_mut().zip(&news).enumerate() {
            let start = cache.seq_len(0).unwrap();
            let want = mla
                .forward(new, start, &mut rope, Some(cache), path)
                .unwrap();
            let t = new.dim(1).unwrap();
            let d = max_abs_diff(&y.narrow(1, row, t).unwrap(), &want);
            assert_eq!(d, 0.0, "{path:?} sequence {i}");
            assert_eq!(caches[i].lens(), cache.lens());
            row += t;
        }
    }
    // Token counts that do not add up to the rows are refused.
    let mut rope = rope_for(&mla);
    let mut c = mla.new_cache(1).unwrap();
    let mut parts = [mla::PackedPart {
        tokens: 2,
        cache: &mut c,
        path: AttentionPath::Absorbed,
    }];
    let x = fixtures::seeded_randn(&[1, 3, 64], 1.0, 334);
    assert!(mla.forward_packed(&x, &mut parts, &mut rope).is_err());
}

#[test]
fn forks_share_pages_until_one_writes() {
    let mla = random_layer(false, 0.2);
    let mut rope = rope_for(&mla);
    let prompt = fixtures::seeded_randn(&[1, 10, 64], 1.0, 343);
    let mut parent = mla.new_cache(1).unwrap().with_page_tokens(4).unwrap();
    mla.forward(
        &prompt,
        0,
        &mut rope,
        Some(&mut parent),
        AttentionPath::Absorbed,
    )
    .unwrap();
    let before = parent.views().unwrap();
    let mut child = parent.fork();
    assert_eq!(
        parent.page_ids().collect::<Vec<_>>(),
        child.page_ids().collect::<Vec<_>>()
    );
    // Each continues with its own token: the child's write copies only the page it lands in
    // (the third, which holds tokens 8..12); the two full pages stay shared.
    let a = fixtures::seeded_randn(&[1, 1, 64], 1.0, 361);
    let b = fixtures::seeded_randn(&[1, 1, 64], 1.0, 362);
    let ya = mla
        .forward(
            &a,
            10,
            &mut rope,
            Some(&mut parent),
            AttentionPath::Absorbed,
        )
        .unwrap();
    let yb = mla
        .forward(&b, 10, &mut rope, Some(&mut child), AttentionPath::Absorbed)
        .unwrap();
    let (pa, pb): (Vec<_>, Vec<_>) = (parent.page_ids().collect(), child.page_ids().collect());
    assert_eq!(pa[..2], pb[..2]);
    assert_ne!(pa[2], pb[2]);
    // Neither saw the other's token: each equals a run of its own from scratch.
    for (x, y) in [(&a, &ya), (&b, &yb)] {
        let mut fresh = mla.new_cache(1).unwrap().with_page_tokens(4).unwrap();
        mla.forward(
            &prompt,
            0,
            &mut rope,
            Some(&mut fresh),
            AttentionPath::Absorbed,
        )
        .unwrap();
        let want = mla
            .forward(x, 10, &mut rope, Some(&mut fresh), AttentionPath::Absorbed)
            .unwrap();
        assert_eq!(max_abs_diff(y, &want), 0.0);
    }
    // The prompt's tokens are unchanged in both.
    for cache in [&parent, &child] {
        let (c, _) = cache.keys().unwrap().narrow(0, 10).unwrap();
        assert_eq!(max_abs_diff(&c, &before.0), 0.0);
    }
}

#[test]
fn fused_absorbed_equals_its_candle_ops_oracle() {
    // Pages of 100 tokens and 590+ keys: the fused kernel's chunks (256 keys) cut inside and
    // across pages, and the causal limit falls inside the last chunk for T > 1.
    let fused = random_layer(true, 0.2);
    let ops = fused.clone().with_fused_cpu(false);
    let x = fixtures::seeded_randn(&[2, 600, 64], 1.0, 151);
    let mut rope = rope_for(&fused);
    let mut caches: Vec<LayerCache> = (0..2)
        .map(|_| fused.new_cache(2).unwrap().with_page_tokens(100).unwrap())
        .collect();
    let mut pos = 0;
    for len in [590, 3, 1, 5, 1] {
        let xi = x.narrow(1, pos, len).unwrap();
        let mut outs = vec![];
        for (mla, cache) in [&fused, &ops].into_iter().zip(caches.iter_mut()) {
            outs.push(
                mla.forward(&xi, pos, &mut rope, Some(cache), AttentionPath::Absorbed)
                    .unwrap(),
            );
        }
        let d = max_abs_diff(&outs[0], &outs[1]);
        assert!(d <= 1e-5, "{len} tokens after {pos}: {d:e}");
        pos += len;
    }
}
