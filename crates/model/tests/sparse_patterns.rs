//! Fixed sparse-attention patterns on a dense-attention model (`DeepSeek::sparse`, the CLI's
//! `--sparse`): a pattern that keeps every key is dense attention (HF's logits), a pattern that
//! drops keys changes the logits (it is an approximation), and a position pattern gives the
//! same logits whether the tokens come in one prefill or one decode step at a time.

mod common;

use candle_core::{DType, Device};
use fixtures::{assert_close, max_abs_diff, Case};
use mla::SparsePattern;
use model::DeepSeek;

fn load(name: &str, sparse: &str) -> (Case, DeepSeek) {
    let case = Case::load(name);
    let mut model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    model.sparse = Some(sparse.parse::<SparsePattern>().unwrap());
    (case, model)
}

#[test]
fn a_pattern_that_keeps_every_key_is_dense_attention() {
    for name in ["v2_greedy", "v3_noaux"] {
        // The 10-token prompt: a 10-token window, or the sink block, keep everything.
        for sparse in ["local:10", "block:16:1:0", "local:2,random:10:3"] {
            let (case, model) = load(name, sparse);
            let logits = model.logits(&case.ids("input_ids")).unwrap();
            assert_close(
                &logits,
                &case.tensor("prefill.logits"),
                1e-4,
                &format!("{name} --sparse {sparse}"),
            );
        }
    }
}

#[test]
fn a_pattern_that_drops_keys_changes_the_logits_the_same_way_prefill_and_decode() {
    let (case, model) = load("v3_noaux", "local:3,block:4:1:0,random:1:5");
    let ids = case.ids("input_ids");
    let prefill = model.logits(&ids).unwrap();
    let dense = case.tensor("prefill.logits");
    let diff = max_abs_diff(&prefill, &dense);
    println!("sparse vs dense: max |diff| = {diff:.3e}");
    assert!(diff > 1e-2, "dropping keys changed nothing ({diff:e})");
    // The first 3 queries see all their keys (the window covers them): dense there.
    assert_close(
        &prefill.narrow(0, 0, 3).unwrap(),
        &dense.narrow(0, 0, 3).unwrap(),
        1e-4,
        "rows inside the window",
    );
    let decoded = common::decode_each(&model, &ids);
    assert_close(&decoded, &prefill, 1e-4, "sparse decode vs sparse prefill");
}

#[test]
fn patterns_are_refused_on_dsa_models_and_in_packed_forwards() {
    let (case, model) = load("v32_dsa", "local:4");
    let e = model
        .logits(&case.ids("input_ids"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("indexer"), "{e}");
    let (case, model) = load("v3_noaux", "local:4");
    let mut cache = model.new_cache(16).unwrap();
    let mut rope = rope_yarn::RopeCache::new(model.config().mla.rope);
    let ids = case.ids("input_ids");
    let e = model
        .forward_packed(
            &mut [(&ids[..], &mut cache)],
            &mut rope,
            moe::Dispatch::Auto,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("sessions only"), "{e}");
}
