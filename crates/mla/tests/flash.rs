//! The flash path (online softmax over key blocks) against the two oracles, which materialise
//! the full scores: prompts spanning several key blocks and query tiles, chunked prefill
//! through the cache, sequence lengths on and next to the block boundaries, ragged batches,
//! bf16, and both formulations inside the blocks. (The HF fixture cases, decode steps and
//! every cache test run the flash path too, through `common::PATHS`.)
//!
//! Tolerance: 1e-4 max |diff| in f32 (the paths differ only in summation order); in bf16,
//! 3e-2 of the output's max magnitude, as in `dtypes.rs`.
#![allow(clippy::disallowed_methods)] // tests read results on the host

mod common;

use candle_core::{DType, Device, Tensor};
use common::{random_layer_for, rope_for, v2_proportioned_config};
use fixtures::{assert_close, max_abs_diff};
use mla::{
    AttentionPath, FlashFormulation, LayerCache, Mla, MlaConfig, MlaWeights, QueryWeights,
    FLASH_KEY_BLOCK, FLASH_QUERY_BLOCK,
};

const TOL: f32 = 1e-4;
const K: usize = FLASH_KEY_BLOCK;

/// A random layer with V2/V3's latent-to-head proportions, so both formulations occur.
fn layer(q_lora: bool) -> Mla {
    random_layer_for(v2_proportioned_config(q_lora), 0.2)
}

fn input(b: usize, t: usize) -> Tensor {
    fixtures::seeded_randn(&[b, t, 64], 1.0, 30)
}

fn assert_finite(y: &Tensor, what: &str) {
    let v: Vec<f32> = y
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite output");
}

/// Runs `x[:, past..]` over a cache holding `x[:, ..past]` (filled by the absorbed oracle)
/// with `path`.
fn continue_from(mla: &Mla, x: &Tensor, past: usize, path: AttentionPath) -> Tensor {
    let mut rope = rope_for(mla);
    let mut cache = mla.new_cache(x.dim(0).unwrap()).unwrap();
    if past > 0 {
        let prefix = x.narrow(1, 0, past).unwrap();
        mla.forward(
            &prefix,
            0,
            &mut rope,
            Some(&mut cache),
            AttentionPath::Absorbed,
        )
        .unwrap();
    }
    let rest = x.narrow(1, past, x.dim(1).unwrap() - past).unwrap();
    mla.forward(&rest, past, &mut rope, Some(&mut cache), path)
        .unwrap()
}

/// Flash against both oracles on the same call; returns the flash output.
fn check_against_oracles(mla: &Mla, x: &Tensor, past: usize, what: &str) -> Tensor {
    let flash = continue_from(mla, x, past, AttentionPath::Flash);
    assert_finite(&flash, what);
    for oracle in [AttentionPath::Expanded, AttentionPath::Absorbed] {
        let want = continue_from(mla, x, past, oracle);
        assert_close(&flash, &want, TOL, &format!("{what} vs {oracle:?}"));
    }
    flash
}

#[test]
fn long_prompt_in_one_pass_spans_several_blocks_and_tiles() {
    // 3 key blocks (the last partial) and 3 query tiles: tiles skip the blocks in their future.
    let t = 2 * K + 276;
    assert!(t > 2 * FLASH_QUERY_BLOCK);
    for q_lora in [false, true] {
        let mla = layer(q_lora);
        assert_eq!(mla.flash_formulation(t, t), FlashFormulation::Expanded);
        let x = input(1, t);
        let mut rope = rope_for(&mla);
        let flash = mla
            .forward(&x, 0, &mut rope, None, AttentionPath::Flash)
            .unwrap();
        for oracle in [AttentionPath::Expanded, AttentionPath::Absorbed] {
            let want = mla.forward(&x, 0, &mut rope, None, oracle).unwrap();
            assert_close(
                &flash,
                &want,
                TOL,
                &format!("q_lora={q_lora} {t} tokens, no cache, vs {oracle:?}"),
            );
        }
    }
}

#[test]
fn chunked_prefill_through_the_cache_equals_one_pass() {
    let mla = layer(true);
    // Chunks that start and end off the block boundaries, straddle them, and hit both
    // formulations: 1 and 8 tokens run absorbed, the others expanded. Two sequences, so the
    // cache views have a batch stride of the capacity, not of the length.
    let chunks = [64, 100, 1, 447, 8, 680];
    let total: usize = chunks.iter().sum();
    let x = input(2, total);
    let mut rope = rope_for(&mla);
    let one_pass = mla
        .forward(&x, 0, &mut rope, None, AttentionPath::Expanded)
        .unwrap();
    let mut cache = mla.new_cache(2).unwrap();
    let mut outs = Vec::new();
    let mut used = Vec::new();
    let mut start = 0;
    for &t in &chunks {
        used.push(mla.flash_formulation(t, start + t));
        let xi = x.narrow(1, start, t).unwrap();
        let y = mla
            .forward(
                &xi,
                start,
                &mut rope,
                Some(&mut cache),
                AttentionPath::Flash,
            )
            .unwrap();
        assert_finite(&y, &format!("chunk at {start}"));
        outs.push(y);
        start += t;
    }
    use FlashFormulation::{Absorbed, Expanded};
    assert_eq!(
        used,
        [Expanded, Expanded, Absorbed, Expanded, Absorbed, Expanded]
    );
    let chunked = Tensor::cat(&outs, 1).unwrap();
    assert_close(
        &chunked,
        &one_pass,
        TOL,
        "chunked flash vs one expanded pass",
    );
    let flash_one_pass = mla
        .forward(&x, 0, &mut rope, None, AttentionPath::Flash)
        .unwrap();
    assert_close(&chunked, &flash_one_pass, TOL, "chunked vs one flash pass");
}

#[test]
fn lengths_on_and_next_to_the_key_block_boundaries() {
    let mla = layer(false);
    for s in [K - 1, K, K + 1, 2 * K - 1, 2 * K, 2 * K + 1] {
        let x = input(1, s);
        // No cache, T = S (expanded blocks).
        check_against_oracles(&mla, &x, 0, &format!("prefill of {s}"));
        // A decode step and short blocks ending at S (absorbed blocks), and a 200-token
        // chunk ending at S (expanded blocks).
        for t in [1, 2, 8, 200] {
            let expected = match t {
                200 => FlashFormulation::Expanded,
                _ => FlashFormulation::Absorbed,
            };
            assert_eq!(mla.flash_formulation(t, s), expected, "{t} tokens at {s}");
            check_against_oracles(&mla, &x, s - t, &format!("{t} tokens ending at {s}"));
        }
    }
}

#[test]
fn rows_that_see_nothing_of_a_block_stay_finite() {
    // Queries at positions K-4..K+4: in the block starting at K, the first four rows see no
    // key at all (-inf everywhere); the running max from block 0 keeps them finite.
    let mla = layer(true);
    let x = input(1, K + 4);
    assert_eq!(mla.flash_formulation(8, K + 4), FlashFormulation::Absorbed);
    check_against_oracles(&mla, &x, K - 4, "8 tokens straddling a block");
    // The same with expanded blocks: a 300-token chunk from position 300 straddles K.
    let x = input(1, 600);
    assert_eq!(mla.flash_formulation(300, 600), FlashFormulation::Expanded);
    check_against_oracles(&mla, &x, 300, "300 tokens straddling a block");
}

#[test]
fn ragged_batch_matches_the_oracles() {
    let mla = layer(true);
    let mut rope = rope_for(&mla);
    // Sequence 0 holds 300 tokens, sequence 1 holds 600 (across a block boundary).
    let mut cache: LayerCache = mla.new_cache(2).unwrap();
    mla.forward(
        &input(2, 600),
        0,
        &mut rope,
        Some(&mut cache),
        AttentionPath::Absorbed,
    )
    .unwrap();
    cache.truncate_seq(0, 300).unwrap();
    for t in [1, 9, 250] {
        let x = input(2, t);
        let mut run = |path| {
            let mut c = cache.clone();
            let y = mla.forward_ragged(&x, &mut rope, &mut c, path).unwrap();
            assert_eq!(c.lens(), &[300 + t, 600 + t]);
            y
        };
        let flash = run(AttentionPath::Flash);
        for oracle in [AttentionPath::Expanded, AttentionPath::Absorbed] {
            assert_close(
                &flash,
                &run(oracle),
                TOL,
                &format!("ragged, {t} tokens, vs {oracle:?}"),
            );
        }
    }
}

#[test]
fn bf16_close_to_the_bf16_oracles_and_to_f32() {
    let rel_tol = 3e-2;
    let mla32 = layer(true);
    let mla = mla32.to_dtype(DType::BF16).unwrap();
    let s = K + 300;
    let x32 = input(1, s);
    let x = x32.to_dtype(DType::BF16).unwrap();
    // Prefill over a cache, then a 100-token chunk (expanded blocks) and a decode step
    // (absorbed blocks).
    use FlashFormulation::{Absorbed, Expanded};
    for (past, what, form) in [
        (0, "prefill", Expanded),
        (s - 100, "100-token chunk", Expanded),
        (s - 1, "decode", Absorbed),
    ] {
        assert_eq!(mla.flash_formulation(s - past, s), form, "{what}");
        let want32 = continue_from(&mla32, &x32, past, AttentionPath::Expanded);
        let scale = common::max_abs(&want32);
        let flash = continue_from(&mla, &x, past, AttentionPath::Flash);
        assert_eq!(flash.dtype(), DType::BF16);
        assert_finite(&flash, what);
        let mut wants = vec![("f32", want32.clone())];
        for oracle in [AttentionPath::Expanded, AttentionPath::Absorbed] {
            wants.push(("bf16", continue_from(&mla, &x, past, oracle)));
        }
        for (dtype, want) in wants {
            let d = max_abs_diff(&flash, &want) / scale;
            println!("bf16 flash {what} vs {dtype} oracle: max |diff| / max |y| = {d:.2e}");
            assert!(d <= rel_tol, "bf16 {what} vs {dtype}: {d:e} > {rel_tol:e}");
        }
    }
}

/// A V2-Lite-shaped layer with zero weights: enough to ask which formulation it would run.
fn v2_lite_shaped() -> Mla {
    let cfg = MlaConfig::deepseek_v2_lite();
    let z = |o: usize, i: usize| Tensor::zeros((o, i), DType::F32, &Device::Cpu).unwrap();
    let (c, h) = (cfg.hidden_size, cfg.num_heads);
    let weights = MlaWeights {
        query: QueryWeights::Direct {
            q_proj: z(h * cfg.qk_head_dim(), c).into(),
        },
        kv_a_proj_with_mqa: z(cfg.latent_dim(), c).into(),
        kv_a_layernorm: Tensor::ones(cfg.kv_lora_rank, DType::F32, &Device::Cpu).unwrap(),
        kv_b_proj: z(
            h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
            cfg.kv_lora_rank,
        )
        .into(),
        o_proj: z(c, h * cfg.v_head_dim).into(),
    };
    Mla::new(cfg, weights).unwrap()
}

#[test]
fn formulation_follows_the_weighted_flop_count() {
    use FlashFormulation::{Absorbed, Expanded};
    let mla = v2_lite_shaped();
    // Decode steps, verification blocks and short chunks over a long cache: absorbed.
    assert_eq!(mla.flash_formulation(1, 32_768), Absorbed);
    assert_eq!(mla.flash_formulation(8, 4096), Absorbed);
    assert_eq!(mla.flash_formulation(256, 32_768), Absorbed);
    // Break-even near 504 new tokens over a long cache.
    assert_eq!(mla.flash_formulation(480, 32_768), Absorbed);
    assert_eq!(mla.flash_formulation(530, 32_768), Expanded);
    // 512-token prefill chunks at any depth, and long cache-free prompts (break-even ~470).
    for s in [512, 1024, 8192, 32_768] {
        assert_eq!(mla.flash_formulation(512, s), Expanded, "512 at {s}");
    }
    assert_eq!(mla.flash_formulation(32, 32), Absorbed);
    assert_eq!(mla.flash_formulation(460, 460), Absorbed);
    assert_eq!(mla.flash_formulation(480, 480), Expanded);
    assert_eq!(mla.flash_formulation(8192, 8192), Expanded);
}
