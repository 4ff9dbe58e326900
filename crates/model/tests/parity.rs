//! End-to-end parity with HF transformers 5.23 on the committed fixture checkpoints.

mod common;

use candle_core::{DType, Device, Tensor};
use fixtures::{assert_close, Case};
use model::DeepSeek;

use fixtures::CASES;

fn load(case: &Case) -> DeepSeek {
    DeepSeek::load(&case.dir, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

#[test]
fn prefill_logits_match_hf() {
    for name in CASES {
        let case = Case::load(name);
        let model = load(&case);
        let logits = model.logits(&case.ids("input_ids")).unwrap();
        assert_close(
            &logits,
            &case.tensor("prefill.logits"),
            1e-4,
            &format!("{name} logits"),
        );
    }
}

#[test]
fn decode_step_by_step_matches_prefill() {
    for name in CASES {
        let case = Case::load(name);
        let model = load(&case);
        let decoded = common::decode_each(&model, &case.ids("input_ids"));
        assert_close(
            &decoded,
            &case.tensor("decode.logits"),
            1e-4,
            &format!("{name} decode logits"),
        );
        assert_close(
            &decoded,
            &case.tensor("prefill.logits"),
            1e-4,
            &format!("{name} decode vs prefill"),
        );
    }
}

/// Blocks of 3 tokens over a growing cache (what MTP verification runs) take the absorbed path
/// by default and the others when forced; all match HF's prefill.
#[test]
fn short_blocks_over_the_cache_match_prefill_on_every_path() {
    use mla::AttentionPath;
    use model::PathPolicy;
    let case = Case::load("v3_noaux");
    let mut model = load(&case);
    let ids = case.ids("input_ids");
    let want = case.tensor("prefill.logits");
    assert_eq!(model.paths.for_tokens(3), AttentionPath::Absorbed);
    assert_eq!(model.paths.for_tokens(9), AttentionPath::Flash);
    for short in [
        AttentionPath::Flash,
        AttentionPath::Absorbed,
        AttentionPath::Expanded,
    ] {
        model.paths = PathPolicy {
            short,
            ..PathPolicy::default()
        };
        let mut session = model.new_session().unwrap();
        let rows: Vec<Tensor> = ids
            .chunks(3)
            .map(|block| model.forward(block, &mut session).unwrap().logits)
            .collect();
        let got = Tensor::cat(&rows, 0).unwrap();
        assert_close(&got, &want, 1e-4, &format!("3-token blocks, {short:?}"));
    }
}

#[test]
fn final_hidden_matches_hf() {
    for name in CASES {
        let case = Case::load(name);
        let model = load(&case);
        let mut session = model.new_session().unwrap();
        let out = model.forward(&case.ids("input_ids"), &mut session).unwrap();
        assert_close(
            &out.hidden,
            &case.tensor("prefill.final_hidden"),
            1e-4,
            &format!("{name} hidden"),
        );
    }
}

#[test]
fn greedy_continuation_matches_hf() {
    for name in CASES {
        let case = Case::load(name);
        let model = load(&case);
        let mut session = model.new_session().unwrap();
        let mut out = model.forward(&case.ids("input_ids"), &mut session).unwrap();
        let want = case.ids("greedy");
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = *DeepSeek::argmax_rows(&out.logits).unwrap().last().unwrap();
            got.push(next);
            out = model.forward(&[next], &mut session).unwrap();
        }
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn forward_last_is_the_last_row_of_forward() {
    let case = Case::load("v3_noaux");
    let model = load(&case);
    let ids = case.ids("input_ids");
    let all = model
        .forward(&ids, &mut model.new_session().unwrap())
        .unwrap();
    let last = model
        .forward_last(&ids, &mut model.new_session().unwrap())
        .unwrap();
    let want = all.logits.narrow(0, ids.len() - 1, 1).unwrap();
    // One head row runs on the matrix-vector kernel, T rows on the GEMM: same products,
    // another summation order.
    assert_close(&last.logits, &want, 1e-5, "forward_last");
    assert_close(&last.hidden, &all.hidden, 0.0, "forward_last hidden");
}

/// Chunked prefill (each chunk through every layer over the cache plus itself) gives HF's
/// prefill logits and hidden states on every fixture, for chunk sizes that split the prompt
/// unevenly and that fall on either side of the short/long path boundary, and the decode step
/// after it matches HF's greedy continuation.
#[test]
fn chunked_prefill_matches_hf_and_one_pass() {
    for name in CASES {
        let case = Case::load(name);
        let mut model = load(&case);
        let ids = case.ids("input_ids");
        for chunk in [1, 3, 4, ids.len() - 1, ids.len(), usize::MAX] {
            model.prefill_chunk = chunk;
            let mut session = model.new_session().unwrap();
            let out = model.forward(&ids, &mut session).unwrap();
            let what = format!("{name}, chunks of {chunk}");
            assert_close(&out.logits, &case.tensor("prefill.logits"), 1e-4, &what);
            assert_close(
                &out.hidden,
                &case.tensor("prefill.final_hidden"),
                1e-4,
                &what,
            );
            assert_eq!(session.len(), ids.len(), "{what}");
            let next = *DeepSeek::argmax_rows(&out.logits).unwrap().last().unwrap();
            assert_eq!(next, case.ids("greedy")[0], "{what}");
            let step = model.forward(&[next], &mut session).unwrap();
            let again = *DeepSeek::argmax_rows(&step.logits).unwrap().last().unwrap();
            assert_eq!(
                again,
                case.ids("greedy")[1],
                "{what}: decode after chunked prefill"
            );
        }
    }
}
