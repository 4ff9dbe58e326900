//! The continuous-batching engine on the fixture model: greedy output equals plain generation
//! and HF's continuation, batch invariance (alone = among 63 others, token for token and
//! log-probability for log-probability), one prefill for `n` samples, cancellation and
//! budgets that free every page, and refusals that leave nothing queued.

use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use fixtures::{log_softmax_at, Case};
use model::engine::{
    Completion, Engine, EngineConfig, EngineStats, Event, Request, RequestParams, SubmitError,
};
use model::generate::{generate, FinishReason, GenerateOptions};
use model::penalties::Penalties;
use model::structured::Structure;
use model::{DeepSeek, MatrixFormat, Precision, SamplingParams, Tokenizer};

fn model() -> (Case, Arc<DeepSeek>) {
    let case = Case::load("v3_noaux");
    let model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
    (case, Arc::new(model))
}

fn tokenizer() -> Arc<Tokenizer> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny_tokenizer");
    Arc::new(Tokenizer::from_dir(&dir).unwrap())
}

fn small_pages() -> EngineConfig {
    // Pages of 8 tokens, so prompts span pages and forks share some.
    EngineConfig {
        page_tokens: 8,
        prefill_chunk: 16,
        ..EngineConfig::default()
    }
}

/// Small pages and a budget of 12 of them: room for about two short requests at a time.
fn twelve_pages() -> EngineConfig {
    EngineConfig {
        cache_tokens: 8 * 12,
        ..small_pages()
    }
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt,
        params: RequestParams {
            max_tokens,
            logprobs: Some(2),
            ..RequestParams::default()
        },
    }
}

/// Distinct prompts of different lengths drawn from the fixture's prompt.
fn prompts(base: &[u32], count: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|i| {
            let len = 3 + (i * 7) % 29;
            (0..len)
                .map(|j| base[(i + j * 3) % base.len()].wrapping_add(i as u32) % 256)
                .collect()
        })
        .collect()
}

/// Waits until the engine has nothing running or reserved and holds no pages but the prefix
/// cache's (the thread publishes after each step).
fn settled(engine: &Engine) -> EngineStats {
    let t0 = Instant::now();
    loop {
        let s = engine.stats();
        if (s.running, s.pages_reserved, s.waiting) == (0, 0, 0)
            && s.pages_used == s.prefix_cache_pages
        {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "engine never settled: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn greedy_output_equals_hf_and_plain_generation() {
    let (case, model) = model();
    let want = case.ids("greedy");
    let engine = Engine::start(model, None, small_pages()).unwrap();
    let out = engine
        .generate(greedy(case.ids("input_ids"), want.len()))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tokens, want);
    assert_eq!(out[0].finish, Some(FinishReason::MaxTokens));
    assert_eq!(out[0].logprobs.len(), want.len());
    for lp in &out[0].logprobs {
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp.top[0].1, lp.logprob);
        assert!(lp.logprob <= 0.0 && lp.top[1].1 <= lp.top[0].1);
    }
    settled(&engine);
}

/// Runs every request at once (each from its own thread) and returns the completions.
fn run_together(engine: &Engine, requests: &[Request]) -> Vec<Vec<Completion>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| s.spawn(|| engine.generate(r.clone()).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Each of 64 requests run together equals its run alone on a fresh engine under `config`;
/// the most decode rows one pass carried.
fn same_alone_and_among_63_others(
    case: &Case,
    model: Arc<DeepSeek>,
    config: EngineConfig,
) -> usize {
    let engine = Engine::start(model.clone(), None, config.clone()).unwrap();
    let requests: Vec<Request> = prompts(&case.ids("input_ids"), 64)
        .into_iter()
        .enumerate()
        .map(|(i, p)| greedy(p, 4 + i % 9))
        .collect();
    let together = run_together(&engine, &requests);
    let stats = settled(&engine);
    assert!(stats.steps > 0);
    for (i, (r, got)) in requests.iter().zip(&together).enumerate() {
        // Alone: a fresh engine, so nothing comes from the first run's prefix cache.
        let solo = Engine::start(model.clone(), None, config.clone()).unwrap();
        let alone = solo.generate(r.clone()).unwrap();
        assert_eq!(
            got, &alone,
            "request {i}: tokens or log-probabilities differ"
        );
    }
    settled(&engine).largest_decode_pass
}

#[test]
fn a_request_gives_the_same_output_alone_and_among_63_others() {
    let (case, model) = model();
    assert_eq!(model.batch_invariant_rows(), linear::GEMV_MAX_ROWS);
    same_alone_and_among_63_others(&case, model, small_pages());
}

/// A `precision` model whose passes the kernels keep invariant up to `limit` rows on this CPU:
/// 64 requests each decode as alone, and where `limit` passes `GEMV_MAX_ROWS`, in passes of
/// more than that.
fn wide_passes_stay_batch_invariant(precision: Precision, limit: usize) {
    let case = Case::load("v3_noaux");
    wide_passes_of(&case, &case.dir, precision, limit);
}

/// [`wide_passes_stay_batch_invariant`] on the checkpoint in `dir`, prompted with `case`'s.
fn wide_passes_of(case: &Case, dir: &std::path::Path, precision: Precision, limit: usize) {
    let model = Arc::new(DeepSeek::load(dir, precision, &Device::Cpu).unwrap());
    let rows = model.batch_invariant_rows();
    println!(
        "{}: passes of up to {rows} decode rows",
        linear::Isa::detect()
    );
    assert_eq!(rows, limit);
    let config = EngineConfig {
        page_tokens: 8,
        ..EngineConfig::default()
    };
    let largest = same_alone_and_among_63_others(case, model, config);
    assert!(largest <= rows, "a pass of {largest} decode rows");
    assert!(
        limit == linear::GEMV_MAX_ROWS || largest > linear::GEMV_MAX_ROWS,
        "the requests should have decoded in passes of more than 32 rows, not {largest}"
    );
}

/// bf16 matrices under bf16 activations: on AVX512-BF16 CPUs a pass decodes up to 64
/// sequences (the unpacked `vdpbf16ps` kernel). Every prompt is prefilled in the first step
/// but the last few (a chunk's budget holds almost all), so nearly all 64 requests then decode
/// in one pass.
#[test]
fn with_bf16_activations_passes_of_64_rows_stay_batch_invariant() {
    let precision = Precision::mixed(DType::F32, DType::BF16).with_bf16_activations(true);
    let bf16_kernel = matches!(linear::Isa::detect().name(), "avx512bf16" | "amx-bf16");
    let limit = if bf16_kernel {
        64
    } else {
        linear::GEMV_MAX_ROWS
    };
    wide_passes_stay_batch_invariant(precision, limit);
}

/// bf16 matrices under bf16 activations on a model whose every matrix has `K` a multiple of
/// 32 (a random checkpoint of the fixture's shape with the expert width and query rank rounded
/// up to 32 and 64): on AMX CPUs every product runs on tiles, which sum each row on its own,
/// so passes are unbounded and each of 64 requests decoding together still equals its run
/// alone; elsewhere as the test above.
#[test]
fn with_bf16_activations_on_tile_shapes_passes_stay_batch_invariant() {
    let case = Case::load("v3_noaux");
    let config = std::fs::read_to_string(case.dir.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["moe_intermediate_size"] = 32.into();
    config["q_lora_rank"] = 64.into();
    let dir = tempfile::tempdir().unwrap();
    let bf16 = model::random::StoreDtype::Bf16;
    model::random::write_random_checkpoint(&config.to_string(), dir.path(), bf16, 5, |_, _, _| {})
        .unwrap();
    let precision = Precision::mixed(DType::F32, DType::BF16).with_bf16_activations(true);
    let limit = match linear::Isa::detect().name() {
        "amx-bf16" => usize::MAX,
        "avx512bf16" => 64,
        _ => linear::GEMV_MAX_ROWS,
    };
    wide_passes_of(&case, dir.path(), precision, limit);
}

/// 8-bit matrices: on AVX512-VNNI CPUs they are held in panels, whose one kernel gives every
/// row the same bits at any number of rows, and on AVX2 CPUs the row kernels take up to 64
/// rows, so a pass may decode all 64 sequences; on the portable path passes stay at
/// `GEMV_MAX_ROWS`.
#[test]
fn with_8_bit_matrices_passes_of_64_rows_stay_batch_invariant() {
    let precision = Precision::mixed(DType::F32, MatrixFormat::Quant(linear::QuantFormat::Q8));
    let isa = linear::Isa::detect();
    let limit = if isa.rounds_quant_gemm_activations() {
        usize::MAX
    } else {
        isa.quant_row_kernel_rows()
    };
    wide_passes_stay_batch_invariant(precision, limit);
}

#[test]
fn without_batch_invariance_outputs_agree_up_to_rounding() {
    let (case, model) = model();
    let fast = Engine::start(
        model.clone(),
        None,
        EngineConfig {
            batch_invariant: false,
            ..small_pages()
        },
    )
    .unwrap();
    let exact = Engine::start(model, None, small_pages()).unwrap();
    let requests: Vec<Request> = prompts(&case.ids("input_ids"), 24)
        .into_iter()
        .map(|p| greedy(p, 1))
        .collect();
    let got = run_together(&fast, &requests);
    for (r, g) in requests.iter().zip(got) {
        let want = &exact.generate(r.clone()).unwrap()[0];
        let (a, b) = (&g[0].logprobs[0], &want.logprobs[0]);
        assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} vs {b:?}");
    }
    settled(&fast);
}

#[test]
fn n_samples_share_one_prefill_and_each_equals_its_own_seeded_request() {
    let (case, model) = model();
    let engine = Engine::start(model, None, small_pages()).unwrap();
    let prompt: Vec<u32> = prompts(&case.ids("input_ids"), 8).concat()[..40].to_vec();
    let params = RequestParams {
        n: 6,
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 0,
            seed: 11,
        },
        ..RequestParams::default()
    };
    let before = engine.stats().prompt_tokens;
    let samples = engine
        .generate(Request {
            prompt: prompt.clone(),
            params: params.clone(),
        })
        .unwrap();
    assert_eq!(engine.stats().prompt_tokens - before, prompt.len() as u64);
    assert_eq!(samples.len(), 6);
    let distinct: std::collections::HashSet<_> = samples.iter().map(|s| &s.tokens).collect();
    assert!(distinct.len() > 1, "six samples at temperature 1 all equal");
    for (i, s) in samples.iter().enumerate() {
        let alone = engine
            .generate(Request {
                prompt: prompt.clone(),
                params: RequestParams {
                    n: 1,
                    sampling: SamplingParams {
                        seed: 11 + i as u64,
                        ..params.sampling
                    },
                    ..params.clone()
                },
            })
            .unwrap();
        assert_eq!(s.tokens, alone[0].tokens, "sample {i}");
    }
    settled(&engine);
}

/// Penalties act per sample over that sample's own history: each of `n` sampled outputs
/// equals plain generation with its seed and the same penalties (whose arithmetic
/// `model::penalties` tests against the equations), greedy output changes, and a large bias
/// forces its token.
#[test]
fn penalties_apply_per_sample_as_in_plain_generation() {
    let (case, model) = model();
    let engine = Engine::start(model.clone(), None, small_pages()).unwrap();
    let prompt = case.ids("input_ids");
    let plain_greedy = case.ids("greedy");
    let penalties = Penalties {
        presence: 0.4,
        frequency: 0.7,
        repetition: 1.5,
        logit_bias: vec![(plain_greedy[1], -5.0)],
    };
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 0,
        seed: 3,
    };
    let params = RequestParams {
        n: 3,
        max_tokens: 16,
        sampling,
        penalties: penalties.clone(),
        ..RequestParams::default()
    };
    let request = |params: RequestParams| Request {
        prompt: prompt.clone(),
        params,
    };
    let plain = |sampling: SamplingParams, penalties: &Penalties| {
        let opts = GenerateOptions {
            max_new_tokens: 16,
            sampling,
            penalties: penalties.clone(),
            ..GenerateOptions::default()
        };
        generate(&model, &prompt, &opts, |_| Ok(true))
            .unwrap()
            .tokens
    };
    let samples = engine.generate(request(params.clone())).unwrap();
    for (i, s) in samples.iter().enumerate() {
        let seed = 3 + i as u64;
        let want = plain(SamplingParams { seed, ..sampling }, &penalties);
        assert_eq!(s.tokens, want, "sample {i}");
    }
    let greedy_penalised = RequestParams {
        n: 1,
        sampling: SamplingParams::greedy(),
        ..params.clone()
    };
    let out = engine.generate(request(greedy_penalised)).unwrap();
    assert_eq!(out[0].tokens, plain(SamplingParams::greedy(), &penalties));
    assert_ne!(
        out[0].tokens,
        plain_greedy[..16],
        "the penalties changed nothing"
    );
    let forced = Penalties {
        logit_bias: vec![(7, 100.0)],
        ..Penalties::default()
    };
    let out = engine
        .generate(request(RequestParams {
            penalties: forced,
            ..params
        }))
        .unwrap();
    assert!(out.iter().all(|s| s.tokens == [7; 16]), "{out:?}");
    settled(&engine);
}

/// Structured outputs: every sample of a constrained request, sampled at temperature 1 from
/// the random model, is complete JSON valid under the schema (checked by parsing it), ends
/// when the grammar does, and a bad schema or a missing tokenizer is refused at submission.
#[test]
fn structured_outputs_follow_their_schema_in_every_sample() {
    let (case, model) = model();
    let schema = serde_json::json!({"type": "object", "additionalProperties": false,
        "properties": {"answer": {"type": "integer", "minimum": -50, "maximum": 50},
                       "unit": {"enum": ["m", "s"]}},
        "required": ["answer", "unit"]});
    let params = RequestParams {
        n: 4,
        max_tokens: 64,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 9,
        },
        structure: Some(Structure::JsonSchema(schema)),
        ..RequestParams::default()
    };
    let request = Request {
        prompt: case.ids("input_ids"),
        params: params.clone(),
    };
    let engine = Engine::start(model.clone(), Some(tokenizer()), small_pages()).unwrap();
    let out = engine.generate(request.clone()).unwrap();
    assert_eq!(out.len(), 4);
    for s in &out {
        let v: serde_json::Value =
            serde_json::from_str(&s.text).unwrap_or_else(|e| panic!("{:?}: {e}", s.text));
        assert!(
            (-50..=50).contains(&v["answer"].as_i64().unwrap()),
            "{}",
            s.text
        );
        assert!(
            ["m", "s"].contains(&v["unit"].as_str().unwrap()),
            "{}",
            s.text
        );
        assert_eq!(s.finish, Some(FinishReason::Eos), "{}", s.text);
    }
    let texts: std::collections::HashSet<_> = out.iter().map(|s| &s.text).collect();
    assert!(texts.len() > 1, "four samples at temperature 1 all equal");

    let refuse = |engine: &Engine, structure: Structure, what: &str| {
        let mut r = request.clone();
        r.params.structure = Some(structure);
        let err = engine.submit(r, Box::new(|_| true)).unwrap_err();
        assert!(
            matches!(&err, SubmitError::Invalid { param: "response_format", message } if message.contains(what)),
            "{what}: {err}"
        );
    };
    refuse(&engine, Structure::Regex("(".into()), "");

    // `structure_after`: free output up to the marker (here the text of the greedy output's
    // fourth token, where R1 would write `</think>`), then the structure.
    let tok = tokenizer();
    let free = engine
        .generate(Request {
            prompt: case.ids("input_ids"),
            params: RequestParams {
                max_tokens: 12,
                ..RequestParams::default()
            },
        })
        .unwrap()
        .remove(0);
    let k = (3..free.tokens.len())
        .find(|&k| {
            let piece = tok.decode(&free.tokens[k..=k]).unwrap();
            !piece.is_empty() && !tok.decode(&free.tokens[..k]).unwrap().contains(&piece)
        })
        .expect("a token whose text is new");
    let marker = tok.decode(&free.tokens[k..=k]).unwrap();
    let guided = engine
        .generate(Request {
            prompt: case.ids("input_ids"),
            params: RequestParams {
                max_tokens: 40,
                structure: Some(Structure::Regex("[0-9]{4}".into())),
                structure_after: Some(marker.clone()),
                ..RequestParams::default()
            },
        })
        .unwrap()
        .remove(0);
    assert_eq!(
        guided.tokens[..=k],
        free.tokens[..=k],
        "free until the marker"
    );
    let after = tok.decode(&guided.tokens[k + 1..]).unwrap();
    assert!(
        after.len() == 4 && after.bytes().all(|b| b.is_ascii_digit()),
        "{marker:?} then {after:?}"
    );
    assert_eq!(guided.finish, Some(FinishReason::Eos));

    let bare = Engine::start(model, None, small_pages()).unwrap();
    refuse(&bare, Structure::JsonObject, "tokenizer");
    settled(&engine);
}

#[test]
fn forked_samples_hold_the_prompt_pages_once() {
    let (case, model) = model();
    let engine = Engine::start(model, None, small_pages()).unwrap();
    let prompt: Vec<u32> = prompts(&case.ids("input_ids"), 8).concat()[..40].to_vec();
    let (tx, rx) = channel();
    engine
        .submit(
            Request {
                prompt,
                params: RequestParams {
                    n: 4,
                    max_tokens: 200,
                    ignore_eos: true,
                    ..RequestParams::default()
                },
            },
            Box::new(move |e| tx.send(e).is_ok()),
        )
        .unwrap();
    // Wait for a few tokens of every sample: 40 prompt tokens are 5 full pages, shared; each
    // sample then writes its own sixth page and beyond.
    let mut seen = [0usize; 4];
    while seen.iter().any(|&n| n < 3) {
        if let Event::Token { sample, .. } = rx.recv().unwrap() {
            seen[sample] += 1;
        }
    }
    let used = engine.stats().pages_used;
    assert!(
        (5 + 4..=5 + 4 * 2).contains(&used),
        "{used} pages for 4 samples of a 5-page prompt"
    );
    drop(rx); // the sink now fails: the request is cancelled and its pages freed
    settled(&engine);
}

#[test]
fn cancel_ends_every_sample_and_frees_the_pages() {
    let (case, model) = model();
    let engine = Engine::start(model, None, small_pages()).unwrap();
    let (tx, rx) = channel();
    let id = engine
        .submit(
            Request {
                prompt: case.ids("input_ids"),
                params: RequestParams {
                    n: 2,
                    max_tokens: 10_000,
                    ignore_eos: true,
                    ..RequestParams::default()
                },
            },
            Box::new(move |e| tx.send(e).is_ok()),
        )
        .unwrap();
    assert!(matches!(rx.recv().unwrap(), Event::Token { .. }));
    engine.cancel(id);
    let mut finished = vec![];
    for e in rx.iter() {
        if let Event::Finished { sample, reason, .. } = e {
            assert_eq!(reason, FinishReason::Callback);
            finished.push(sample);
        }
        if finished.len() == 2 {
            break;
        }
    }
    finished.sort();
    assert_eq!(finished, [0, 1]);
    let s = settled(&engine);
    assert_eq!(s.requests_aborted, 1);
}

#[test]
fn requests_wait_for_cache_pages_and_all_complete() {
    let (case, model) = model();
    let engine = Engine::start(model, None, twelve_pages()).unwrap();
    let requests: Vec<Request> = prompts(&case.ids("input_ids"), 10)
        .into_iter()
        .map(|p| greedy(p[..p.len().min(20)].to_vec(), 20))
        .collect();
    let out = run_together(&engine, &requests);
    assert!(out.iter().all(|o| o[0].finish.is_some()));
    let s = settled(&engine);
    assert_eq!(s.requests_finished, 10);
    // One that could never fit is refused at once.
    let err = engine
        .submit(greedy(vec![5; 90], 20), Box::new(|_| true))
        .unwrap_err();
    assert!(
        matches!(err, SubmitError::Invalid { message: ref m, .. } if m.contains("budget")),
        "{err}"
    );
}

#[test]
fn invalid_requests_are_refused_with_the_reason() {
    let (_, model) = model();
    let engine = Engine::start(model, None, small_pages()).unwrap();
    let refuse = |r: Request, what: &str| {
        let err = engine.submit(r, Box::new(|_| true)).unwrap_err();
        assert!(
            matches!(err, SubmitError::Invalid { message: ref m, .. } if m.contains(what)),
            "{what}: {err}"
        );
    };
    refuse(greedy(vec![], 4), "empty");
    refuse(greedy(vec![3, 256], 4), "out of range");
    refuse(greedy(vec![3], 200_000), "context");
    refuse(greedy(vec![3], 0), "max_tokens");
    refuse(greedy(vec![3], usize::MAX), "out of range");
    let mut r = greedy(vec![3], 4);
    r.params.sampling.temperature = -1.0;
    refuse(r.clone(), "temperature");
    r.params.sampling = SamplingParams::greedy();
    r.params.n = 65;
    refuse(r.clone(), "n must be");
    r.params.n = 1;
    r.params.penalties.logit_bias = vec![(256, 1.0)];
    refuse(r.clone(), "logit_bias token id 256");
    r.params.penalties = Penalties {
        repetition: 0.0,
        ..Penalties::default()
    };
    refuse(r.clone(), "repetition_penalty");
    r.params.penalties = Penalties::default();
    r.params.stop_strings = vec!["x".into()];
    refuse(r, "tokenizer");
    assert_eq!(engine.stats().waiting, 0);
}

#[test]
fn a_full_queue_refuses_and_recovers() {
    let (case, model) = model();
    let engine = Engine::start(
        model,
        None,
        EngineConfig {
            max_running: 1,
            max_waiting: 2,
            ..small_pages()
        },
    )
    .unwrap();
    let long = || Request {
        prompt: case.ids("input_ids"),
        params: RequestParams {
            max_tokens: 300,
            ignore_eos: true,
            ..RequestParams::default()
        },
    };
    let mut ids = vec![];
    let mut refused = 0;
    for _ in 0..6 {
        match engine.submit(long(), Box::new(|_| true)) {
            Ok(id) => ids.push(id),
            Err(SubmitError::QueueFull(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 3 && ids.len() <= 3, "{refused} refused");
    for id in ids {
        engine.cancel(id);
    }
    settled(&engine);
    assert!(engine.submit(long(), Box::new(|_| true)).is_ok());
}

#[test]
fn stop_strings_min_tokens_and_ignore_eos() {
    let (case, model) = model();
    let tok = tokenizer();
    let engine = Engine::start(model, Some(tok.clone()), small_pages()).unwrap();
    let prompt = case.ids("input_ids");
    let base = engine
        .generate(greedy(prompt.clone(), 24))
        .unwrap()
        .remove(0);
    assert_eq!(base.text, tok.decode(&base.tokens).unwrap());
    // A stop string taken from the middle of the greedy text: the output ends before it.
    let text = &base.text;
    let mid = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[mid..].chars().take(2).collect();
    let mut r = greedy(prompt.clone(), 24);
    r.params.stop_strings = vec![stop.clone()];
    let cut = engine.generate(r).unwrap().remove(0);
    assert_eq!(cut.finish, Some(FinishReason::StopString));
    assert_eq!(cut.text, text[..text.find(&stop).unwrap()]);
    // A stop token at the greedy path's third token ends there, unless min_tokens or
    // ignore_eos say otherwise.
    let eos = base.tokens[2];
    let first = base.tokens.iter().position(|&t| t == eos).unwrap();
    let mut r = greedy(prompt.clone(), 24);
    r.params.stop_tokens = vec![eos];
    let stopped = engine.generate(r.clone()).unwrap().remove(0);
    assert_eq!(
        (stopped.tokens.len(), stopped.finish),
        (first, Some(FinishReason::Eos))
    );
    r.params.ignore_eos = true;
    let through = engine.generate(r.clone()).unwrap().remove(0);
    assert_eq!(through.tokens, base.tokens);
    r.params.ignore_eos = false;
    r.params.min_tokens = first + 1;
    let longer = engine.generate(r).unwrap().remove(0);
    assert!(longer.tokens.len() > first);
    assert!(!longer.tokens[..first + 1].contains(&eos));
    settled(&engine);
}

#[test]
fn a_later_request_reuses_the_cached_prefix_and_still_equals_its_run_alone() {
    let (case, model) = model();
    let base = prompts(&case.ids("input_ids"), 8).concat();
    let a: Vec<u32> = base[..40].to_vec();
    let b: Vec<u32> = [&base[..40], &base[50..61]].concat();
    let engine = Engine::start(model.clone(), None, small_pages()).unwrap();
    engine.generate(greedy(a, 3)).unwrap();
    let s = engine.stats();
    // Chunks of 16: A's first two are whole, so its first 32 tokens (4 pages) are cached.
    assert_eq!(
        (
            s.prompt_tokens,
            s.prompt_tokens_reused,
            s.prefix_cache_pages
        ),
        (40, 0, 4)
    );
    let got = engine.generate(greedy(b.clone(), 6)).unwrap();
    let s = engine.stats();
    assert_eq!(
        (s.prompt_tokens, s.prompt_tokens_reused),
        (40 + 51 - 32, 32)
    );
    let fresh = Engine::start(model, None, small_pages()).unwrap();
    let alone = fresh.generate(greedy(b, 6)).unwrap();
    assert_eq!(fresh.stats().prompt_tokens_reused, 0);
    // The same output; each completion says how much of its prompt came from the cache.
    assert_eq!((got[0].cached_tokens, alone[0].cached_tokens), (32, 0));
    let cached = Completion {
        cached_tokens: 0,
        ..got[0].clone()
    };
    assert_eq!(vec![cached], alone);
}

#[test]
fn identical_prompts_submitted_together_are_prefilled_once() {
    let (case, model) = model();
    let prompt: Vec<u32> = prompts(&case.ids("input_ids"), 8).concat()[..40].to_vec();
    let engine = Engine::start(model, None, small_pages()).unwrap();
    let requests = vec![greedy(prompt.clone(), 5); 4];
    let out = run_together(&engine, &requests);
    let tokens: Vec<&Vec<u32>> = out.iter().map(|c| &c[0].tokens).collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    let mut cached: Vec<usize> = out.iter().map(|c| c[0].cached_tokens).collect();
    cached.sort();
    assert_eq!(cached, [0, 32, 32, 32]);
    let s = settled(&engine);
    // The first prefills all 40 tokens; the others wait for it, reuse 32 and prefill 8.
    assert_eq!(
        (s.prompt_tokens, s.prompt_tokens_reused),
        (40 + 3 * 8, 3 * 32)
    );
}

#[test]
fn the_prefix_cache_gives_way_to_admissions() {
    let (case, model) = model();
    let engine = Engine::start(model, None, twelve_pages()).unwrap();
    for p in prompts(&case.ids("input_ids"), 12) {
        let padded: Vec<u32> = p.iter().cycle().take(40).copied().collect();
        engine.generate(greedy(padded, 8)).unwrap();
        let s = engine.stats();
        assert!(s.pages_used <= s.pages_total, "{s:?}");
    }
    settled(&engine);
}

#[test]
fn prompt_logprobs_equal_the_log_softmax_of_one_full_pass() {
    let (case, model) = model();
    // 40 tokens: three prefill chunks of 16 (the last partial), pages of 8.
    let prompt: Vec<u32> = prompts(&case.ids("input_ids"), 8).concat()[..40].to_vec();
    let logits = linear::host::vec2::<f32>(&model.logits(&prompt).unwrap()).unwrap();
    let engine = Engine::start(model.clone(), None, small_pages()).unwrap();
    // Cache the prompt's prefix first: a scoring request must not reuse it.
    engine.generate(greedy(prompt.clone(), 2)).unwrap();
    let scored = |max_tokens, n| {
        let params = RequestParams {
            max_tokens,
            n,
            prompt_logprobs: Some(3),
            logprobs: Some(1),
            ..RequestParams::default()
        };
        engine.generate(Request {
            prompt: prompt.clone(),
            params,
        })
    };
    let out = scored(2, 2).unwrap();
    assert_eq!(out.len(), 2);
    let scores = &out[0].prompt_logprobs;
    assert_eq!(scores.len(), prompt.len() - 1);
    assert_eq!(out[1].prompt_logprobs, *scores);
    for (i, s) in scores.iter().enumerate() {
        let row = &logits[i];
        let want = log_softmax_at(row, prompt[i + 1]);
        assert!(
            (s.logprob as f64 - want).abs() < 1e-4,
            "position {}: {} against {want}",
            i + 1,
            s.logprob
        );
        assert_eq!(s.top.len(), 3);
        // The rank: 1 + the tokens more likely (up to rounding near ties).
        let own = row[prompt[i + 1] as usize];
        let above = |margin: f32| row.iter().filter(|&&l| l > own + margin).count();
        assert!(
            (1 + above(1e-4)..=1 + above(-1e-4)).contains(&s.rank),
            "position {}: rank {}",
            i + 1,
            s.rank
        );
        let best = argmax(row);
        assert_eq!(s.top[0].0, best, "position {}", i + 1);
        assert!((s.top[0].1 as f64 - log_softmax_at(row, best)).abs() < 1e-4);
    }
    // The samples continue as a request without scoring does.
    assert_eq!(
        out[0].tokens,
        engine.generate(greedy(prompt.clone(), 2)).unwrap()[0].tokens
    );

    // `max_tokens` 0: the scores and nothing generated, every sample finished.
    let only = scored(0, 3).unwrap();
    for c in &only {
        assert_eq!(
            (c.tokens.len(), c.finish),
            (0, Some(FinishReason::MaxTokens))
        );
        assert_eq!(c.prompt_logprobs, *scores);
    }
    // Without scoring, `max_tokens` 0 is refused.
    let refused = engine.submit(greedy(prompt.clone(), 0), Box::new(|_| true));
    assert!(
        matches!(refused, Err(SubmitError::Invalid { message: m, .. }) if m.contains("max_tokens"))
    );
    // A one-token prompt has nothing to score.
    let one = engine
        .generate(Request {
            prompt: prompt[..1].to_vec(),
            params: RequestParams {
                max_tokens: 0,
                prompt_logprobs: Some(0),
                ..RequestParams::default()
            },
        })
        .unwrap();
    assert!(one[0].prompt_logprobs.is_empty());
    settled(&engine);
}

/// The choices of a multiple-choice question scored one after another, then together: the
/// first prefills the shared context, the others adopt its pages with their scores, and each
/// equals its run alone on a fresh engine.
#[test]
fn scoring_requests_reuse_a_scored_prefix_and_equal_their_runs_alone() {
    let (case, model) = model();
    let base = prompts(&case.ids("input_ids"), 8).concat();
    let context = &base[..36];
    let choice = |i: usize, len: usize| [context, &base[40 + 5 * i..40 + 5 * i + len]].concat();
    let scoring = |prompt: Vec<u32>, top: usize| Request {
        prompt,
        params: RequestParams {
            max_tokens: 0,
            prompt_logprobs: Some(top),
            ..RequestParams::default()
        },
    };
    let alone = |r: &Request| {
        let fresh = Engine::start(model.clone(), None, small_pages()).unwrap();
        fresh.generate(r.clone()).unwrap()
    };
    // What a request got, and how much of its prompt came from the cache.
    let run = |engine: &Engine, r: &Request| {
        let mut got = engine.generate(r.clone()).unwrap();
        let cached = got[0].cached_tokens;
        got[0].cached_tokens = 0;
        assert_eq!(got, alone(r), "{} tokens", r.prompt.len());
        cached
    };
    let engine = Engine::start(model.clone(), None, small_pages()).unwrap();
    // A prefix cached without scores serves no scoring request.
    engine.generate(greedy(choice(0, 2), 1)).unwrap();
    assert_eq!(run(&engine, &scoring(choice(0, 2), 2)), 0);
    // Chunks of 16, pages of 8: the first two chunks' 4 pages now hold their scores, the
    // last of them that of token 32, which every choice shares.
    assert_eq!(run(&engine, &scoring(choice(1, 3), 2)), 32);
    assert_eq!(run(&engine, &scoring(choice(2, 1), 1)), 32);
    // More alternatives than kept: nothing reused, and then those are kept.
    assert_eq!(run(&engine, &scoring(choice(3, 2), 3)), 0);
    assert_eq!(run(&engine, &scoring(choice(4, 2), 3)), 32);
    // A prompt leaving the context at token 32: page 4's last score is not its own, so only
    // the first chunk (two pages) is reused.
    let mut other = context[..33].to_vec();
    other[32] = (other[32] + 1) % 256;
    assert_eq!(run(&engine, &scoring(other, 2),), 16);
    let s = settled(&engine);
    assert_eq!(s.prompt_tokens_reused, 32 * 3 + 16);

    // Four choices at once: one prefills the context, the others wait and adopt it.
    let engine = Engine::start(model.clone(), None, small_pages()).unwrap();
    let requests: Vec<Request> = (0..4).map(|i| scoring(choice(i, 2 + i % 2), 1)).collect();
    let out = run_together(&engine, &requests);
    let mut cached: Vec<usize> = out.iter().map(|c| c[0].cached_tokens).collect();
    cached.sort();
    assert_eq!(cached, [0, 32, 32, 32]);
    for (mut got, r) in out.into_iter().zip(&requests) {
        got[0].cached_tokens = 0;
        assert_eq!(got, alone(r));
    }
    settled(&engine);
}

/// Index of the first largest value.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
