//! Generation on the fixture model: greedy matches HF's continuation, EOS and budgets stop it,
//! sampling is reproducible by seed.

use candle_core::{DType, Device};
use fixtures::Case;
use model::generate::{generate, Decoding, FinishReason, GenerateOptions, Generator};
use model::{DeepSeek, SamplingParams};

fn setup() -> (Case, DeepSeek) {
    let case = Case::load("v3_noaux");
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    (case, model)
}

#[test]
fn greedy_generation_matches_hf_and_streams_every_token() {
    let (case, model) = setup();
    let want = case.ids("greedy");
    let mut streamed = Vec::new();
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        ..Default::default()
    };
    let gen = generate(&model, &case.ids("input_ids"), &opts, |t| {
        streamed.push(t);
        Ok(true)
    })
    .unwrap();
    assert_eq!(gen.tokens, want);
    assert_eq!(streamed, want);
    assert_eq!(gen.finish, FinishReason::MaxTokens);
}

#[test]
fn stop_token_ends_generation_without_emitting_it() {
    let (case, model) = setup();
    let want = case.ids("greedy");
    let opts = GenerateOptions {
        max_new_tokens: 50,
        stop_tokens: vec![want[3]],
        ..Default::default()
    };
    let gen = generate(&model, &case.ids("input_ids"), &opts, |_| Ok(true)).unwrap();
    let first = want.iter().position(|&t| t == want[3]).unwrap();
    assert_eq!(gen.tokens, want[..first]);
    assert_eq!(gen.finish, FinishReason::Eos);
}

#[test]
fn callback_can_stop_and_sampling_is_seeded() {
    let (case, model) = setup();
    let prompt = case.ids("input_ids");
    let opts = GenerateOptions {
        max_new_tokens: 20,
        ..Default::default()
    };
    let gen = generate(&model, &prompt, &opts, |_| Ok(false)).unwrap();
    assert_eq!((gen.tokens.len(), gen.finish), (1, FinishReason::Callback));

    let sampled = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: SamplingParams::r1_chat(seed),
            ..Default::default()
        };
        generate(&model, &prompt, &opts, |_| Ok(true))
            .unwrap()
            .tokens
    };
    assert_eq!(sampled(5), sampled(5));
    assert_ne!(sampled(5), sampled(6));
}

#[test]
fn bad_token_ids_are_errors() {
    let (_, model) = setup();
    let err = model.logits(&[1, 256]).unwrap_err().to_string();
    assert!(err.contains("token id 256 is out of range"), "{err}");
    assert!(model.logits(&[]).is_err());
}

#[test]
fn plain_is_the_default_and_reports_no_mtp_stats() {
    let (case, model) = setup();
    let prompt = case.ids("input_ids");
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    assert_eq!(opts.decoding, Decoding::Plain);
    let free = generate(&model, &prompt, &opts, |_| Ok(true)).unwrap();
    assert!(free.mtp.is_none());
    assert_eq!(free.tokens, case.ids("greedy")[..6]);
    let gen = Generator::new(model);
    let held = gen.generate(&prompt, &opts, |_| Ok(true)).unwrap();
    assert_eq!(held.tokens, free.tokens);

    let zero = GenerateOptions {
        max_new_tokens: 0,
        ..Default::default()
    };
    let out = gen.generate(&prompt, &zero, |_| Ok(true)).unwrap();
    assert_eq!((out.tokens.len(), out.finish), (0, FinishReason::MaxTokens));
    let e = gen.generate(&[], &opts, |_| Ok(true)).unwrap_err();
    assert!(e.to_string().contains("empty prompt"), "{e}");
}
