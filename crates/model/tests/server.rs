//! The OpenAI-compatible server (`model::server`) in-process on 127.0.0.1:0 over the
//! `v3_noaux` fixture checkpoint and the tiny byte-level tokenizer, driven by an HTTP client
//! and by the eval harness's own OpenAI client: whole and streamed chat and completions,
//! `n`, stops, logprobs, token-id prompts, the R1 reasoning split, every error class,
//! authentication, back-pressure, disconnects, graceful shutdown, and a bounded load test
//! whose greedy outputs must equal each request's output alone.
#![cfg(feature = "server")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use fixtures::log_softmax_at;
use model::engine::EngineStats;
use model::server::{self, ServerConfig, ServerError};
use model::{DeepSeek, Engine, EngineConfig, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NAME: &str = "tiny";

fn fixture(name: &str) -> PathBuf {
    fixtures::fixtures_dir().join(name)
}

fn tiny_tokenizer() -> PathBuf {
    fixture("tiny_tokenizer")
}

/// Small pages and chunks so that the fixture's short prompts span several of each.
fn engine_config() -> EngineConfig {
    EngineConfig {
        max_running: 64,
        cache_tokens: 64 * 1024,
        page_tokens: 16,
        prefill_chunk: 32,
        max_waiting: 512,
        batch_invariant: true,
    }
}

fn engine(tokenizer: Option<&Path>, config: EngineConfig) -> Engine {
    let model = DeepSeek::load(&fixture("v3_noaux"), DType::F32, &Device::Cpu).unwrap();
    let tokenizer = tokenizer.map(|d| Arc::new(Tokenizer::from_dir(d).unwrap()));
    Engine::start(Arc::new(model), tokenizer, config).unwrap()
}

/// A response: status, headers, body (JSON, or the text as a JSON string).
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// A server running in this process.
struct Server {
    base: String,
    engine: Engine,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    async fn start(engine: Engine, config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, engine.clone(), config, async {
            let _ = stopped.await;
        }));
        Self {
            base,
            engine,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    async fn with_tokenizer() -> Self {
        Self::start(
            engine(Some(&tiny_tokenizer()), engine_config()),
            ServerConfig::new(NAME),
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Posts `body` and returns the response as it starts, its body left to the caller
    /// (streams read slowly, cut off, or held open).
    async fn open(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// A successful GET.
    async fn ok_get(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.body
    }

    /// A successful whole response.
    async fn ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body).await;
        assert_eq!(r.status, 200, "{path} {body}: {}", r.body);
        r.body
    }

    /// A stream's data events (JSON), checking it ends with `data: [DONE]`.
    async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let resp = self.open(path, body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        parse_sse(&resp.text().await.unwrap())
    }

    /// Waits until the engine holds nothing: no request waiting or running, no page reserved
    /// or used except by the prefix cache.
    async fn idle(&self) -> EngineStats {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.engine.stats();
            if s.running == 0
                && s.waiting == 0
                && s.pages_reserved == 0
                && s.pages_used == s.prefix_cache_pages
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the engine never went idle: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `f(stats)` holds.
    async fn until(&self, what: &str, f: impl Fn(&EngineStats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&self.engine.stats()) {
            assert!(
                Instant::now() < deadline,
                "never: {what}: {:?}",
                self.engine.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Triggers shutdown and waits for `serve` to return.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        assert!(self.engine.is_closing());
    }
}

fn parse_sse(text: &str) -> Vec<Value> {
    let frames: Vec<&str> = text
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {f:?}"))
        })
        .collect();
    assert_eq!(
        frames.last(),
        Some(&"[DONE]"),
        "stream must end with [DONE]: {text}"
    );
    frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}

/// Asserts OpenAI's error shape and status; returns the error object.
fn assert_error(r: &Reply, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let obj = r.body.as_object().expect("JSON object body");
    assert_eq!(obj.len(), 1, "only `error`: {}", r.body);
    let e = &r.body["error"];
    assert!(!e["message"].as_str().unwrap().is_empty());
    assert!(e["type"].is_string());
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{e}");
    e.clone()
}

fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({"model": NAME, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0})
}

/// Concatenates streamed chat deltas per choice: (reasoning, content, finish_reason).
fn chat_deltas(chunks: &[Value], n: usize) -> Vec<(String, String, String)> {
    let mut out = vec![(String::new(), String::new(), String::new()); n];
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        for ch in c["choices"].as_array().unwrap() {
            let o = &mut out[ch["index"].as_u64().unwrap() as usize];
            o.0 += ch["delta"]["reasoning_content"].as_str().unwrap_or("");
            o.1 += ch["delta"]["content"].as_str().unwrap_or("");
            if let Some(f) = ch["finish_reason"].as_str() {
                assert!(o.2.is_empty(), "one finish_reason per choice");
                o.2 = f.to_string();
            }
        }
    }
    out
}

/// Concatenates streamed completion text per choice: (text, finish_reason, token ids).
fn completion_deltas(chunks: &[Value], n: usize) -> Vec<(String, String, Vec<u64>)> {
    let mut out = vec![(String::new(), String::new(), vec![]); n];
    for c in chunks {
        assert_eq!(c["object"], "text_completion");
        for ch in c["choices"].as_array().unwrap() {
            let o = &mut out[ch["index"].as_u64().unwrap() as usize];
            o.0 += ch["text"].as_str().unwrap();
            if let Some(f) = ch["finish_reason"].as_str() {
                o.1 = f.to_string();
            }
            if let Some(ids) = ch["token_ids"].as_array() {
                o.2.extend(ids.iter().map(|t| t.as_u64().unwrap()));
            }
        }
    }
    out
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("token ids: {v}"))
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_whole_and_streamed_agree_with_usage_and_finish_reasons() {
    let s = Server::with_tokenizer().await;
    let models = s.get("/v1/models").await;
    assert_eq!(models.body["data"][0]["id"], NAME);
    assert_eq!(s.get(&format!("/v1/models/{NAME}")).await.status, 200);
    assert_eq!(s.get("/health").await.status, 200);

    let body = chat_body("Hello there", 12);
    let whole = s.ok("/v1/chat/completions", &body).await;
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], NAME);
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(whole["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &whole["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(
        choice["message"].get("reasoning_content").is_none(),
        "no split without R1"
    );
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    let usage = &whole["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    // `<BOS><User>Hello there<Assistant>`: one id per byte plus three specials.
    assert_eq!(usage["prompt_tokens"], 3 + "Hello there".len());
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    let finish = choice["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if completion == 12 { "length" } else { "stop" });

    // Streamed: a role chunk, deltas that add up to the same text, usage last.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/chat/completions", &sbody).await;
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let ids_seen: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(
        ids_seen.iter().all(|i| *i == ids_seen[0]),
        "one id per stream"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], *usage);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    let d = chat_deltas(&chunks, 1);
    assert_eq!((d[0].1.as_str(), d[0].2.as_str()), (text.as_str(), finish));
    // Without include_usage there is no usage at all.
    sbody["stream_options"] = json!({"include_usage": false});
    let chunks = s.stream("/v1/chat/completions", &sbody).await;
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(chat_deltas(&chunks, 1)[0].1, text);

    // max_completion_tokens wins over max_tokens; logprobs with alternatives.
    let mut lbody = body.clone();
    lbody["max_completion_tokens"] = json!(3);
    lbody["logprobs"] = json!(true);
    lbody["top_logprobs"] = json!(2);
    let r = s.ok("/v1/chat/completions", &lbody).await;
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(content.len() <= 3);
    for entry in content {
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        assert!(entry["bytes"].is_array());
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["logprob"], entry["logprob"]);
    }
    s.idle().await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_text_and_token_prompts_n_and_logprobs() {
    let s = Server::with_tokenizer().await;
    let body = json!({"model": NAME, "prompt": "The answer is", "max_tokens": 10,
                      "temperature": 0, "return_token_ids": true});
    let whole = s.ok("/v1/completions", &body).await;
    assert_eq!(whole["object"], "text_completion");
    assert!(whole["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &whole["choices"][0];
    let text = choice["text"].as_str().unwrap().to_string();
    let tokens = ids(&choice["token_ids"]);
    assert_eq!(whole["usage"]["completion_tokens"], tokens.len());
    // BOS + one id per byte.
    assert_eq!(whole["usage"]["prompt_tokens"], 1 + "The answer is".len());

    // The same prompt as token ids, and as one-element batches, gives the same output.
    let tok = Tokenizer::from_dir(&tiny_tokenizer()).unwrap();
    let prompt_ids = tok.encode("The answer is").unwrap();
    for prompt in [
        json!(prompt_ids),
        json!([prompt_ids]),
        json!(["The answer is"]),
    ] {
        let mut b = body.clone();
        b["prompt"] = prompt;
        let r = s.ok("/v1/completions", &b).await;
        assert_eq!(r["choices"][0]["text"], text.as_str());
        assert_eq!(ids(&r["choices"][0]["token_ids"]), tokens);
    }

    // Streamed: text, ids and finish reason add up to the whole response.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let d = completion_deltas(&s.stream("/v1/completions", &sbody).await, 1);
    assert_eq!(
        d[0],
        (
            text.clone(),
            choice["finish_reason"].as_str().unwrap().into(),
            tokens.clone()
        )
    );

    // n samples, seeded: reproducible, one index each, usage sums them.
    let nbody = json!({"prompt": [5, 17, 42], "max_tokens": 8, "temperature": 1.0, "seed": 3,
                       "n": 3, "ignore_eos": true, "return_token_ids": true});
    let a = s.ok("/v1/completions", &nbody).await;
    let b = s.ok("/v1/completions", &nbody).await;
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(ids(&c["token_ids"]), ids(&b["choices"][i]["token_ids"]));
    }
    assert_eq!(a["usage"]["completion_tokens"], 24);
    assert_ne!(
        ids(&choices[0]["token_ids"]),
        ids(&choices[1]["token_ids"]),
        "seed + i per sample"
    );
    // Penalties and logit_bias reach the sampler: a bias of 100 forces its token, and the
    // penalties change the greedy continuation (`engine.rs` checks them against generate).
    let mut biased = nbody.clone();
    biased["logit_bias"] = json!({"7": 100});
    let r = s.ok("/v1/completions", &biased).await;
    for c in r["choices"].as_array().unwrap() {
        assert_eq!(ids(&c["token_ids"]), [7; 8]);
    }
    let greedy = json!({"prompt": [5, 17, 42], "max_tokens": 40, "temperature": 0,
                        "ignore_eos": true, "return_token_ids": true});
    let mut penalised = greedy.clone();
    penalised["repetition_penalty"] = json!(1.8);
    penalised["frequency_penalty"] = json!(1.5);
    penalised["presence_penalty"] = json!(1.0);
    let (plain, penalised) = (
        ids(&s.ok("/v1/completions", &greedy).await["choices"][0]["token_ids"]),
        ids(&s.ok("/v1/completions", &penalised).await["choices"][0]["token_ids"]),
    );
    let distinct = |t: &[u64]| t.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(
        distinct(&plain) < 40,
        "no repeat for the penalties to act on"
    );
    assert_ne!(plain, penalised);
    // Streamed n: every choice finishes, and the samples are the whole response's.
    let mut snbody = nbody.clone();
    snbody["stream"] = json!(true);
    let d = completion_deltas(&s.stream("/v1/completions", &snbody).await, 3);
    for (i, (_, finish, tokens)) in d.iter().enumerate() {
        assert_eq!(finish, "length");
        assert_eq!(*tokens, ids(&choices[i]["token_ids"]));
    }
    // Chat n>1 streamed.
    let mut cbody = chat_body("Hi", 6);
    cbody["n"] = json!(2);
    cbody["stream"] = json!(true);
    let d = chat_deltas(&s.stream("/v1/chat/completions", &cbody).await, 2);
    assert_eq!(d[0].1, d[1].1, "greedy samples agree");
    assert!(!d[1].2.is_empty());

    // A batch of prompts: prompt p's samples are choices p·n.., each as that prompt alone,
    // whole and streamed; usage sums the batch.
    let batch = json!({"prompt": ["The answer is", "Once"], "max_tokens": 5, "n": 2,
                       "temperature": 0, "return_token_ids": true});
    let b = s.ok("/v1/completions", &batch).await;
    let choices = b["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    let mut usage = (0, 0);
    let mut want = vec![];
    for (p, prompt) in ["The answer is", "Once"].into_iter().enumerate() {
        let mut one = batch.clone();
        one["prompt"] = json!(prompt);
        let r = s.ok("/v1/completions", &one).await;
        usage.0 += r["usage"]["prompt_tokens"].as_u64().unwrap();
        usage.1 += r["usage"]["completion_tokens"].as_u64().unwrap();
        for i in 0..2 {
            let c = &choices[p * 2 + i];
            assert_eq!(c["index"], p * 2 + i);
            assert_eq!(c["text"], r["choices"][i]["text"], "prompt {p} sample {i}");
            want.push((
                c["text"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
                ids(&c["token_ids"]),
            ));
        }
    }
    assert_eq!(b["usage"]["prompt_tokens"], usage.0);
    assert_eq!(b["usage"]["completion_tokens"], usage.1);
    let mut sbatch = batch.clone();
    sbatch["stream"] = json!(true);
    sbatch["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/completions", &sbatch).await;
    assert_eq!(completion_deltas(&chunks, 4), want);
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        usage.1
    );

    // Legacy logprobs: parallel arrays, one entry per token.
    let r = s
        .ok("/v1/completions", &json!({"prompt": [5, 17, 42], "max_tokens": 4, "temperature": 0, "logprobs": 3, "ignore_eos": true}))
        .await;
    let lp = &r["choices"][0]["logprobs"];
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().unwrap().len(), 4, "{key}");
    }
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 3);
    s.idle().await;
    s.shut_down().await;
}

/// `echo` with `logprobs`, as lm-evaluation-harness's `local-completions` model sends it to
/// score a continuation: the prompt comes back with a log-probability per token after the
/// first (`null` first), whole and streamed, with `max_tokens` 1 and 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_logprobs_scores_the_prompt_as_lm_eval_asks() {
    let s = Server::with_tokenizer().await;
    let tok = Tokenizer::from_dir(&tiny_tokenizer()).unwrap();
    let (context, continuation) = ("Question: 2 + 2 =", " 4");
    let ctx = tok.encode(context).unwrap();
    let prompt: Vec<u32> = [ctx.clone(), tok.encode_plain(continuation).unwrap()].concat();
    // The reference: one causal pass over the prompt, log-softmax per row.
    let model = DeepSeek::load(&fixture("v3_noaux"), DType::F32, &Device::Cpu).unwrap();
    let logits = linear::host::vec2::<f32>(&model.logits(&prompt).unwrap()).unwrap();

    // lm-eval's loglikelihood payload (token ids, max_tokens 1, logprobs 1, echo).
    let body = json!({"model": NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                      "logprobs": 1, "seed": 1234, "echo": true});
    let r = s.ok("/v1/completions", &body).await;
    let choice = &r["choices"][0];
    let lp = &choice["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    let top = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(
        token_logprobs.len(),
        prompt.len() + 1,
        "the prompt and one token"
    );
    assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt.len() + 1);
    assert!(token_logprobs[0].is_null() && top[0].is_null());
    for i in 1..prompt.len() {
        let want = log_softmax_at(&logits[i - 1], prompt[i]);
        let got = token_logprobs[i].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "token {i}: {got} against {want}");
        let best = top[i].as_object().unwrap();
        assert_eq!(best.len(), 1);
    }
    // The text is the prompt's, then the generated token's; offsets follow the tokens.
    let text = choice["text"].as_str().unwrap();
    assert!(text.starts_with(&tok.decode(&prompt).unwrap()), "{text}");
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0].as_u64() <= w[1].as_u64()));
    assert_eq!(r["usage"]["completion_tokens"], 1);
    assert_eq!(r["usage"]["prompt_tokens"], prompt.len());
    // What lm-eval computes: the continuation's log-likelihood and whether it is greedy.
    let (ll, greedy) = (ctx.len()..prompt.len()).fold((0.0, true), |(ll, greedy), i| {
        let l = token_logprobs[i].as_f64().unwrap();
        let best = top[i]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap());
        (
            ll + l,
            greedy && l >= best.fold(f64::NEG_INFINITY, f64::max),
        )
    });
    let want: f64 = (ctx.len()..prompt.len())
        .map(|i| log_softmax_at(&logits[i - 1], prompt[i]))
        .sum();
    assert!((ll - want).abs() < 1e-3, "{ll} against {want}");
    let argmax_greedy = (ctx.len()..prompt.len()).all(|i| {
        let row = &logits[i - 1];
        row.iter().all(|&l| l <= row[prompt[i] as usize])
    });
    assert_eq!(greedy, argmax_greedy);

    // The generated token and its score are those of the same request without echo.
    let mut plain = body.clone();
    plain["echo"] = json!(false);
    let p = s.ok("/v1/completions", &plain).await;
    assert_eq!(
        token_logprobs[prompt.len()],
        p["choices"][0]["logprobs"]["token_logprobs"][0]
    );

    // max_tokens 0: the prompt alone (text prompt, three alternatives), nothing generated.
    let zero = json!({"prompt": context, "max_tokens": 0, "logprobs": 3, "echo": true, "n": 2});
    let z = s.ok("/v1/completions", &zero).await;
    for c in z["choices"].as_array().unwrap() {
        assert_eq!(c["text"], context);
        assert_eq!(c["finish_reason"], "length");
        let scores = c["logprobs"]["token_logprobs"].as_array().unwrap();
        assert_eq!(scores.len(), ctx.len());
        for i in 1..ctx.len() {
            let want = log_softmax_at(&logits[i - 1], ctx[i]);
            assert!((scores[i].as_f64().unwrap() - want).abs() < 1e-4);
            // Keyed by token text: alternatives whose texts coincide (bytes that are not
            // whole characters all read U+FFFD) share an entry, as in OpenAI's and vLLM's.
            let alternatives = c["logprobs"]["top_logprobs"][i].as_object().unwrap().len();
            assert!((1..=3).contains(&alternatives));
        }
    }
    assert_eq!(z["usage"]["completion_tokens"], 0);
    // Echo without logprobs: the prompt's text, no scores asked for.
    let e = s
        .ok(
            "/v1/completions",
            &json!({"prompt": context, "max_tokens": 3, "temperature": 0, "echo": true}),
        )
        .await;
    assert!(e["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(context));
    assert!(e["choices"][0]["logprobs"].is_null());

    // Streamed: the echo comes first, and text and logprobs add up to the whole response.
    for body in [
        body.clone(),
        zero.clone(),
        json!({"prompt": context, "max_tokens": 3, "temperature": 0, "echo": true}),
    ] {
        let whole = s.ok("/v1/completions", &body).await;
        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        let chunks = s.stream("/v1/completions", &sbody).await;
        let n = whole["choices"].as_array().unwrap().len();
        let d = completion_deltas(&chunks, n);
        for (i, c) in whole["choices"].as_array().unwrap().iter().enumerate() {
            assert_eq!(d[i].0, c["text"].as_str().unwrap(), "{body}");
            let mut streamed: Vec<Value> = vec![];
            for chunk in &chunks {
                for ch in chunk["choices"].as_array().unwrap() {
                    if ch["index"] == i {
                        if let Some(l) = ch["logprobs"]["token_logprobs"].as_array() {
                            streamed.extend(l.iter().cloned());
                        }
                    }
                }
            }
            let want = c["logprobs"]["token_logprobs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(streamed, want, "{body}");
        }
    }
    s.idle().await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_stop_tokens_min_tokens_and_ignore_eos() {
    let s = Server::with_tokenizer().await;
    let base = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                      "ignore_eos": true, "return_token_ids": true});
    let free = s.ok("/v1/completions", &base).await;
    let text = free["choices"][0]["text"].as_str().unwrap().to_string();
    let tokens = ids(&free["choices"][0]["token_ids"]);
    assert_eq!(tokens.len(), 24);

    // A stop string taken from the text itself (a character after the first).
    let (at, ch) = text
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c != '\u{FFFD}')
        .expect("a real character in the output");
    let stop = ch.to_string();
    let cut = text.find(&stop).unwrap();
    assert!(cut <= at);
    for stop in [json!(stop), json!(["\u{1}never", stop])] {
        let mut b = base.clone();
        b["stop"] = stop;
        let r = s.ok("/v1/completions", &b).await;
        assert_eq!(r["choices"][0]["text"], &text[..cut]);
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        // And streamed.
        b["stream"] = json!(true);
        let d = completion_deltas(&s.stream("/v1/completions", &b).await, 1);
        assert_eq!((d[0].0.as_str(), d[0].1.as_str()), (&text[..cut], "stop"));
    }

    // A stop token (vLLM's stop_token_ids) ends the sample without emitting it...
    let stop_id = tokens[5];
    let first = tokens.iter().position(|&t| t == stop_id).unwrap();
    let mut b = base.clone();
    b["ignore_eos"] = json!(false);
    b["stop_token_ids"] = json!([stop_id]);
    let r = s.ok("/v1/completions", &b).await;
    assert_eq!(ids(&r["choices"][0]["token_ids"]), tokens[..first]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    // ...unless min_tokens asks for more first (it is masked until then).
    b["min_tokens"] = json!(first + 1);
    let r = s.ok("/v1/completions", &b).await;
    assert!(ids(&r["choices"][0]["token_ids"]).len() > first);
    s.idle().await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_id_prompts_without_a_tokenizer() {
    // A cache of 8 pages of 16 tokens.
    let config = EngineConfig {
        cache_tokens: 128,
        ..engine_config()
    };
    let s = Server::start(engine(None, config), ServerConfig::new(NAME)).await;
    let r = s
        .ok(
            "/v1/completions",
            &json!({"prompt": [5, 17, 42], "max_tokens": 6, "temperature": 0, "ignore_eos": true}),
        )
        .await;
    let c = &r["choices"][0];
    assert_eq!(c["text"], "");
    assert_eq!(
        ids(&c["token_ids"]).len(),
        6,
        "ids are the output without a tokenizer"
    );
    let d = completion_deltas(
        &s.stream("/v1/completions", &json!({"prompt": [5, 17, 42], "max_tokens": 6, "temperature": 0, "ignore_eos": true, "stream": true}))
            .await,
        1,
    );
    assert_eq!(d[0].2, ids(&c["token_ids"]));
    // Without max_tokens: the default (4096) cut to what the cache holds for each sample,
    // 8 pages for one, 4 each for two (the 3-token prompt fills no page to share).
    for (n, each) in [(1, 128 - 3), (2, 64 - 3)] {
        let body = json!({"prompt": [5, 17, 42], "n": n, "ignore_eos": true});
        let r = s.ok("/v1/completions", &body).await;
        assert_eq!(r["usage"]["completion_tokens"], n * each);
        assert_eq!(r["choices"][n - 1]["finish_reason"], "length");
    }
    for (path, body, param) in [
        ("/v1/chat/completions", chat_body("hi", 4), "messages"),
        ("/v1/completions", json!({"prompt": "text"}), "prompt"),
    ] {
        let e = assert_error(&s.post(path, &body).await, 400);
        assert_eq!(e["param"], param);
    }
    let stop = s
        .post("/v1/completions", &json!({"prompt": [5], "stop": "x"}))
        .await;
    assert_error(&stop, 400);
    s.idle().await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_an_openai_error_and_changes_nothing() {
    let config = ServerConfig {
        max_body_bytes: 2 << 20,
        ..ServerConfig::new(NAME)
    };
    let s = Server::start(engine(Some(&tiny_tokenizer()), engine_config()), config).await;
    let chat = "/v1/chat/completions";
    let cmpl = "/v1/completions";
    let msgs = json!([{"role": "user", "content": "hi"}]);
    // A prompt longer than the model's context (163840 tokens), as ids.
    let too_long: Vec<u32> = vec![5; 163_841];
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (cmpl, json!([1, 2]), 400, None),
        (cmpl, json!({"max_tokens": 3}), 400, None),
        (cmpl, json!({"prompt": {"a": 1}}), 400, Some("prompt")),
        (cmpl, json!({"prompt": [-1]}), 400, Some("prompt")),
        (cmpl, json!({"prompt": [999]}), 400, Some("prompt")),
        (cmpl, json!({"prompt": []}), 400, Some("prompt")),
        (cmpl, json!({"prompt": vec!["a"; 257]}), 400, Some("prompt")),
        (cmpl, json!({"prompt": vec![5; 400_000], "echo": true, "logprobs": 20, "max_tokens": 0}), 400, Some("logprobs")),
        (cmpl, json!({"prompt": vec![5; 70_000], "echo": true, "logprobs": 1, "n": 64, "max_tokens": 0}), 400, Some("logprobs")),
        (cmpl, json!({"prompt": [[5, 6], [999]]}), 400, Some("prompt")),
        (cmpl, json!({"prompt": [[5, 6], []]}), 400, Some("prompt")),
        (cmpl, json!({"prompt": ["a", 5]}), 400, Some("prompt")),
        (cmpl, json!({"prompt": "x", "temperature": "hot"}), 400, Some("temperature")),
        (cmpl, json!({"prompt": "x", "max_tokens": -1}), 400, Some("max_tokens")),
        (cmpl, json!({"prompt": "x", "max_tokens": 1.5}), 400, Some("max_tokens")),
        (cmpl, json!({"prompt": "x", "max_tokens": 0}), 400, Some("max_tokens")),
        (cmpl, json!({"prompt": "x", "max_tokens": 200_000}), 400, Some("max_tokens")),
        (cmpl, json!({"prompt": "x", "max_tokens": u64::MAX}), 400, Some("max_tokens")),
        (cmpl, json!({"prompt": "x", "max_tokens": 5, "min_tokens": u64::MAX}), 400, Some("min_tokens")),
        (cmpl, json!({"prompt": too_long, "max_tokens": 1}), 400, Some("max_tokens")),
        (cmpl, json!({"prompt": "x", "temperature": -1}), 400, Some("temperature")),
        (cmpl, json!({"prompt": "x", "top_p": 0}), 400, Some("top_p")),
        (cmpl, json!({"prompt": "x", "top_k": -5}), 400, Some("top_k")),
        (cmpl, json!({"prompt": "x", "n": 0}), 400, Some("n")),
        (cmpl, json!({"prompt": "x", "n": 65}), 400, Some("n")),
        (cmpl, json!({"prompt": "x", "min_tokens": 9, "max_tokens": 3}), 400, Some("min_tokens")),
        (cmpl, json!({"prompt": "x", "logprobs": 21}), 400, Some("logprobs")),
        (cmpl, json!({"prompt": "x", "stop": 3}), 400, Some("stop")),
        (cmpl, json!({"prompt": "x", "stop": ["a", ""]}), 400, Some("stop")),
        (chat, json!({"messages": msgs, "stop": ""}), 400, Some("stop")),
        (cmpl, json!({"prompt": "x", "stream": "yes"}), 400, Some("stream")),
        (cmpl, json!({"prompt": "x", "presence_penalty": 2.5}), 400, Some("presence_penalty")),
        (cmpl, json!({"prompt": "x", "frequency_penalty": -3}), 400, Some("frequency_penalty")),
        (cmpl, json!({"prompt": "x", "repetition_penalty": 0}), 400, Some("repetition_penalty")),
        (cmpl, json!({"prompt": "x", "logit_bias": {"5": 101}}), 400, Some("logit_bias")),
        (cmpl, json!({"prompt": "x", "logit_bias": {"999": 1}}), 400, Some("logit_bias")),
        (cmpl, json!({"prompt": "x", "logit_bias": {"five": 1}}), 400, Some("logit_bias")),
        (cmpl, json!({"prompt": "x", "logit_bias": {"5": "1"}}), 400, Some("logit_bias")),
        (cmpl, json!({"prompt": "x", "logit_bias": [5]}), 400, Some("logit_bias")),
        (cmpl, json!({"prompt": "x", "best_of": 3}), 400, Some("best_of")),
        (cmpl, json!({"prompt": "x", "model": "gpt-4"}), 404, Some("model")),
        (chat, json!({"messages": "hi"}), 400, Some("messages")),
        (chat, json!({"messages": []}), 400, Some("messages")),
        (chat, json!({"messages": [{"content": "hi"}]}), 400, Some("messages[0]")),
        (chat, json!({"messages": [{"role": "user", "content": null}]}), 400, Some("messages[0].content")),
        (chat, json!({"messages": [{"role": "user"}]}), 400, Some("messages[0].content")),
        (chat, json!({"messages": [{"role": "function", "content": "x"}]}), 400, Some("messages[0].role")),
        (chat, json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400, Some("messages[0].content[0]")),
        (chat, json!({"messages": msgs, "top_logprobs": 2}), 400, Some("top_logprobs")),
        (chat, json!({"messages": msgs, "logprobs": true, "top_logprobs": 50}), 400, Some("top_logprobs")),
        (chat, json!({"messages": msgs, "tools": [{"type": "function"}]}), 400, Some("tools[0]")),
        (chat, json!({"messages": msgs, "response_format": {"type": "xml"}}), 400, Some("response_format.type")),
        (chat, json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}), 400, Some("response_format.json_schema.schema")),
        (chat, json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}), 400, Some("response_format")),
        (cmpl, json!({"prompt": "x", "guided_regex": "(unclosed"}), 400, Some("guided_regex")),
        (cmpl, json!({"prompt": "x", "guided_choice": []}), 400, Some("guided_choice")),
        (cmpl, json!({"prompt": "x", "guided_grammar": "start: undefined_rule"}), 400, Some("guided_grammar")),
        (cmpl, json!({"prompt": "x", "guided_json": {"type": "object"}, "guided_choice": ["a"]}), 400, Some("guided_choice")),
        (chat, json!({"messages": msgs, "model": "other"}), 404, Some("model")),
        (chat, json!({"messages": msgs, "n": 65}), 400, Some("n")),
        (chat, json!({"messages": msgs, "max_tokens": 200_000}), 400, Some("max_tokens")),
    ];
    for (path, body, status, param) in &cases {
        let e = assert_error(&s.post(path, body).await, *status);
        if let Some(p) = param {
            assert_eq!(e["param"], *p, "{body}");
        }
    }
    // Not JSON at all, cut off, or empty.
    for raw in ["{\"prompt\": ", "not json", ""] {
        let r = s.send(s.client.post(s.url(cmpl)).body(raw)).await;
        assert_error(&r, 400);
    }
    // Over the body limit: the 413 arrives whole (the server reads the body to its end before
    // answering), and the connection stays usable for the requests below.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(3 << 20));
    let e = assert_error(&s.send(s.client.post(s.url(cmpl)).body(big)).await, 413);
    assert_eq!(e["code"], "request_too_large");
    // Unknown paths and methods.
    assert_error(&s.get("/v1/nothing").await, 404);
    assert_error(&s.send(s.client.delete(s.url(chat))).await, 405);
    assert_error(&s.get(chat).await, 405);

    let stats = s.idle().await;
    assert_eq!(
        (
            stats.prompt_tokens,
            stats.requests_finished,
            stats.requests_aborted,
            stats.steps
        ),
        (0, 0, 0, 0),
        "refused requests never reach the engine"
    );
    // Still serving.
    s.ok(chat, &chat_body("hi", 2)).await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_the_api_but_not_health() {
    let config = ServerConfig {
        api_key: Some("sekret".into()),
        ..ServerConfig::new(NAME)
    };
    let s = Server::start(engine(Some(&tiny_tokenizer()), engine_config()), config).await;
    let body = chat_body("hi", 2);
    let post = |auth: Option<&str>| {
        let mut r = s.client.post(s.url("/v1/chat/completions")).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        s.send(r)
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sekret"),
        Some("Basic sekret"),
    ] {
        let e = assert_error(&post(auth).await, 401);
        assert_eq!(e["code"], "invalid_api_key");
    }
    assert_error(&s.get("/v1/models").await, 401);
    assert_error(&s.post("/tokenize", &json!({"prompt": "hi"})).await, 401);
    assert_eq!(post(Some("Bearer sekret")).await.status, 200);
    assert_eq!(s.get("/health").await.status, 200);
    assert_eq!(s.get("/metrics").await.status, 200);
    s.shut_down().await;
}

/// Browsers can call the API (CORS): preflights are answered before the API key is asked
/// for, responses name the allowed origin; a list admits only its origins, and none turns
/// CORS off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_browsers_call_the_api() {
    let allow = "access-control-allow-origin";
    for (origins, origin, allowed) in [
        (vec!["*"], "http://ui.example", Some("*")),
        (
            vec!["http://ui.example", "http://b.example"],
            "http://ui.example",
            Some("http://ui.example"),
        ),
        (vec!["http://ui.example"], "http://evil.example", None),
        (vec![], "http://ui.example", None),
    ] {
        let config = ServerConfig {
            api_key: Some("sekret".into()),
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..ServerConfig::new(NAME)
        };
        let s = Server::start(engine(Some(&tiny_tokenizer()), engine_config()), config).await;
        let preflight = s
            .send(
                s.client
                    .request(reqwest::Method::OPTIONS, s.url("/v1/chat/completions"))
                    .header("origin", origin)
                    .header("access-control-request-method", "POST")
                    .header(
                        "access-control-request-headers",
                        "authorization,content-type",
                    ),
            )
            .await;
        let posted = s
            .send(
                s.client
                    .post(s.url("/v1/chat/completions"))
                    .header("origin", origin)
                    .header("authorization", "Bearer sekret")
                    .json(&chat_body("hi", 2)),
            )
            .await;
        assert_eq!(posted.status, 200, "{origins:?}");
        let header = |r: &Reply| {
            r.headers
                .get(allow)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(header(&posted).as_deref(), allowed, "{origins:?} {origin}");
        if origins.is_empty() {
            assert_eq!(preflight.status, 405);
        } else {
            assert_eq!(preflight.status, 200, "{origins:?}: {}", preflight.body);
            assert_eq!(
                header(&preflight).as_deref(),
                allowed,
                "{origins:?} {origin}"
            );
        }
        if allowed.is_some() {
            let methods = preflight.headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(methods.contains("POST"), "{methods}");
        }
        s.shut_down().await;
    }
    // An origin that cannot be a header is refused at start.
    let config = ServerConfig {
        allowed_origins: vec!["http://bad\norigin".into()],
        ..ServerConfig::new(NAME)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = server::serve(
        listener,
        engine(None, engine_config()),
        config,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("allowed origin"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_gets_429_with_retry_after() {
    let config = EngineConfig {
        max_running: 1,
        max_waiting: 1,
        ..engine_config()
    };
    let s = Server::start(
        engine(Some(&tiny_tokenizer()), config),
        ServerConfig::new(NAME),
    )
    .await;
    // One request runs (a long stream, read slowly)...
    let long = json!({"prompt": [5, 6, 7], "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let running = s.open("/v1/completions", &long).await;
    s.until("one running", |st| st.running == 1).await;
    // ...one waits...
    let waiting = {
        let (client, url) = (s.client.clone(), s.url("/v1/completions"));
        tokio::spawn(async move {
            let body = json!({"prompt": [5], "max_tokens": 2, "temperature": 0});
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    s.until("one waiting", |st| st.waiting == 1).await;
    // ...and the next is told to come back.
    let r = s
        .post("/v1/completions", &json!({"prompt": [5], "max_tokens": 2}))
        .await;
    let e = assert_error(&r, 429);
    assert_eq!(e["code"], "queue_full");
    assert_eq!(r.headers["retry-after"], "1");
    let metrics = s.get("/metrics").await.body;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("\nmodel_requests_waiting 1\n"),
        "{metrics}"
    );
    // Clients that give up while queued leave the queue at once, whole or streamed.
    waiting.abort();
    s.until("queue empty", |st| st.waiting == 0 && st.running == 1)
        .await;
    let mut queued = long.clone();
    queued["max_tokens"] = json!(2);
    let queued = s.open("/v1/completions", &queued).await;
    s.until("queued stream", |st| st.waiting == 1).await;
    drop(queued);
    s.until("queue empty again", |st| st.waiting == 0 && st.running == 1)
        .await;
    // The running client goes away: its request is cancelled, and the engine serves again.
    drop(running);
    let stats = s.idle().await;
    assert_eq!(stats.requests_aborted, 3);
    assert_eq!(stats.requests_finished, 0);
    s.ok("/v1/completions", &json!({"prompt": [5], "max_tokens": 2}))
        .await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_clients_cancel_their_requests_and_free_pages() {
    let s = Server::with_tokenizer().await;
    let long = |stream: bool| {
        json!({"model": NAME, "messages": [{"role": "user", "content": "Tell me a long story"}],
               "max_tokens": 4000, "ignore_eos": true, "stream": stream, "n": 2})
    };
    // Mid-stream: read a few chunks, then drop the response.
    let mut resp = s.open("/v1/chat/completions", &long(true)).await;
    let mut got = 0;
    while got < 3 {
        got += usize::from(resp.chunk().await.unwrap().is_some());
    }
    s.until("two samples running", |st| {
        st.running == 2 && st.pages_used > 0
    })
    .await;
    drop(resp);
    let stats = s.idle().await;
    assert_eq!(stats.requests_aborted, 1);
    assert!(stats.generated_tokens < 2 * 4000);

    // A whole (non-stream) request whose client gives up.
    let task = {
        let (client, url, body) = (s.client.clone(), s.url("/v1/chat/completions"), long(false));
        tokio::spawn(async move { client.post(url).json(&body).send().await })
    };
    s.until("running again", |st| st.running == 2).await;
    task.abort();
    let stats = s.idle().await;
    assert_eq!(stats.requests_aborted, 2);
    let metrics = s.get("/metrics").await.body;
    let metrics = metrics.as_str().unwrap();
    let cached = stats.prefix_cache_pages;
    for line in [
        format!("model_cache_pages_used {cached}"),
        format!("model_prefix_cache_pages {cached}"),
        "model_cache_pages_reserved 0".into(),
        "model_sequences_running 0".into(),
        "model_requests_aborted_total 2".into(),
    ] {
        assert!(
            metrics.contains(&format!("\n{line}\n")),
            "{line}: {metrics}"
        );
    }
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_requests_and_finishes_those_in_flight() {
    let s = Server::with_tokenizer().await;
    let body = json!({"prompt": [5, 6], "max_tokens": 300, "ignore_eos": true, "temperature": 0,
                      "stream": true, "return_token_ids": true});
    let mut resp = s.open("/v1/completions", &body).await;
    let mut text = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let Server {
        base,
        engine,
        client,
        stop,
        task,
    } = s;
    stop.unwrap().send(()).unwrap();
    // New requests are refused while the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{base}/health")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": [5], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "shutting_down"
    );
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let d = completion_deltas(&parse_sse(&text), 1);
    assert_eq!((d[0].1.as_str(), d[0].2.len()), ("length", 300));
    task.await.unwrap().unwrap();
    assert!(engine.is_closing());
    assert!(
        client.get(format!("{base}/health")).send().await.is_err(),
        "listener closed"
    );
}

/// A connection that never finishes its request head, one left idle after a keep-alive
/// response, and one that stops sending its body are closed once `read_timeout` passes (each
/// held a socket for ever before); a stream that takes longer than that to read is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_trickling_clients_are_closed_but_slow_streams_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read_timeout = Duration::from_millis(300);
    let config = ServerConfig {
        read_timeout,
        ..ServerConfig::new(NAME)
    };
    let s = Server::start(engine(Some(&tiny_tokenizer()), engine_config()), config).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    // Reads until the server closes the connection; what it sent, and how long that took.
    let until_closed = |mut c: tokio::net::TcpStream| async move {
        let start = Instant::now();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("the server kept the connection open")
            .unwrap();
        (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
    };
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, waited) = until_closed(slow).await;
    assert!(waited >= read_timeout / 2, "closed after {waited:?}");

    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sent, _) = until_closed(idle).await;
    assert!(
        sent.starts_with("HTTP/1.1 200") && sent.ends_with("ok"),
        "{sent}"
    );

    // A body that stops half-way: a 408 with an OpenAI error body, and the connection closed.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"prompt\": ",
        )
        .await
        .unwrap();
    let (sent, _) = until_closed(trickle).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("\"code\":\"request_timeout\""), "{sent}");

    // A stream read slowly, over several head timeouts: every token arrives.
    let body = json!({"prompt": [5, 6], "max_tokens": 40, "ignore_eos": true, "stream": true,
                      "return_token_ids": true});
    let mut resp = s.open("/v1/completions", &body).await;
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = completion_deltas(&parse_sse(&text), 1);
    assert_eq!((d[0].1.as_str(), d[0].2.len()), ("length", 40));
    s.shut_down().await;
}

/// The tiny tokenizer with an R1-style template in `dir`: it mentions `</think>` (as R1's
/// does, dropping the reasoning of earlier turns) and ends the generation prompt with
/// `prefill` (a Jinja string literal's content); token `think_id` becomes `</think>`.
fn r1_tokenizer(dir: &Path, prefill: &str, think_id: Option<u64>) {
    let template = format!(
        "{{{{ bos_token }}}}{{% for m in messages %}}{{% if m['role'] == 'user' %}}{{{{ '<｜User｜>' + m['content'] }}}}\
         {{% else %}}{{{{ '<｜Assistant｜>' + m['content'].split('</think>')[-1] + '<｜end▁of▁sentence｜>' }}}}{{% endif %}}{{% endfor %}}\
         {{% if add_generation_prompt %}}{{{{ '<｜Assistant｜>{prefill}' }}}}{{% endif %}}"
    );
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(tiny_tokenizer().join(f)).unwrap()).unwrap()
    };
    let mut cfg = read("tokenizer_config.json");
    cfg["chat_template"] = json!(template);
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let mut tj = read("tokenizer.json");
    if let Some(id) = think_id {
        // Rename the vocabulary entry: the id's byte is gone (prompts must not use it).
        let vocab = tj["model"]["vocab"].as_object_mut().unwrap();
        let old = vocab.iter().find(|(_, v)| **v == id).unwrap().0.clone();
        vocab.remove(&old);
        vocab.insert("</think>".into(), json!(id));
    }
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
}

async fn r1_server(dir: &Path, reasoning: bool) -> Server {
    let config = ServerConfig {
        reasoning,
        ..ServerConfig::new(NAME)
    };
    Server::start(engine(Some(dir), engine_config()), config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_reasoning_is_split_whole_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = chat_body("Why?", 16);
    body["return_token_ids"] = json!(true);

    // A template whose generation prompt closes the think block (V3.1's non-thinking mode):
    // the reply is content.
    r1_tokenizer(dir.path(), "</think>", None);
    let s = r1_server(dir.path(), true).await;
    let r = s.ok("/v1/chat/completions", &body).await;
    let m = &r["choices"][0]["message"];
    assert!(
        m.get("reasoning_content").is_none() && m["content"].is_string(),
        "{m}"
    );
    assert_eq!(
        r["usage"]["prompt_tokens"],
        3 + "Why?".len() + "</think>".len()
    );
    s.shut_down().await;

    // A template that does not open the think block: the server prefills `<think>\n`. The
    // random model never writes `</think>`: everything is reasoning, content null.
    r1_tokenizer(dir.path(), "", None);
    assert!(server::template_thinks(
        &Tokenizer::from_dir(dir.path()).unwrap()
    ));
    let s = r1_server(dir.path(), true).await;
    let r = s.ok("/v1/chat/completions", &body).await;
    let m = &r["choices"][0]["message"];
    assert!(m["content"].is_null(), "{m}");
    assert!(!m["reasoning_content"].as_str().unwrap().is_empty());
    assert_eq!(
        r["usage"]["prompt_tokens"],
        3 + "Why?".len() + "<think>\n".len(),
        "prefilled"
    );
    let tokens = ids(&r["choices"][0]["token_ids"]);
    // A response format constrains the answer after `</think>`, not the reasoning: this
    // reply, all reasoning, is unchanged.
    let mut json_body = body.clone();
    json_body["response_format"] = json!({"type": "json_object"});
    let j = s.ok("/v1/chat/completions", &json_body).await;
    assert_eq!(j["choices"][0]["message"], r["choices"][0]["message"]);
    s.shut_down().await;

    // So make one of its tokens `</think>`: a token that first appears mid-reply, and not in
    // the prompt, now decodes to that text. The template now opens the block itself, so the
    // prompt (hence the reply's ids) is the same with the split on or off.
    let opts = model::ChatOptions {
        add_generation_prompt: true,
        think_prefill: true,
        ..model::ChatOptions::default()
    };
    let prompt = Tokenizer::from_dir(dir.path())
        .unwrap()
        .encode_chat(&[model::Message::new("user", "Why?")], opts)
        .unwrap();
    let k = (2..tokens.len().saturating_sub(2))
        .find(|&k| {
            let t = tokens[k];
            t > 3 && !tokens[..k].contains(&t) && !prompt.contains(&(t as u32))
        })
        .unwrap_or_else(|| panic!("no token first seen mid-reply in {tokens:?}"));
    r1_tokenizer(dir.path(), "<think>\\n", Some(tokens[k]));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.decode(&[tokens[k] as u32]).unwrap(), "</think>");

    let plain = r1_server(dir.path(), false).await;
    let raw = plain.ok("/v1/chat/completions", &body).await;
    assert_eq!(ids(&raw["choices"][0]["token_ids"]), tokens);
    let raw = raw["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    plain.shut_down().await;
    let (want_reasoning, want_content) = raw.split_once("</think>").unwrap();
    assert!(!want_content.is_empty());

    let s = r1_server(dir.path(), true).await;
    let r = s.ok("/v1/chat/completions", &body).await;
    let m = &r["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], want_reasoning);
    assert_eq!(m["content"], want_content);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let d = chat_deltas(&s.stream("/v1/chat/completions", &sbody).await, 1);
    assert_eq!(
        (d[0].0.as_str(), d[0].1.as_str()),
        (want_reasoning, want_content)
    );

    // The eval harness reads the split back into R1 form.
    let source = eval_client(&s.base, eval::source::openai::Api::Chat);
    let g = eval::source::ResponseSource::generate(&source, &eval_request(16))
        .await
        .unwrap();
    assert_eq!(g.reasoning.as_deref(), Some(want_reasoning));
    assert_eq!(g.text, want_content);
    assert_eq!(
        g.full_text(),
        format!("<think>\n{want_reasoning}\n</think>\n{want_content}")
    );
    s.shut_down().await;
}

fn eval_client(base: &str, api: eval::source::openai::Api) -> eval::source::openai::OpenAi {
    let mut config = eval::source::openai::OpenAiConfig::new(base, NAME);
    config.api = api;
    config.max_retries = 0;
    eval::source::openai::OpenAi::new(config).unwrap()
}

fn eval_request(max_tokens: u32) -> eval::source::Request {
    eval::source::Request {
        task: "t".into(),
        id: "p1".into(),
        sample: 0,
        prompt: "Why?".into(),
        system: None,
        sampling: eval::task::Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            seed: Some(1),
        },
        stop: vec![],
        timeout: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eval_harness_client_works_against_the_server() {
    use eval::source::openai::Api;
    use eval::source::ResponseSource;
    let s = Server::with_tokenizer().await;
    for api in [Api::Chat, Api::Completions] {
        let source = eval_client(&s.base, api);
        let g = source.generate(&eval_request(8)).await.unwrap();
        let tokens = g.completion_tokens.unwrap();
        assert!((1..=8).contains(&tokens), "{g:?}");
        let want = if tokens == 8 { "length" } else { "stop" };
        assert_eq!(g.finish_reason.as_deref(), Some(want));
        assert_eq!(g.reasoning, None);
        // Greedy: what the harness got is what the API returns.
        let direct = match api {
            Api::Chat => s.ok("/v1/chat/completions", &chat_body("Why?", 8)).await["choices"][0]
                ["message"]["content"]
                .clone(),
            Api::Completions => s
                .ok(
                    "/v1/completions",
                    &json!({"prompt": "Why?", "max_tokens": 8, "temperature": 0}),
                )
                .await["choices"][0]["text"]
                .clone(),
        };
        assert_eq!(direct, g.text.as_str());
    }
    s.shut_down().await;
}

/// One distinct request of the load test.
#[derive(Clone)]
struct Spec {
    path: &'static str,
    body: Value,
    n: usize,
}

fn load_specs() -> Vec<Spec> {
    (0..16)
        .map(|i| {
            let max_tokens = [6, 10, 14, 20][i % 4];
            let n = if i % 5 == 0 { 2 } else { 1 };
            let (path, mut body) = if i % 3 == 0 {
                (
                    "/v1/chat/completions",
                    chat_body(&format!("Question {i}: what is {i} + {i}?"), max_tokens),
                )
            } else {
                let prompt: Vec<u32> = (0..(3 + 7 * i))
                    .map(|j| (5 + (i * 31 + j * 7) % 250) as u32)
                    .collect();
                (
                    "/v1/completions",
                    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
                )
            };
            body["n"] = json!(n);
            body["return_token_ids"] = json!(true);
            Spec { path, body, n }
        })
        .collect()
}

/// Per choice: token ids and finish reason, from a whole response or a stream.
type Outcome = Vec<(Vec<u64>, String)>;

fn outcome(spec: &Spec, whole: Option<&Value>, chunks: Option<&[Value]>) -> Outcome {
    match (whole, chunks) {
        (Some(v), _) => v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    ids(&c["token_ids"]),
                    c["finish_reason"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        (None, Some(chunks)) => {
            let mut out = vec![(vec![], String::new()); spec.n];
            for c in chunks {
                for ch in c["choices"].as_array().unwrap() {
                    let o = &mut out[ch["index"].as_u64().unwrap() as usize];
                    if let Some(t) = ch["token_ids"].as_array() {
                        o.0.extend(t.iter().map(|t| t.as_u64().unwrap()));
                    }
                    if let Some(f) = ch["finish_reason"].as_str() {
                        o.1 = f.to_string();
                    }
                }
            }
            out
        }
        (None, None) => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_test_outputs_match_solo_runs_and_every_page_comes_back() {
    let s = Arc::new(Server::with_tokenizer().await);
    let specs = load_specs();
    // Each request alone first.
    let mut solo = Vec::new();
    for spec in &specs {
        let v = s.ok(spec.path, &spec.body).await;
        solo.push(outcome(spec, Some(&v), None));
    }
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let which = i % specs.len();
        let (s, permits, spec) = (s.clone(), permits.clone(), specs[which].clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            match i % 10 {
                // Malformed: refused, nothing else happens.
                7 if i % 20 == 7 => {
                    let r = s
                        .send(s.client.post(s.url(spec.path)).body("{\"messages\": ["))
                        .await;
                    assert_error(&r, 400);
                    None
                }
                // Disconnects mid-stream.
                3 => {
                    let mut body = spec.body.clone();
                    body["stream"] = json!(true);
                    body["max_tokens"] = json!(400);
                    body["ignore_eos"] = json!(true);
                    let mut resp = s.open(spec.path, &body).await;
                    for _ in 0..2 {
                        resp.chunk().await.unwrap();
                    }
                    None
                }
                m => {
                    let got = if m % 2 == 0 {
                        let mut body = spec.body.clone();
                        body["stream"] = json!(true);
                        outcome(&spec, None, Some(&s.stream(spec.path, &body).await))
                    } else {
                        outcome(&spec, Some(&s.ok(spec.path, &spec.body).await), None)
                    };
                    Some((which, got))
                }
            }
        }));
    }
    let mut completed = 0;
    for t in tasks {
        if let Some((spec, got)) = t.await.unwrap() {
            assert_eq!(
                got, solo[spec],
                "request for spec {spec} differs from its solo run"
            );
            completed += 1;
        }
    }
    assert_eq!(completed, 200 - 20 - 10);
    let stats = s.idle().await;
    assert!(stats.requests_aborted >= 1, "{stats:?}");
    eprintln!(
        "load test: 200 requests in {:.1} s, {stats:?}",
        started.elapsed().as_secs_f64()
    );
    let metrics = s.get("/metrics").await.body;
    let used = format!("\nmodel_cache_pages_used {}\n", stats.prefix_cache_pages);
    assert!(metrics.as_str().unwrap().contains(&used));
    Arc::try_unwrap(s)
        .ok()
        .expect("tasks done")
        .shut_down()
        .await;
}

/// The tiny tokenizer with the repository's function-calling template in `dir`, and ids 7 and
/// 8 (bytes 0x07 and 0x08, in no text prompt) renamed to `calls` and `more`: with a logit
/// bias the random model then writes a DeepSeek tool-call section.
fn tools_tokenizer(dir: &Path, calls: &str, more: &str) {
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(tiny_tokenizer().join(f)).unwrap()).unwrap()
    };
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/deepseek-v3-tools.jinja"),
    )
    .unwrap();
    let mut cfg = read("tokenizer_config.json");
    cfg["chat_template"] = json!(template);
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let mut tj = read("tokenizer.json");
    for (id, text) in [(7, calls), (8, more)] {
        // An added token decodes to its text as it is (a vocabulary entry would go through
        // the byte-level alphabet); the entry it replaces is renamed to match.
        let vocab = tj["model"]["vocab"].as_object_mut().unwrap();
        let old = vocab.iter().find(|(_, v)| **v == id).unwrap().0.clone();
        vocab.remove(&old);
        vocab.insert(text.into(), json!(id));
        tj["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": id, "content": text, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": false}));
    }
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_reach_the_template_and_replies_are_read_for_calls() {
    const CALL: &str = "Let me look.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function\
        <｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>";
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Current temperature.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let history = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"},
        {"role": "assistant", "content": "18 °C."},
        {"role": "user", "content": "And now?"}]);
    let body = |max_tokens: u64, bias: u32| {
        json!({"messages": history, "tools": tools, "max_tokens": max_tokens,
               "temperature": 0, "logit_bias": {bias.to_string(): 100}})
    };

    // The tiny tokenizer's own template shows no tools: refused, not dropped.
    let s = Server::with_tokenizer().await;
    let ask = json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": tools});
    let e = assert_error(&s.post("/v1/chat/completions", &ask).await, 400);
    assert_eq!(e["param"], "tools");
    assert!(
        e["message"].as_str().unwrap().contains("--chat-template"),
        "{e}"
    );
    s.shut_down().await;

    let dir = tempfile::tempdir().unwrap();
    tools_tokenizer(dir.path(), CALL, "<｜tool▁calls▁end｜>");
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.decode(&[7]).unwrap(), CALL);
    let s = Server::start(
        engine(Some(dir.path()), engine_config()),
        ServerConfig::new(NAME),
    )
    .await;

    // The prompt is the template's render of the whole exchange with the tools.
    let messages: Vec<model::Message> = serde_json::from_value(history.clone()).unwrap();
    let tool_list = tools.as_array().unwrap().as_slice();
    let extras = model::ChatExtras {
        tools: Some(tool_list),
        ..Default::default()
    };
    let prompt = tok
        .render_chat(&messages, extras, model::ChatOptions::default())
        .unwrap();
    assert!(
        prompt.contains("### get_weather\nCurrent temperature.\n"),
        "{prompt}"
    );
    assert!(
        prompt.contains("<｜tool▁output▁begin｜>{\"celsius\": 18}"),
        "{prompt}"
    );
    let r = s.ok("/v1/chat/completions", &body(1, 7)).await;
    assert_eq!(
        r["usage"]["prompt_tokens"],
        tok.encode_plain(&prompt).unwrap().len()
    );

    // A reply holding a call: content before it, the call, finish_reason tool_calls.
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let m = &choice["message"];
    assert_eq!(m["content"], "Let me look.");
    let calls = m["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(
        calls[0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"})
    );
    // Streamed: the same content, then the call in one delta with its index.
    let mut sbody = body(1, 7);
    sbody["stream"] = json!(true);
    let chunks = s.stream("/v1/chat/completions", &sbody).await;
    let d = chat_deltas(&chunks, 1);
    assert_eq!(
        (d[0].1.as_str(), d[0].2.as_str()),
        ("Let me look.", "tool_calls")
    );
    let streamed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0][0]["index"], 0);
    assert_eq!(streamed[0][0]["function"], calls[0]["function"]);

    // Text after the call section: nothing is read as a call, nothing is lost.
    let r = s.ok("/v1/chat/completions", &body(2, 7)).await;
    assert_eq!(r["choices"][0]["message"]["content"], CALL.repeat(2));
    assert!(r["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    // tool_choice none: the tools are shown, the reply is not read for calls.
    let mut none = body(1, 7);
    none["tool_choice"] = json!("none");
    let r = s.ok("/v1/chat/completions", &none).await;
    assert_eq!(r["choices"][0]["message"]["content"], CALL);
    // Without tools nothing is read either.
    let mut plain = body(1, 7);
    plain.as_object_mut().unwrap().remove("tools");
    let r = s.ok("/v1/chat/completions", &plain).await;
    assert_eq!(r["choices"][0]["message"]["content"], CALL);

    // tool_choice required / named: the reply is calls only, each call's arguments valid
    // under its tool's schema, though the random model would write none of its own.
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]});
    // Bounded arguments, and id 10 (the newline byte) discouraged where a call could be
    // followed by another, so that the random model's replies end on any machine.
    let mut forced = json!({"messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": schema}},
                  {"type": "function", "function": {"name": "now", "parameters":
                      {"type": "object", "properties": {}, "additionalProperties": false}}}],
        "max_tokens": 400, "temperature": 1.0, "seed": 2, "n": 3, "logit_bias": {"10": -100}});
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        forced["tool_choice"] = choice.clone();
        let r = s.ok("/v1/chat/completions", &forced).await;
        for c in r["choices"].as_array().unwrap() {
            assert_eq!(c["finish_reason"], "tool_calls", "{c}");
            assert!(c["message"]["content"].is_null(), "{c}");
            let calls = c["message"]["tool_calls"].as_array().unwrap();
            assert!(!calls.is_empty());
            for call in calls {
                let f = &call["function"];
                let args: Value = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
                match f["name"].as_str().unwrap() {
                    "get_weather" => {
                        assert!(["Paris", "Oslo"].contains(&args["city"].as_str().unwrap()))
                    }
                    "now" => assert!(choice == "required" && args.is_object()),
                    other => panic!("{other}"),
                }
            }
            if choice != "required" {
                assert_eq!(calls.len(), 1);
            }
        }
    }
    // parallel_tool_calls false: `required` forces exactly one call.
    forced["tool_choice"] = json!("required");
    forced["parallel_tool_calls"] = json!(false);
    forced["logit_bias"] = json!({});
    forced["n"] = json!(4);
    forced["return_token_ids"] = json!(true);
    let r = s.ok("/v1/chat/completions", &forced).await;
    for c in r["choices"].as_array().unwrap() {
        assert_eq!(c["finish_reason"], "tool_calls", "{c}");
        assert_eq!(
            c["message"]["tool_calls"].as_array().unwrap().len(),
            1,
            "{c}"
        );
        // The model wrote one call (not several, of which one was kept).
        let ids: Vec<u32> = ids(&c["token_ids"]).iter().map(|&t| t as u32).collect();
        let text = tok.decode(&ids).unwrap();
        assert_eq!(text.matches("<｜tool▁call▁begin｜>").count(), 1, "{text}");
    }

    // Requests the server cannot honour, or malformed tool fields.
    let chat = "/v1/chat/completions";
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"messages": user, "tools": tools, "tool_choice": "any"}),
            "tool_choice",
        ),
        (
            json!({"messages": user, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"messages": user, "tools": tools, "tool_choice":
            {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"messages": user, "tools": tools, "tool_choice": "required",
            "response_format": {"type": "json_object"}}),
            "tool_choice",
        ),
        (
            json!({"messages": user, "tools": [{"type": "function"}]}),
            "tools[0]",
        ),
        (
            json!({"messages": user, "tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            "tools[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
            "messages[0].tool_calls",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
            {"type": "function", "function": {"arguments": "{}"}}]}]}),
            "messages[0].tool_calls[0].function",
        ),
        (
            json!({"messages": [{"role": "tool", "content": null}]}),
            "messages[0].content",
        ),
    ];
    for (body, param) in &cases {
        let e = assert_error(&s.post(chat, body).await, 400);
        assert_eq!(e["param"], *param, "{body}");
    }
    s.idle().await;
    s.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_outputs_whole_and_streamed() {
    let s = Server::with_tokenizer().await;
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"city": {"enum": ["Paris", "Oslo"]}, "celsius": {"type": "integer",
        "minimum": -40, "maximum": 50}}, "required": ["city", "celsius"]});
    let mut body = chat_body("Weather?", 64);
    body["temperature"] = json!(1.0);
    body["seed"] = json!(4);
    body["n"] = json!(3);
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "weather", "strict": true, "schema": schema}});
    let r = s.ok("/v1/chat/completions", &body).await;
    let mut contents = vec![];
    for c in r["choices"].as_array().unwrap() {
        let text = c["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            ["Paris", "Oslo"].contains(&v["city"].as_str().unwrap()),
            "{text}"
        );
        assert!(
            (-40..=50).contains(&v["celsius"].as_i64().unwrap()),
            "{text}"
        );
        assert_eq!(c["finish_reason"], "stop");
        contents.push(text.to_string());
    }
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let d = chat_deltas(&s.stream("/v1/chat/completions", &sbody).await, 3);
    for (i, (_, content, finish)) in d.iter().enumerate() {
        assert_eq!((content, finish.as_str()), (&contents[i], "stop"));
    }
    // json_object, and vLLM's guided_choice / guided_regex on completions.
    let mut obj = chat_body("Weather?", 200);
    obj["response_format"] = json!({"type": "json_object"});
    let r = s.ok("/v1/chat/completions", &obj).await;
    let c = &r["choices"][0];
    let text = c["message"]["content"].as_str().unwrap();
    if c["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(text).unwrap().is_object(),
            "{text}"
        );
    } else {
        assert!(text.starts_with('{'), "{text}");
    }
    let choices = ["left", "right", "up (1)"];
    let r = s
        .ok(
            "/v1/completions",
            &json!({"prompt": "Go", "max_tokens": 20, "n": 4,
        "temperature": 1.0, "seed": 1, "guided_choice": choices}),
        )
        .await;
    for c in r["choices"].as_array().unwrap() {
        assert!(choices.contains(&c["text"].as_str().unwrap()), "{c}");
    }
    let r = s
        .ok(
            "/v1/completions",
            &json!({"prompt": "Go", "max_tokens": 20,
        "guided_regex": "[0-9]{2}:[0-9]{2}"}),
        )
        .await;
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(text.len() == 5 && text.as_bytes()[2] == b':', "{text}");
    let r = s
        .ok(
            "/v1/completions",
            &json!({"prompt": "Go", "max_tokens": 40, "temperature": 1.0,
        "guided_grammar": "start: \"move \" dir (\", \" dir)?\ndir: \"north\" | \"south\""}),
        )
        .await;
    let text = r["choices"][0]["text"].as_str().unwrap();
    let dirs: Vec<&str> = text.strip_prefix("move ").unwrap().split(", ").collect();
    assert!(
        dirs.iter().all(|d| ["north", "south"].contains(d)),
        "{text}"
    );
    s.idle().await;
    s.shut_down().await;
}

/// vLLM's chat-template fields (`chat_template_kwargs`, `continue_final_message`,
/// `add_generation_prompt`) and `/tokenize` / `/detokenize`, over a hybrid template in the
/// manner of DeepSeek-V3.1's, whose `thinking` variable opens or closes the think block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_fields_continued_messages_and_tokenize() {
    let dir = tempfile::tempdir().unwrap();
    let template = "{% if not thinking is defined %}{% set thinking = false %}{% endif %}\
        {{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}\
        {% else %}<｜Assistant｜>{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}\
        <｜Assistant｜>{% if thinking %}<think>{% else %}</think>{% endif %}{% endif %}";
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(tiny_tokenizer().join(f)).unwrap()).unwrap()
    };
    let mut cfg = read("tokenizer_config.json");
    cfg["chat_template"] = json!(template);
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        tiny_tokenizer().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let bos = "<｜begin▁of▁sentence｜>";
    let s = r1_server(dir.path(), true).await;
    let chat = "/v1/chat/completions";

    // Thinking off (the template's default): the reply is content.
    let mut body = chat_body("Why?", 8);
    let r = s.ok(chat, &body).await;
    let m = &r["choices"][0]["message"];
    assert!(
        m["content"].is_string() && m.get("reasoning_content").is_none(),
        "{m}"
    );
    let off = format!("{bos}<｜User｜>Why?<｜Assistant｜></think>");
    assert_eq!(
        r["usage"]["prompt_tokens"],
        tok.encode_plain(&off).unwrap().len()
    );
    // Thinking on: the prompt opens the block, so the reply is reasoning (the random model
    // never closes it).
    body["chat_template_kwargs"] = json!({"thinking": true});
    let r = s.ok(chat, &body).await;
    let m = &r["choices"][0]["message"];
    assert!(m["content"].is_null(), "{m}");
    assert!(!m["reasoning_content"].as_str().unwrap().is_empty(), "{m}");
    let on = tok
        .encode_plain(&format!("{bos}<｜User｜>Why?<｜Assistant｜><think>"))
        .unwrap();
    assert_eq!(r["usage"]["prompt_tokens"], on.len());
    // /tokenize renders a conversation exactly as chat completions run it.
    let t = s
        .ok(
            "/tokenize",
            &json!({"messages": body["messages"], "chat_template_kwargs": {"thinking": true}}),
        )
        .await;
    assert_eq!(t["tokens"], json!(on));
    assert_eq!(t["count"], on.len());
    let models = s.ok_get("/v1/models").await;
    assert_eq!(t["max_model_len"], models["data"][0]["max_model_len"]);
    assert!(t["token_strs"].is_null());

    // continue_final_message: the prompt ends inside the assistant's message, and the reply
    // is its continuation: the same tokens as /v1/completions on that prompt.
    let continued = |prefix: &str| {
        json!({"messages": [{"role": "user", "content": "Why?"},
                            {"role": "assistant", "content": prefix}],
               "continue_final_message": true, "add_generation_prompt": false,
               "max_tokens": 6, "temperature": 0, "return_token_ids": true})
    };
    let r = s.ok(chat, &continued("Because")).await;
    let prompt = tok
        .encode_plain(&format!("{bos}<｜User｜>Why?<｜Assistant｜>Because"))
        .unwrap();
    assert_eq!(r["usage"]["prompt_tokens"], prompt.len());
    assert!(r["choices"][0]["message"]["content"].is_string());
    let c = s
        .ok(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0,
                    "return_token_ids": true}),
        )
        .await;
    assert_eq!(r["choices"][0]["token_ids"], c["choices"][0]["token_ids"]);
    // `add_generation_prompt` defaults to false when continuing.
    let mut implicit = continued("Because");
    implicit
        .as_object_mut()
        .unwrap()
        .remove("add_generation_prompt");
    let r2 = s.ok(chat, &implicit).await;
    assert_eq!(r2["choices"][0]["token_ids"], r["choices"][0]["token_ids"]);
    // A continued message that opened the reasoning and did not close it: reasoning.
    let r = s.ok(chat, &continued("<think>\nBecause")).await;
    let m = &r["choices"][0]["message"];
    assert!(
        m["content"].is_null() && m["reasoning_content"].is_string(),
        "{m}"
    );

    // /tokenize's prompt form encodes as /v1/completions does; /detokenize inverts it.
    let t = s
        .ok(
            "/tokenize",
            &json!({"prompt": "héllo", "return_token_strs": true}),
        )
        .await;
    let ids = tok.encode("héllo").unwrap();
    assert_eq!(t["tokens"], json!(ids));
    let strs: Vec<String> = ids.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert_eq!(t["token_strs"], json!(strs));
    let t = s
        .ok(
            "/tokenize",
            &json!({"prompt": "héllo", "add_special_tokens": false}),
        )
        .await;
    assert_eq!(t["tokens"], json!(tok.encode_plain("héllo").unwrap()));
    let d = s.ok("/detokenize", &json!({"tokens": ids})).await;
    assert_eq!(d["prompt"], tok.decode(&ids).unwrap());

    // Bad input: a 400 naming the field (404 for another model), nothing run.
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            chat,
            json!({"messages": user, "chat_template_kwargs": {"messages": []}}),
            400,
            "chat_template_kwargs",
        ),
        (
            chat,
            json!({"messages": user, "chat_template_kwargs": ["thinking"]}),
            400,
            "chat_template_kwargs",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "So"}],
                   "continue_final_message": true, "add_generation_prompt": true}),
            400,
            "continue_final_message",
        ),
        (
            chat,
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
                   "continue_final_message": true}),
            400,
            "continue_final_message",
        ),
        ("/tokenize", json!({}), 400, ""),
        (
            "/tokenize",
            json!({"prompt": "a", "messages": user}),
            400,
            "",
        ),
        ("/tokenize", json!({"prompt": 5}), 400, "prompt"),
        (
            "/tokenize",
            json!({"prompt": "a", "model": "other"}),
            404,
            "",
        ),
        (
            "/detokenize",
            json!({"tokens": [1, 1_000_000]}),
            400,
            "tokens[1]",
        ),
        ("/detokenize", json!({"tokens": "abc"}), 400, "tokens"),
    ];
    for (path, body, status, param) in &cases {
        let e = assert_error(&s.post(path, body).await, *status);
        if !param.is_empty() {
            assert_eq!(e["param"], *param, "{path} {body}: {e}");
        }
    }
    s.idle().await;
    s.shut_down().await;
}

/// The events of a Responses stream (`event:` and `data:` lines), checking each event's name
/// matches its `type` and the sequence numbers count from 0.
async fn response_events(s: &Server, body: &Value) -> Vec<Value> {
    let resp = s.open("/v1/responses", body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                if d == "[DONE]" {
                    continue;
                }
                let e: Value = serde_json::from_str(d).unwrap();
                assert_eq!(Some(e["type"].as_str().unwrap().to_string()), name, "{e}");
                assert_eq!(e["sequence_number"], events.len(), "{e}");
                events.push(e);
            }
        }
    }
    events
}

/// A whole response's items without their ids (streams and whole responses draw fresh ones).
fn without_ids(output: &Value) -> Value {
    let mut output = output.clone();
    for item in output.as_array_mut().unwrap() {
        let o = item.as_object_mut().unwrap();
        o.remove("id");
        o.remove("call_id");
    }
    output
}

/// Checks a stream against the whole response: its events in OpenAI's order, text deltas
/// adding up to each item's text, and the final response equal to the whole one.
fn check_stream(events: &[Value], whole: &Value) {
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(events[0]["response"]["status"], "in_progress");
    let last = events.last().unwrap();
    let status = whole["status"].as_str().unwrap();
    assert_eq!(last["type"], format!("response.{status}"));
    let streamed = &last["response"];
    assert_eq!(
        without_ids(&streamed["output"]),
        without_ids(&whole["output"])
    );
    // (The cached prompt tokens differ: the stream reran a prompt the cache now holds.)
    for count in [
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "output_tokens_details",
    ] {
        assert_eq!(streamed["usage"][count], whole["usage"][count], "{count}");
    }
    // Per output item: added, (part added, deltas, done, part done | argument events), done.
    for (index, item) in streamed["output"].as_array().unwrap().iter().enumerate() {
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["output_index"] == index)
            .collect();
        assert_eq!(mine.first().unwrap()["type"], "response.output_item.added");
        assert_eq!(mine.last().unwrap()["type"], "response.output_item.done");
        assert_eq!(mine.last().unwrap()["item"], *item);
        let deltas: String = mine
            .iter()
            .filter(|e| e["type"].as_str().unwrap().ends_with(".delta"))
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        let want = match item["type"].as_str().unwrap() {
            "function_call" => item["arguments"].as_str().unwrap(),
            _ => item["content"][0]["text"].as_str().unwrap(),
        };
        assert_eq!(deltas, want, "{item}");
    }
}

/// OpenAI's Responses API over the chat machinery: the same prompt and reply as chat
/// completions, whole and streamed, with reasoning, tool calls, structured output, input
/// items, and its errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_whole_and_streamed() {
    let s = Server::with_tokenizer().await;
    let chat = s.ok("/v1/chat/completions", &chat_body("Why?", 8)).await;
    let body = json!({"model": NAME, "input": "Why?", "max_output_tokens": 8, "temperature": 0});
    let r = s.ok("/v1/responses", &body).await;
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(r["usage"]["output_tokens"], 8);
    let output = r["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["status"], "incomplete");
    assert_eq!(
        output[0]["content"][0]["text"],
        chat["choices"][0]["message"]["content"]
    );
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    check_stream(&response_events(&s, &sbody).await, &r);

    // Instructions and input items render as the equivalent chat messages.
    let items = json!({"model": NAME, "instructions": "Be brief.", "max_output_tokens": 4,
        "temperature": 0, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Why"},
                                         {"type": "input_text", "text": "?"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Because."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "user", "content": "Why not?"}]});
    let messages = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "Why not?"}]);
    let c = s
        .ok(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 4, "temperature": 0}),
        )
        .await;
    let r = s.ok("/v1/responses", &items).await;
    assert_eq!(r["usage"]["input_tokens"], c["usage"]["prompt_tokens"]);
    assert_eq!(
        r["output"][0]["content"][0]["text"],
        c["choices"][0]["message"]["content"]
    );
    // A structured answer: text.format json_schema.
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]});
    let format = json!({"model": NAME, "input": "Where?", "max_output_tokens": 64,
        "temperature": 1.0, "seed": 5,
        "text": {"format": {"type": "json_schema", "name": "place", "schema": schema,
                            "strict": true}}});
    let r = s.ok("/v1/responses", &format).await;
    assert_eq!(r["status"], "completed", "{r}");
    let text = r["output"][0]["content"][0]["text"].as_str().unwrap();
    let place: Value = serde_json::from_str(text).unwrap();
    assert!(["Paris", "Oslo"].contains(&place["city"].as_str().unwrap()));

    // Errors name the Responses API's fields.
    let cases = [
        (
            json!({"input": "hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (json!({"input": "hi", "background": true}), "background"),
        (json!({}), "input"),
        (json!({"input": 5}), "input"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image",
            "image_url": "http://x"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"input": [{"type": "item_reference", "id": "x"}]}),
            "input[0].type",
        ),
        (
            json!({"input": [{"role": "tool", "content": "x"}]}),
            "input[0].role",
        ),
        (
            json!({"input": [{"type": "function_call_output", "output": "x"}]}),
            "input[0].call_id",
        ),
        (
            json!({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}),
            "input[0].arguments",
        ),
        (
            json!({"input": "hi", "tools": [{"type": "web_search"}]}),
            "tools[0]",
        ),
        (
            json!({"input": "hi", "text": {"format": {"type": "xml"}}}),
            "text.format",
        ),
        (
            json!({"input": "hi", "max_output_tokens": 10_000_000}),
            "max_output_tokens",
        ),
        (json!({"input": "hi", "temperature": -1}), "temperature"),
    ];
    for (body, param) in &cases {
        let e = assert_error(&s.post("/v1/responses", body).await, 400);
        assert_eq!(e["param"], *param, "{body}: {e}");
    }
    s.idle().await;
    s.shut_down().await;

    // R1's reasoning: a reasoning item (the random model never closes it: all reasoning).
    let dir = tempfile::tempdir().unwrap();
    r1_tokenizer(dir.path(), "<think>\\n", None);
    let s = r1_server(dir.path(), true).await;
    let r = s.ok("/v1/responses", &body).await;
    let output = r["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{r}");
    assert_eq!(output[0]["type"], "reasoning");
    assert!(!output[0]["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 8);
    check_stream(&response_events(&s, &sbody).await, &r);
    s.shut_down().await;

    // Tool calls: a function_call item after the content, from a reply that writes one;
    // function_call and function_call_output items render as chat's calls and tool turns.
    const CALL: &str = "Let me look.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function\
        <｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>";
    let dir = tempfile::tempdir().unwrap();
    tools_tokenizer(dir.path(), CALL, "<｜tool▁calls▁end｜>");
    let s = Server::start(
        engine(Some(dir.path()), engine_config()),
        ServerConfig::new(NAME),
    )
    .await;
    let tool = json!({"type": "function", "name": "get_weather", "description": "Temperature.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let body = json!({"model": NAME, "tools": [tool], "max_output_tokens": 1, "temperature": 0,
        "logit_bias": {"7": 100}, "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"celsius\": 18}"},
            {"role": "user", "content": "And now?"}]});
    let r = s.ok("/v1/responses", &body).await;
    assert_eq!(r["status"], "completed", "{r}");
    let output = r["output"].as_array().unwrap();
    assert_eq!(output.len(), 2, "{r}");
    assert_eq!(output[0]["content"][0]["text"], "Let me look.");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["name"], "get_weather");
    assert_eq!(output[1]["arguments"], "{\"city\": \"Paris\"}");
    assert!(output[1]["call_id"].as_str().unwrap().starts_with("call_"));
    let chat = json!({"model": NAME, "max_tokens": 1, "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Temperature.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_weather",
                "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"},
            {"role": "user", "content": "And now?"}]});
    let c = s.ok("/v1/chat/completions", &chat).await;
    assert_eq!(r["usage"]["input_tokens"], c["usage"]["prompt_tokens"]);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    check_stream(&response_events(&s, &sbody).await, &r);
    s.idle().await;
    s.shut_down().await;
}

/// `usage.prompt_tokens_details.cached_tokens`: the prompt tokens a request took from the
/// prefix cache (whole pages of whole prefill chunks an earlier request left), whole and
/// streamed, and in the Responses API's `input_tokens_details`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_the_prompt_tokens_the_prefix_cache_supplied() {
    let s = Server::with_tokenizer().await;
    let long = "a fairly long question that fills a few cache pages of sixteen tokens";
    let body = chat_body(long, 2);
    let first = s.ok("/v1/chat/completions", &body).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    // Prefill chunks of 32, pages of 16: the prompt's whole chunks are cached.
    let want = prompt / 32 * 32;
    assert!(want >= 32, "{prompt}");
    let again = s.ok("/v1/chat/completions", &body).await;
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        want
    );
    assert_eq!(again["choices"], first["choices"]);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/chat/completions", &sbody).await;
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], want,
        "{usage}"
    );
    let r = s
        .ok(
            "/v1/responses",
            &json!({"input": long, "max_output_tokens": 2, "temperature": 0}),
        )
        .await;
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], want);
    s.idle().await;
    s.shut_down().await;
}

/// vLLM's `prompt_logprobs`: per prompt token (the first `null`) the prompt's token with its
/// log-probability and rank, and the most likely alternatives, by token id; per choice in
/// completions, at the top level in chat; the same scores as `echo` with `logprobs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_score_the_prompt_as_vllm_returns_them() {
    let s = Server::with_tokenizer().await;
    let prompt = "The quick brown fox";
    let echo = s
        .ok(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1}),
        )
        .await;
    let echoed = &echo["choices"][0]["logprobs"];
    let body = json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "n": 2,
        "prompt_logprobs": 2});
    let r = s.ok("/v1/completions", &body).await;
    let tokens = Tokenizer::from_dir(&tiny_tokenizer())
        .unwrap()
        .encode(prompt)
        .unwrap();
    for choice in r["choices"].as_array().unwrap() {
        let p = choice["prompt_logprobs"].as_array().unwrap();
        assert_eq!(p.len(), tokens.len());
        assert!(p[0].is_null());
        for (i, entry) in p.iter().enumerate().skip(1) {
            let entry = entry.as_object().unwrap();
            assert!((1..=3).contains(&entry.len()), "{entry:?}");
            let own = &entry[&tokens[i].to_string()];
            let want = echoed["token_logprobs"][i].as_f64().unwrap();
            assert!((own["logprob"].as_f64().unwrap() - want).abs() < 1e-5);
            assert!(own["rank"].as_u64().unwrap() >= 1);
            assert_eq!(own["decoded_token"], echoed["tokens"][i]);
            let ranks: Vec<u64> = entry
                .values()
                .map(|e| e["rank"].as_u64().unwrap())
                .collect();
            assert!(ranks.contains(&1), "{entry:?}");
        }
    }
    // With echo and logprobs too: the echo keeps its own count of alternatives.
    let both = json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1,
        "prompt_logprobs": 3});
    let c = &s.ok("/v1/completions", &both).await["choices"][0];
    assert_eq!(
        c["logprobs"]["top_logprobs"][1].as_object().unwrap().len(),
        1
    );
    assert!(c["prompt_logprobs"][1].as_object().unwrap().len() >= 3);
    // The samples are those of a request without scores.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("prompt_logprobs");
    let p = s.ok("/v1/completions", &plain).await;
    assert_eq!(p["choices"][0]["text"], r["choices"][0]["text"]);
    assert!(p["choices"][0].get("prompt_logprobs").is_none());
    // Chat: at the top level, one entry per prompt token.
    let mut chat = chat_body("hi", 2);
    chat["prompt_logprobs"] = json!(0);
    let c = s.ok("/v1/chat/completions", &chat).await;
    let entries = c["prompt_logprobs"].as_array().unwrap();
    assert_eq!(
        entries.len() as u64,
        c["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert!(entries[1..]
        .iter()
        .all(|e| e.as_object().unwrap().len() == 1));
    // Not with stream; at most 20 alternatives.
    for (body, param) in [
        (
            json!({"prompt": prompt, "prompt_logprobs": 1, "stream": true}),
            "prompt_logprobs",
        ),
        (
            json!({"prompt": prompt, "prompt_logprobs": 21}),
            "prompt_logprobs",
        ),
        (
            json!({"prompt": prompt, "prompt_logprobs": -1}),
            "prompt_logprobs",
        ),
        // Every choice repeats the scores: 70,000 tokens x 2 x 64 choices is over the budget.
        (
            json!({"prompt": vec![5; 70_000], "prompt_logprobs": 1, "n": 64, "max_tokens": 1}),
            "prompt_logprobs",
        ),
    ] {
        let e = assert_error(&s.post("/v1/completions", &body).await, 400);
        assert_eq!(e["param"], param, "{body}");
    }
    s.idle().await;
    s.shut_down().await;
}
