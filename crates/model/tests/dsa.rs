//! DeepSeek-V3.2 checkpoints (DeepSeek Sparse Attention) against HF transformers 5.23, on the
//! `v32_dsa` fixture (`tests/reference/generate.py`: 2 layers, FP8 as released, `index_topk` 8
//! over a 24-token prompt, so each layer keeps 164 of the 300 causal (query, key) pairs):
//! logits (prefill, step-by-step decode, chunked prefill, greedy continuation) within 1e-4 on
//! both MLA paths, and each layer's selected keys equal to HF's, tie-aware. Plus: the config
//! fields, MTP speculative decoding over the indexer caches, and the engine's refusal.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Device, Tensor};
use fixtures::{assert_close, Case};
use mla::AttentionPath;
use model::generate::{generate, Decoding, GenerateOptions};
use model::model::Selections;
use model::random::{write_random_checkpoint, StoreDtype};
use model::{DeepSeek, Engine, EngineConfig, ModelConfig, PathPolicy};

const TOL: f32 = 1e-4;

/// Index scores closer than this to the top-k boundary count as tied: either choice is HF's.
const TIE: f32 = 1e-4;

fn case() -> Case {
    Case::load("v32_dsa")
}

fn load(case: &Case, path: AttentionPath) -> DeepSeek {
    let mut model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    model.paths = PathPolicy {
        short: path,
        long: path,
        short_max: 8,
    };
    model
}

/// The two MLA formulations DSA runs on (`Flash` gathers like `Absorbed`).
const PATHS: [AttentionPath; 2] = [AttentionPath::Absorbed, AttentionPath::Expanded];

/// Asserts that `ours` (per token, ascending keys) selects what HF's 0/1 matrix `hf` `[T, T]`
/// does, row by row, except among keys whose reference index scores (`scores` `[T, T]`) lie
/// within [`TIE`] of the row's top-k boundary, where `torch.topk`'s choice is arbitrary.
fn assert_selection(ours: &[Vec<usize>], hf: &Tensor, scores: &Tensor, k: usize, what: &str) {
    let hf: Vec<Vec<f32>> = hf.to_vec2().unwrap();
    let scores: Vec<Vec<f32>> = scores.to_vec2().unwrap();
    assert_eq!(ours.len(), hf.len(), "{what}: rows");
    let mut dropped = 0;
    for (p, (row, want)) in ours.iter().zip(&hf).enumerate() {
        let want: Vec<usize> = (0..=p).filter(|&s| want[s] == 1.0).collect();
        assert_eq!(
            row.len(),
            want.len(),
            "{what}: row {p} selects {row:?}, HF {want:?}"
        );
        dropped += p + 1 - row.len();
        if row == &want {
            continue;
        }
        let mut visible: Vec<f32> = scores[p][..=p].to_vec();
        visible.sort_by(|a, b| b.total_cmp(a));
        let boundary = visible[k - 1];
        for s in row
            .iter()
            .filter(|s| !want.contains(s))
            .chain(want.iter().filter(|s| !row.contains(s)))
        {
            assert!(
                (scores[p][*s] - boundary).abs() <= TIE,
                "{what}: row {p} differs from HF on key {s} (score {}, top-k boundary {boundary}): \
                 ours {row:?}, HF {want:?}",
                scores[p][*s]
            );
        }
    }
    assert!(dropped > 0, "{what}: selection dropped no key");
}

fn assert_selections(sel: &Selections, case: &Case, stage: &str, path: AttentionPath) {
    let k = case.config_usize("index_topk");
    assert_eq!(sel.len(), case.config_usize("num_hidden_layers"));
    for (l, rows) in sel.iter().enumerate() {
        assert_selection(
            rows,
            &case.tensor(&format!("{stage}.layers.{l}.selected")),
            &case.tensor(&format!("prefill.layers.{l}.index_scores")),
            k,
            &format!("{stage} layer {l} selection, {path:?}"),
        );
    }
}

#[test]
fn config_reads_the_indexer_fields() {
    let case = case();
    let cfg = ModelConfig::from_file(&case.dir.join("config.json")).unwrap();
    assert_eq!(cfg.arch, model::Arch::V32);
    let ix = cfg.indexer.as_ref().expect("V3.2 has an indexer");
    assert_eq!((ix.topk, ix.n_heads, ix.head_dim), (8, 8, 32));
    assert_eq!((ix.rope_dim, ix.q_lora_rank), (16, 48));
    // Absent fields take HF 5.23's DeepseekV32Config defaults.
    let mut json = case.config.clone();
    for f in ["index_topk", "index_n_heads", "index_head_dim"] {
        json.as_object_mut().unwrap().remove(f);
    }
    let cfg = ModelConfig::from_json_str(&json.to_string()).unwrap();
    let ix = cfg.indexer.unwrap();
    assert_eq!((ix.topk, ix.n_heads, ix.head_dim), (2048, 64, 128));
}

#[test]
fn config_errors_name_the_field() {
    let case = case();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = case.config.clone();
        edit(&mut json);
        ModelConfig::from_json_str(&json.to_string())
            .unwrap_err()
            .to_string()
    };
    let e = with(&|j| j["q_lora_rank"] = serde_json::Value::Null);
    assert!(e.contains("q_lora_rank"), "{e}");
    let e = with(&|j| j["index_topk"] = 0.into());
    assert!(e.contains("index_topk"), "{e}");
    let e = with(&|j| j["index_head_dim"] = 8.into());
    assert!(e.contains("index_head_dim"), "{e}");
    // A V3 config with indexer fields would silently lose its sparse attention in HF.
    let e = with(&|j| j["model_type"] = "deepseek_v3".into());
    assert!(
        e.contains("index_topk") && e.contains("deepseek_v32"),
        "{e}"
    );
}

#[test]
fn prefill_logits_and_selection_match_hf_on_both_paths() {
    let case = case();
    for path in PATHS {
        let model = load(&case, path);
        let mut session = model.new_session().unwrap();
        let (out, sel) = model
            .forward_with_selections(&case.ids("input_ids"), &mut session)
            .unwrap();
        assert_close(
            &out.logits,
            &case.tensor("prefill.logits"),
            TOL,
            &format!("prefill logits, {path:?}"),
        );
        assert_close(
            &out.hidden,
            &case.tensor("prefill.final_hidden"),
            TOL,
            &format!("final hidden, {path:?}"),
        );
        assert_selections(&sel, &case, "prefill", path);
        assert_eq!(session.index.len(), 2);
        assert!(session.index.iter().all(|c| c.lens() == [24]));
    }
}

#[test]
fn step_by_step_decode_matches_hf_on_both_paths() {
    let case = case();
    for path in PATHS {
        let model = load(&case, path);
        let mut session = model.new_session().unwrap();
        let mut sel: Selections = vec![vec![]; 2];
        let rows: Vec<Tensor> = case
            .ids("input_ids")
            .iter()
            .map(|&t| {
                let (out, s) = model.forward_with_selections(&[t], &mut session).unwrap();
                sel.iter_mut()
                    .zip(s)
                    .for_each(|(all, step)| all.extend(step));
                out.logits
            })
            .collect();
        let decoded = Tensor::cat(&rows, 0).unwrap();
        assert_close(
            &decoded,
            &case.tensor("decode.logits"),
            TOL,
            &format!("decode logits, {path:?}"),
        );
        assert_selections(&sel, &case, "decode", path);
    }
}

/// Prefill in chunks over the caches (5 does not divide 24; some chunks are decode-sized and
/// take the short path) gives HF's prefill logits with the default path policy.
#[test]
fn chunked_prefill_matches_hf() {
    let case = case();
    let mut model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    for chunk in [5, 8, 13] {
        model.prefill_chunk = chunk;
        let logits = model.logits(&case.ids("input_ids")).unwrap();
        assert_close(
            &logits,
            &case.tensor("prefill.logits"),
            TOL,
            &format!("prefill in chunks of {chunk}"),
        );
    }
}

#[test]
fn greedy_continuation_matches_hf() {
    let case = case();
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    let want = case.ids("greedy");
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        ..GenerateOptions::default()
    };
    let got = generate(&model, &case.ids("input_ids"), &opts, |_| Ok(true))
        .unwrap()
        .tokens;
    assert_eq!(got, want);
}

/// A session rolled back (as speculative decoding does) rolls back its indexer caches: the
/// next tokens see the same keys as a fresh run.
#[test]
fn truncating_a_session_rolls_back_the_indexer_caches() {
    let case = case();
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    let ids = case.ids("input_ids");
    let mut session = model.new_session().unwrap();
    model.forward(&ids, &mut session).unwrap();
    session.truncate(15);
    assert!(session.index.iter().all(|c| c.lens() == [15]));
    let again = model.forward(&ids[15..], &mut session).unwrap().logits;
    let want = case.tensor("prefill.logits").narrow(0, 15, 9).unwrap();
    assert_close(&again, &want, TOL, "after rollback");
}

/// MTP speculative decoding on a V3.2 checkpoint with an MTP module (a random one: HF 5.23
/// ignores V3.2's MTP layer): drafts and verification blocks run DSA, rejected drafts roll
/// back the main and the module's indexer caches, and greedy output equals plain greedy
/// output over a context well past `index_topk`.
#[test]
fn mtp_greedy_equals_plain_greedy_on_v32() {
    let case = case();
    let mut json = case.config.clone();
    json["num_nextn_predict_layers"] = 1.into();
    json.as_object_mut().unwrap().remove("quantization_config");
    let dir = tempfile::tempdir().unwrap();
    write_random_checkpoint(
        &json.to_string(),
        dir.path(),
        StoreDtype::F32,
        3,
        |_, _, _| {},
    )
    .unwrap();
    assert!(dir.path().join("model.safetensors.index.json").is_file());
    let model = DeepSeek::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let prompt = case.ids("input_ids");
    let opts = |decoding| GenerateOptions {
        max_new_tokens: 40,
        decoding,
        ..GenerateOptions::default()
    };
    let plain = generate(&model, &prompt, &opts(Decoding::Plain), |_| Ok(true)).unwrap();
    let spec = generate(&model, &prompt, &opts(Decoding::Mtp), |_| Ok(true)).unwrap();
    let stats = spec.mtp.expect("MTP ran");
    println!(
        "V3.2 MTP acceptance {:.3} over {} steps",
        stats.acceptance_rate(),
        stats.steps
    );
    assert!(stats.steps > 0);
    assert_eq!(spec.tokens, plain.tokens);
}

#[test]
fn the_engine_refuses_v32() {
    let case = case();
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    let mut cache = model.new_cache(16).unwrap();
    let ids = case.ids("input_ids");
    let mut rope = rope_yarn::RopeCache::new(model.config().mla.rope);
    let e = model
        .forward_packed(
            &mut [(&ids[..], &mut cache)],
            &mut rope,
            moe::Dispatch::Auto,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("deepseek_v32"), "{e}");
    let e = Engine::start(std::sync::Arc::new(model), None, EngineConfig::default())
        .err()
        .expect("the engine refuses V3.2")
        .to_string();
    assert!(e.contains("deepseek_v32") && e.contains("engine"), "{e}");
}
