//! MTP on the `v3_mtp` fixture: depth-1 logits against HF transformers 5.23, speculative
//! greedy against plain greedy, cache rollback against fresh recomputation, and the sampled
//! distribution against the exact one; MTP through `model::generate` against plain decoding
//! (tokens, stop tokens and strings, budget, callback, errors, the path policy).
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Device};
use fixtures::{assert_close, fixtures_dir, max_abs_diff, Case};
use mla::AttentionPath;
use model::generate::{
    generate, generate_text, Decoding, FinishReason, GenerateOptions, Generation, Generator,
};
use model::mtp::{load_mtp_modules, mtp_forward, mtp_logits, Module};
use model::{DeepSeek, ModelError, PathPolicy, Sampler, SamplingParams, Tokenizer};
use mtp::{speculative_generate, DecoderBlock, Greedy, SpecOptions, Speculator};

fn load() -> (Case, DeepSeek, Vec<Module>) {
    let case = Case::load("v3_mtp");
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    let modules = load_mtp_modules(&model).unwrap();
    assert_eq!(modules.len(), 1);
    (case, model, modules)
}

#[test]
fn mtp_logits_match_hf() {
    let (case, model, modules) = load();
    let ids = case.ids("input_ids");
    let (hidden, logits) = mtp_forward(&model, &modules[0], &ids).unwrap();
    assert_close(&hidden, &case.tensor("mtp.hidden"), 1e-4, "mtp.hidden");
    assert_close(&logits, &case.tensor("mtp.logits"), 1e-4, "mtp.logits");
    let cli = mtp_logits(&model, &ids)
        .unwrap()
        .expect("fixture has an MTP layer");
    assert_eq!(cli.dims(), &[ids.len() - 1, 256]);
    assert_eq!(max_abs_diff(&cli, &logits), 0.0);
}

#[test]
fn no_mtp_layer_means_no_mtp_logits() {
    let case = Case::load("v3_noaux");
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    assert!(mtp_logits(&model, &case.ids("input_ids"))
        .unwrap()
        .is_none());
}

#[test]
fn speculative_greedy_equals_plain_greedy_over_256_tokens() {
    let (case, model, modules) = load();
    let prompt = case.ids("input_ids");
    let n = 256;
    let opts = GenerateOptions {
        max_new_tokens: n,
        ..GenerateOptions::default()
    };
    let plain = generate(&model, &prompt, &opts, |_| Ok(true))
        .unwrap()
        .tokens;
    assert_eq!(&plain[..16], &case.ids("greedy")[..], "plain greedy vs HF");
    let spec_opts = SpecOptions {
        max_new_tokens: n,
        stop_tokens: vec![],
    };
    let out =
        speculative_generate(&model, &modules, &prompt, &spec_opts, &mut Greedy, |_| true).unwrap();
    println!(
        "greedy acceptance {:.3} over {} steps, {:.2} tokens/step",
        out.stats.acceptance_rate(),
        out.stats.steps,
        out.stats.tokens_per_step()
    );
    assert_eq!(out.tokens.len(), n);
    assert_eq!(out.tokens, plain);
    // The model crate's greedy Sampler gives the same tokens as mtp::Greedy.
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let out2 = speculative_generate(&model, &modules, &prompt, &spec_opts, &mut sampler, |_| {
        true
    })
    .unwrap();
    assert_eq!(out2.tokens, plain);
}

/// Main and MTP latent caches after many speculative steps (with accepted and rejected
/// drafts) equal a fresh recomputation from the committed tokens, entry for entry.
#[test]
fn rollback_leaves_no_stale_entries() {
    let (case, model, modules) = load();
    let prompt = case.ids("input_ids");
    // Temperature-1 sampling on random weights accepts a fair share of drafts.
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: 5,
    };
    let mut sampler = Sampler::new(params);
    let mut spec = Speculator::new(&model, &modules, &prompt, &mut sampler).unwrap();
    let mut worst: f32 = 0.0;
    for step in 0..40 {
        spec.step(&mut sampler).unwrap();
        if step % 8 != 7 {
            continue;
        }
        let toks = spec.tokens().to_vec();
        let n = toks.len() - 1;
        // Main cache: a fresh prefill of the n committed tokens.
        let mut fresh = model.new_session().unwrap();
        let out = model.forward(&toks[..n], &mut fresh).unwrap();
        for l in 0..model.layers().len() {
            let (c0, k0) = spec.session().kv.layer(l).unwrap().views().unwrap();
            let (c1, k1) = fresh.kv.layer(l).unwrap().views().unwrap();
            worst = worst
                .max(max_abs_diff(&c0, &c1))
                .max(max_abs_diff(&k0, &k1));
        }
        // MTP cache: module 1 over (h_i, t_{i+1}) for the entries it kept.
        let cache = spec.mtp_cache(1);
        let len = cache.kv.uniform_len().unwrap();
        // Module 1 keeps entries 0..N_old (it catches up on the accepted ones when it drafts).
        assert!(
            len >= prompt.len() && len < n,
            "module 1 holds {len} of {n}"
        );
        let mut m_cache = modules[0].new_cache().unwrap();
        let emb = model.embed(&toks[1..=len]).unwrap();
        let prev = out.hidden.narrow(0, 0, len).unwrap().unsqueeze(0).unwrap();
        modules[0].forward(&emb, &prev, &mut m_cache).unwrap();
        let (c0, k0) = cache.kv.views().unwrap();
        let (c1, k1) = m_cache.kv.views().unwrap();
        worst = worst
            .max(max_abs_diff(&c0, &c1))
            .max(max_abs_diff(&k0, &k1));
    }
    let s = spec.stats();
    println!(
        "sampling acceptance {:.3}, {} steps, max |cache - fresh| = {worst:.2e}",
        s.acceptance_rate(),
        s.steps
    );
    assert!(
        s.accepted[0] > 3 && s.accepted[0] + 3 < s.proposed[0],
        "{s:?}"
    );
    assert!(worst < 1e-4, "stale or wrong cache entries: {worst}");
}

/// Top-3 sampling: the joint law of the first two generated tokens (9 cells, computed exactly
/// from the model) against speculative sampling, chi-square at a fixed seed.
#[test]
fn speculative_sampling_matches_the_main_distribution() {
    let (case, model, modules) = load();
    let prompt = case.ids("input_ids");
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 3,
        seed: 11,
    };
    let dist = |tokens: &[u32]| -> Vec<(u32, f32)> {
        let logits = model.logits(tokens).unwrap();
        let last = logits
            .get(tokens.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        Sampler::new(params).distribution(&last)
    };
    let mut cells: Vec<((u32, u32), f64)> = Vec::new();
    for (a, pa) in dist(&prompt) {
        let mut ext = prompt.clone();
        ext.push(a);
        for (b, pb) in dist(&ext) {
            cells.push(((a, b), pa as f64 * pb as f64));
        }
    }
    let trials = 1500;
    let mut counts = vec![0usize; cells.len()];
    let mut sampler = Sampler::new(params);
    let opts = SpecOptions {
        max_new_tokens: 2,
        stop_tokens: vec![],
    };
    let mut accepted = 0;
    for _ in 0..trials {
        let out =
            speculative_generate(&model, &modules, &prompt, &opts, &mut sampler, |_| true).unwrap();
        let i = cells
            .iter()
            .position(|c| c.0 == (out.tokens[0], out.tokens[1]))
            .expect("token outside the top-3 support");
        counts[i] += 1;
        accepted += out.stats.accepted[0];
    }
    let chi: f64 = counts
        .iter()
        .zip(&cells)
        .map(|(&c, (_, p))| {
            let e = p * trials as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    println!(
        "chi2 = {chi:.2} over {} cells; {accepted} drafts accepted",
        cells.len()
    );
    // 99.9% quantile of chi-square with 8 degrees of freedom: 26.1.
    assert!(chi < 26.1, "chi2 {chi}: counts {counts:?} vs {cells:?}");
    // Random weights: the MTP's top 3 rarely overlap the main model's, so this mostly checks
    // the rejection branch; the synthetic tests in the mtp crate cover acceptance.
}

#[test]
fn mtp_needs_two_tokens() {
    let (_, model, modules) = load();
    let e = mtp_forward(&model, &modules[0], &[3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 tokens"), "{e}");
}

fn generator() -> (Case, Generator) {
    let case = Case::load("v3_mtp");
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    (case, Generator::new(model))
}

fn options(max_new_tokens: usize, decoding: Decoding) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        decoding,
        ..GenerateOptions::default()
    }
}

/// Runs `opts` and returns the generation and every id the callback saw.
fn run(gen: &Generator, prompt: &[u32], opts: &GenerateOptions) -> (Generation, Vec<u32>) {
    let mut seen = Vec::new();
    let out = gen
        .generate(prompt, opts, |t| {
            seen.push(t);
            Ok(true)
        })
        .unwrap();
    (out, seen)
}

#[test]
fn mtp_through_generate_equals_plain_greedy() {
    let (case, gen) = generator();
    let prompt = case.ids("input_ids");
    let n = 96;
    let (plain, _) = run(&gen, &prompt, &options(n, Decoding::Plain));
    assert_eq!(
        &plain.tokens[..16],
        &case.ids("greedy")[..],
        "plain greedy vs HF"
    );
    assert!(plain.mtp.is_none());
    let (spec, seen) = run(&gen, &prompt, &options(n, Decoding::Mtp));
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(seen, plain.tokens, "every token reaches the callback once");
    assert_eq!(spec.finish, FinishReason::MaxTokens);
    assert_eq!(spec.prompt_tokens, prompt.len());
    let stats = spec.mtp.expect("MTP ran");
    assert!(stats.steps > 0 && stats.steps < n, "{stats:?}");
    assert_eq!(stats.proposed.len(), 1);
    // The free function loads the modules itself and gives the same tokens.
    let free = generate(gen.model(), &prompt, &options(n, Decoding::Mtp), |_| {
        Ok(true)
    })
    .unwrap();
    assert_eq!(free.tokens, plain.tokens);
}

/// Sampling commits several tokens per step now and then; every budget is met exactly and
/// each shorter run is a prefix of the longer one (same seed, same draws).
#[test]
fn mtp_meets_the_token_budget_exactly() {
    let (case, gen) = generator();
    let prompt = case.ids("input_ids");
    let sampled = |n| GenerateOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 5,
        },
        ..options(n, Decoding::Mtp)
    };
    let full_len = 40;
    let (full, _) = run(&gen, &prompt, &sampled(full_len));
    assert_eq!(full.tokens.len(), full_len);
    let stats = full.mtp.as_ref().unwrap();
    assert!(
        stats.accepted[0] > 0,
        "no step committed two tokens, so overshoot is untested: {stats:?}"
    );
    for n in 0..full_len {
        let (out, seen) = run(&gen, &prompt, &sampled(n));
        assert_eq!(out.tokens, full.tokens[..n], "budget {n}");
        assert_eq!(seen, out.tokens, "budget {n}");
        assert_eq!(out.finish, FinishReason::MaxTokens);
    }
    // Greedy too, against plain.
    let (plain, _) = run(&gen, &prompt, &options(full_len, Decoding::Plain));
    for n in [1, 2, 3, 7, 10] {
        assert_eq!(
            run(&gen, &prompt, &options(n, Decoding::Mtp)).0.tokens,
            plain.tokens[..n]
        );
    }
}

#[test]
fn mtp_stop_tokens_and_callback_stop_like_plain() {
    let (case, gen) = generator();
    let prompt = case.ids("input_ids");
    let (plain, _) = run(&gen, &prompt, &options(40, Decoding::Plain));
    let stop = plain.tokens[5];
    let first = plain.tokens.iter().position(|&t| t == stop).unwrap();
    for decoding in [Decoding::Plain, Decoding::Mtp] {
        let opts = GenerateOptions {
            stop_tokens: vec![stop],
            ..options(40, decoding)
        };
        let (out, seen) = run(&gen, &prompt, &opts);
        assert_eq!(out.tokens, plain.tokens[..first], "{decoding:?}");
        assert_eq!(seen, out.tokens);
        assert_eq!(out.finish, FinishReason::Eos, "{decoding:?}");

        let mut calls = 0;
        let out = gen
            .generate(&prompt, &options(40, decoding), |_| {
                calls += 1;
                Ok(calls < 4)
            })
            .unwrap();
        assert_eq!(out.tokens, plain.tokens[..4], "{decoding:?}");
        assert_eq!(out.finish, FinishReason::Callback);
    }
}

#[test]
fn mtp_stop_strings_end_generation_like_plain() {
    let (_, gen) = generator();
    let tokenizer = Tokenizer::from_dir(&fixtures_dir().join("tiny_tokenizer")).unwrap();
    let prompt = tokenizer.encode("What is 2+2?").unwrap();
    let text_of = |opts: &GenerateOptions| {
        let mut streamed = String::new();
        let (out, text) = gen
            .generate_text(&tokenizer, &prompt, opts, |piece| streamed.push_str(piece))
            .unwrap();
        assert_eq!(streamed, text, "the stream is the final text");
        (out, text)
    };
    let (plain, full) = text_of(&options(48, Decoding::Plain));
    let (spec, spec_full) = text_of(&options(48, Decoding::Mtp));
    assert_eq!((&spec.tokens, &spec_full), (&plain.tokens, &full));
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() >= 8, "too little text to cut: {full:?}");
    // A two-character stop string from the middle of the text.
    let (cut, _) = chars[chars.len() / 2];
    let stop: String = full[cut..].chars().take(2).collect();
    let want = &full[..full.find(&stop).unwrap()];
    for decoding in [Decoding::Plain, Decoding::Mtp] {
        let opts = GenerateOptions {
            stop_strings: vec![stop.clone(), "\u{1}never".into()],
            ..options(48, decoding)
        };
        let (out, text) = text_of(&opts);
        assert_eq!(text, want, "{decoding:?}");
        assert_eq!(out.finish, FinishReason::StopString, "{decoding:?}");
        assert!(out.tokens.len() < plain.tokens.len());
        assert_eq!(out.tokens, plain.tokens[..out.tokens.len()]);
    }
    // The free function, same path.
    let opts = GenerateOptions {
        stop_strings: vec![stop.clone()],
        ..options(48, Decoding::Mtp)
    };
    let (out, text) = generate_text(gen.model(), &tokenizer, &prompt, &opts, |_| {}).unwrap();
    assert_eq!(
        (text.as_str(), out.finish),
        (want, FinishReason::StopString)
    );
}

#[test]
fn mtp_without_mtp_modules_is_an_error() {
    let case = Case::load("v3_noaux");
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    let prompt = case.ids("input_ids");
    let opts = options(4, Decoding::Mtp);
    let e = generate(&model, &prompt, &opts, |_| Ok(true)).unwrap_err();
    assert!(matches!(e, ModelError::Input(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&case.dir.display().to_string()) && msg.contains("num_nextn_predict_layers"),
        "{msg}"
    );
    let gen = Generator::new(model);
    let Err(e) = gen.mtp_modules() else {
        panic!("v3_noaux has no MTP modules")
    };
    let msg = e.to_string();
    assert!(msg.contains("num_nextn_predict_layers is 0"), "{msg}");
    assert!(gen.generate(&prompt, &opts, |_| Ok(true)).is_err());
    // Plain decoding is unaffected.
    let plain = gen
        .generate(&prompt, &options(4, Decoding::Plain), |_| Ok(true))
        .unwrap();
    assert_eq!(plain.tokens.len(), 4);
}

/// Model errors raised inside speculative decoding come back as themselves, not boxed.
#[test]
fn mtp_errors_are_model_errors() {
    let (_, gen) = generator();
    let opts = options(4, Decoding::Mtp);
    let e = gen.generate(&[3, 300], &opts, |_| Ok(true)).unwrap_err();
    assert!(matches!(e, ModelError::Input(_)), "{e:?}");
    assert!(
        e.to_string().contains("token id 300 is out of range"),
        "{e}"
    );
    let e = gen.generate(&[], &opts, |_| Ok(true)).unwrap_err();
    assert!(e.to_string().contains("empty prompt"), "{e}");
}

const EXPANDED: PathPolicy = PathPolicy {
    short: AttentionPath::Expanded,
    long: AttentionPath::Expanded,
    short_max: 8,
};

/// The MTP blocks run with the model's path policy: with the expanded path forced, a block
/// over 3 tokens (short, so absorbed under the default policy) equals the expanded layer
/// bit for bit, which the absorbed layer does not.
#[test]
fn mtp_blocks_use_the_model_path_policy() {
    let (_, mut model, default_modules) = load();
    assert_eq!(
        default_modules[0].block().path_policy(),
        PathPolicy::default()
    );
    model.paths = EXPANDED;
    let modules = load_mtp_modules(&model).unwrap();
    let block = modules[0].block();
    assert_eq!(block.path_policy(), EXPANDED);

    let x = fixtures::seeded_randn(&[1, 3, 64], 1.0, 452);
    let layer_out = |path| {
        let mut cache = block.new_cache().unwrap();
        block
            .layer()
            .forward(
                &x,
                0,
                &mut cache.rope,
                Some(&mut cache.kv),
                cache.index.as_mut(),
                path,
            )
            .unwrap()
    };
    let expanded = layer_out(AttentionPath::Expanded);
    let absorbed = layer_out(AttentionPath::Absorbed);
    assert!(
        max_abs_diff(&expanded, &absorbed) > 0.0,
        "the two paths agree bit for bit here, so this test cannot tell them apart"
    );
    let via_block = |module: &Module| {
        let mut cache = module.new_cache().unwrap();
        DecoderBlock::forward(module.block(), &x, &mut cache).unwrap()
    };
    assert_eq!(max_abs_diff(&via_block(&modules[0]), &expanded), 0.0);
    assert_eq!(
        max_abs_diff(&via_block(&default_modules[0]), &absorbed),
        0.0
    );

    // Through a Generator: the policy reaches the modules it loads, and MTP generation under
    // it still equals plain generation under it.
    let case = Case::load("v3_mtp");
    let prompt = case.ids("input_ids");
    let mut gen = Generator::new(model);
    assert_eq!(
        gen.mtp_modules().unwrap()[0].block().path_policy(),
        EXPANDED
    );
    let (plain, _) = run(&gen, &prompt, &options(32, Decoding::Plain));
    let (spec, _) = run(&gen, &prompt, &options(32, Decoding::Mtp));
    assert_eq!(spec.tokens, plain.tokens);
    gen.set_path_policy(PathPolicy::default()).unwrap();
    assert_eq!(gen.model().paths, PathPolicy::default());
    assert_eq!(
        gen.mtp_modules().unwrap()[0].block().path_policy(),
        PathPolicy::default()
    );
}

/// `--bf16-activations` reaches the MTP blocks as it does the main layers: with bf16 matrices
/// every projection and expert matrix of both is a `Matrix::Bf16Activations`, and without it
/// none is.
#[test]
fn mtp_blocks_take_the_model_s_bf16_activations() {
    let case = Case::load("v3_mtp");
    for on in [true, false] {
        let precision = model::Precision::mixed(DType::F32, DType::BF16).with_bf16_activations(on);
        let model = DeepSeek::load(&case.dir, precision, &Device::Cpu).unwrap();
        let modules = load_mtp_modules(&model).unwrap();
        assert!(!modules.is_empty(), "the fixture has MTP modules");
        let main = model.layers().iter();
        let blocks = modules.iter().map(|m| m.block().layer());
        for (i, layer) in main.chain(blocks).enumerate() {
            let matrices = layer.matrices();
            assert!(!matrices.is_empty());
            for m in matrices {
                assert_eq!(
                    matches!(m, linear::Matrix::Bf16Activations(_)),
                    on,
                    "layer {i} (main layers first), bf16 activations {on}"
                );
            }
        }
    }
}
