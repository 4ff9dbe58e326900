//! DeepSeek-V3.2 sparse attention (DSA) against HF transformers 5.23
//! (`tests/reference/dsa_generate.py`, fixture `tests/fixtures/dsa`: one f32
//! `DeepseekV32Attention` layer, 32 tokens, `index_topk` 8, so 228 of the 528 causal
//! (query, key) pairs are kept): the indexer's scores, its selected keys, and the attention
//! output on every path, in one prefill pass, step-by-step decode and chunks through the
//! caches, plus rollback of both caches together. Tolerance 1e-4 (max |diff|).
#![allow(clippy::disallowed_methods)] // tests read results on the host

mod common;

use candle_core::{Device, Tensor};
use common::{config_from_json, PATHS};
use fixtures::{assert_close, Case};
use mla::{AttentionPath, DsaCache, Indexer, IndexerConfig, Mla, SparsePattern};
use rope_yarn::RopeCache;

const TOL: f32 = 1e-4;

struct Layer {
    mla: Mla,
    indexer: Indexer,
    case: Case,
}

fn layer() -> Layer {
    let case = Case::load("dsa");
    let cfg = config_from_json(&case.config);
    let icfg = IndexerConfig::for_mla(
        &cfg,
        case.config_usize("index_n_heads"),
        case.config_usize("index_head_dim"),
        case.config_usize("index_topk"),
    )
    .unwrap();
    let vb = case.var_builder();
    let mla = Mla::load(&vb.pp("self_attn"), cfg).unwrap();
    let indexer = Indexer::load(&vb.pp("self_attn.indexer"), icfg).unwrap();
    Layer { mla, indexer, case }
}

fn x(l: &Layer) -> Tensor {
    l.case.tensor("x").unsqueeze(0).unwrap()
}

/// The selection as a `[T, S]` 0/1 matrix (row `i` of a call starting at `start`).
fn selection_matrix(pattern: &SparsePattern, start: usize, rows: &mut [Vec<f32>]) {
    let SparsePattern::TopK(sel) = pattern else {
        panic!("DSA returns a TopK pattern")
    };
    for (i, keys) in sel.iter().enumerate() {
        for &k in keys {
            assert!(k <= start + i, "row {} selects future key {k}", start + i);
            rows[start + i][k] = 1.0;
        }
    }
}

fn to_tensor(rows: Vec<Vec<f32>>) -> Tensor {
    let t = rows.len();
    Tensor::from_vec(rows.concat(), (t, t), &Device::Cpu).unwrap()
}

/// Runs the fixture's tokens through `forward_dsa` in chunks of `chunk` (0: one pass without
/// a cache); returns the outputs `[T, C]` and the selection matrix `[T, T]`.
fn run(l: &Layer, path: AttentionPath, chunk: usize) -> (Tensor, Tensor) {
    let x = x(l);
    let t = x.dim(1).unwrap();
    let mut rope = RopeCache::new(l.mla.config().rope);
    let mut sel = vec![vec![0f32; t]; t];
    if chunk == 0 {
        let (y, p) = l
            .mla
            .forward_dsa(&x, 0, &mut rope, None, &l.indexer, path)
            .unwrap();
        selection_matrix(&p, 0, &mut sel);
        return (y.squeeze(0).unwrap(), to_tensor(sel));
    }
    let mut cache = DsaCache::new(&l.mla, &l.indexer, 1).unwrap();
    let mut outs = vec![];
    for start in (0..t).step_by(chunk) {
        let n = chunk.min(t - start);
        let (y, p) = l
            .mla
            .forward_dsa(
                &x.narrow(1, start, n).unwrap(),
                start,
                &mut rope,
                Some(&mut cache),
                &l.indexer,
                path,
            )
            .unwrap();
        selection_matrix(&p, start, &mut sel);
        outs.push(y);
    }
    assert_eq!(cache.lens(), &[t]);
    assert_eq!(cache.index.lens(), &[t]);
    (
        Tensor::cat(&outs, 1).unwrap().squeeze(0).unwrap(),
        to_tensor(sel),
    )
}

#[test]
fn indexer_scores_match_hf() {
    let l = layer();
    let x = x(&l);
    let t = x.dim(1).unwrap();
    let mut rope = RopeCache::new(l.mla.config().rope);
    let (cos, sin) = rope.cos_sin(0, t, &Device::Cpu).unwrap();
    let q_resid = l.mla.query_residual(&x).unwrap().unwrap();
    let ours = l
        .indexer
        .scores(&x, &q_resid, &cos, &sin, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let want = l.case.tensor("prefill.index_scores");
    // -inf exactly on the future keys; compare the visible ones (future set to 0 on both).
    let ours: Vec<Vec<f32>> = ours.to_vec2().unwrap();
    let want: Vec<Vec<f32>> = want.to_vec2().unwrap();
    let mut max_diff = 0f32;
    for i in 0..t {
        for j in 0..t {
            if j > i {
                assert_eq!(ours[i][j], f32::NEG_INFINITY, "({i}, {j})");
                assert_eq!(want[i][j], f32::NEG_INFINITY, "({i}, {j})");
            } else {
                max_diff = max_diff.max((ours[i][j] - want[i][j]).abs());
            }
        }
    }
    println!("index scores: max |diff| = {max_diff:.3e}");
    assert!(max_diff <= TOL, "index scores differ by {max_diff:e}");
}

/// Tie-aware: every selected visible key scores at least as high (within `eps`, HF's scores)
/// as every visible key left out, each row keeps `min(topk, visible)` keys; and where the
/// fixture has no near-tie (its recorded minimum top-k gap exceeds `eps`) the sets are equal.
fn check_selection(l: &Layer, ours: &Tensor, want: &Tensor, what: &str) {
    let k = l.case.config_usize("index_topk");
    let scores: Vec<Vec<f32>> = l.case.tensor("prefill.index_scores").to_vec2().unwrap();
    let ours: Vec<Vec<f32>> = ours.to_vec2().unwrap();
    let eps = 1e-4;
    for (i, row) in ours.iter().enumerate() {
        let kept: Vec<usize> = (0..=i).filter(|&j| row[j] == 1.0).collect();
        assert_eq!(kept.len(), k.min(i + 1), "{what}: row {i} keeps {kept:?}");
        let low = kept
            .iter()
            .map(|&j| scores[i][j])
            .fold(f32::INFINITY, f32::min);
        for j in (0..=i).filter(|j| !kept.contains(j)) {
            assert!(
                scores[i][j] <= low + eps,
                "{what}: row {i} drops key {j} ({}) above a kept one ({low})",
                scores[i][j]
            );
        }
    }
    let gap = l.case.meta["min_topk_gap"].as_f64().unwrap();
    assert!(gap > eps as f64, "the fixture has a near-tie ({gap:e})");
    let diff = fixtures::max_abs_diff(&Tensor::new(ours, &Device::Cpu).unwrap(), want);
    assert_eq!(diff, 0.0, "{what}: selected keys differ from HF's");
}

#[test]
fn prefill_matches_hf_on_every_path() {
    let l = layer();
    let want = l.case.tensor("prefill.attn_out");
    let want_sel = l.case.tensor("prefill.selected");
    // The selection really drops keys.
    let kept = want_sel.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(kept as u64, l.case.meta["selected_keys"].as_u64().unwrap());
    assert!(kept < (32 * 33 / 2) as f32);
    for path in PATHS {
        let (y, sel) = run(&l, path, 0);
        assert_close(&y, &want, TOL, &format!("dsa prefill {path:?}"));
        check_selection(&l, &sel, &want_sel, &format!("prefill {path:?}"));
    }
}

#[test]
fn decode_and_chunks_match_hf_on_every_path() {
    let l = layer();
    let want = l.case.tensor("decode.attn_out");
    let want_sel = l.case.tensor("decode.selected");
    for path in PATHS {
        for chunk in [1, 5, 32] {
            let (y, sel) = run(&l, path, chunk);
            assert_close(&y, &want, TOL, &format!("dsa chunks of {chunk} {path:?}"));
            check_selection(&l, &sel, &want_sel, &format!("chunks of {chunk} {path:?}"));
        }
    }
}

#[test]
fn dense_attention_differs_so_the_selection_matters() {
    let l = layer();
    let mut rope = RopeCache::new(l.mla.config().rope);
    let dense = l
        .mla
        .forward(&x(&l), 0, &mut rope, None, AttentionPath::Absorbed)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d = fixtures::max_abs_diff(&dense, &l.case.tensor("prefill.attn_out"));
    assert!(d > 1e-2, "dense attention is within {d:e} of DSA's");
}

#[test]
fn rollback_truncates_both_caches_together() {
    let l = layer();
    let x = x(&l);
    let mut rope = RopeCache::new(l.mla.config().rope);
    let path = AttentionPath::Absorbed;
    let mut cache = DsaCache::new(&l.mla, &l.indexer, 1).unwrap();
    let prefix = x.narrow(1, 0, 20).unwrap();
    l.mla
        .forward_dsa(&prefix, 0, &mut rope, Some(&mut cache), &l.indexer, path)
        .unwrap();
    // A speculative block of 6 tokens, rejected after 2: roll back to 22 and continue.
    let fork = cache.fork();
    l.mla
        .forward_dsa(
            &x.narrow(1, 20, 6).unwrap(),
            20,
            &mut rope,
            Some(&mut cache),
            &l.indexer,
            path,
        )
        .unwrap();
    cache.truncate(22);
    assert_eq!(cache.lens(), &[22]);
    assert_eq!(cache.index.lens(), &[22]);
    let (y, _) = l
        .mla
        .forward_dsa(
            &x.narrow(1, 22, 10).unwrap(),
            22,
            &mut rope,
            Some(&mut cache),
            &l.indexer,
            path,
        )
        .unwrap();
    let want = l.case.tensor("decode.attn_out").narrow(0, 22, 10).unwrap();
    assert_close(&y.squeeze(0).unwrap(), &want, TOL, "after rollback");
    // The fork was not disturbed by the writes after it.
    assert_eq!(fork.lens(), &[20]);
    // Caches out of step are refused, naming both lengths.
    let mut bad = fork.clone();
    bad.index.truncate(10);
    let e = l
        .mla
        .forward_dsa(
            &x.narrow(1, 20, 1).unwrap(),
            20,
            &mut rope,
            Some(&mut bad),
            &l.indexer,
            path,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("indexer cache holds [10]"), "{e}");
}

#[test]
fn indexer_config_errors_name_the_field() {
    let l = layer();
    let cfg = l.mla.config();
    let e = IndexerConfig::for_mla(cfg, 0, 16, 8)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "index_n_heads: must be > 0");
    let e = IndexerConfig::for_mla(cfg, 4, 4, 8)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("index_head_dim: is 4"), "{e}");
    let plain = common::small_config(false);
    let e = IndexerConfig::for_mla(&plain, 4, 16, 8)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("q_lora_rank"), "{e}");
}
