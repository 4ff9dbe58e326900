//! The local model crate as a response source: a DeepSeek checkpoint on this machine, its
//! tokenizer and chat template. R1 protocol: one user message (plus an optional system
//! prompt), the assistant turn opened with `<think>\n`, so responses lack the opening tag (the
//! answer engine treats that as normal).
//!
//! Plain decoding goes through the model crate's continuous-batching [`Engine`]: the harness's
//! concurrent requests decode together in one batch (`--concurrency` of them at a time), and
//! the k samples of a problem share the prompt's prefill through the engine's prefix cache.
//! The engine is batch-invariant, so a response does not depend on what else runs. MTP
//! speculative decoding ([`LocalModel::with_decoding`]; same responses for greedy requests,
//! same distribution for sampled ones) runs one sequence at a time through
//! `model::generate`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use model::engine::{Engine, EngineConfig, RequestParams};
use model::generate::{Decoding, FinishReason, GenerateOptions, Generator};
use model::{ChatOptions, DeepSeek, Message, SamplingParams, Tokenizer};

use super::{BoxFuture, Generation, Request, ResponseSource};

/// Latent-cache memory the engine may use (whole pages of all sequences in flight plus its
/// prefix cache).
const CACHE_BYTES: usize = 4 << 30;

/// A loaded local model.
pub struct LocalModel {
    inner: Arc<Inner>,
    decoding: Decoding,
    describe: String,
}

struct Inner {
    engine: Engine,
    /// MTP generation (shares the engine's weights; its modules load on first use).
    generator: Generator,
    tokenizer: Arc<Tokenizer>,
}

impl LocalModel {
    /// Loads `model_dir` on the CPU with the model CLI's default precision (f32 compute over
    /// the checkpoint's bf16/f16 matrices, see `model::Precision::auto`) and the tokenizer
    /// from `tokenizer_dir` (default: `model::Tokenizer::for_model`'s: the one beside the
    /// checkpoint, or inside a GGUF file), and starts the engine.
    pub fn load(model_dir: &Path, tokenizer_dir: Option<&Path>) -> anyhow::Result<Self> {
        let model = Arc::new(DeepSeek::load_auto(
            model_dir,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?);
        let tokenizer = Arc::new(
            Tokenizer::for_model(model_dir, tokenizer_dir)?.with_context(|| {
                format!(
                    "no tokenizer for {}: no tokenizer.json beside it (nor one inside a GGUF \
                     file)",
                    model_dir.display()
                )
            })?,
        );
        let config = EngineConfig {
            cache_tokens: CACHE_BYTES / model.cache_bytes_per_token(),
            ..EngineConfig::default()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                engine: Engine::start(model.clone(), Some(tokenizer.clone()), config)?,
                generator: Generator::new(model),
                tokenizer,
            }),
            decoding: Decoding::Plain,
            describe: format!("local model {}", model_dir.display()),
        })
    }

    /// Generates with `decoding` (default [`Decoding::Plain`]). [`Decoding::Mtp`] loads the
    /// checkpoint's MTP modules now, once for all requests, and fails when it has none.
    pub fn with_decoding(mut self, decoding: Decoding) -> anyhow::Result<Self> {
        if decoding == Decoding::Mtp {
            self.inner.generator.mtp_modules()?;
        }
        self.decoding = decoding;
        Ok(self)
    }
}

impl Inner {
    /// One request, blocking.
    fn run(&self, decoding: Decoding, req: &Request) -> anyhow::Result<Generation> {
        let model = self.engine.model();
        let mut messages = Vec::new();
        if let Some(system) = &req.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &req.prompt));
        let prompt = self.tokenizer.encode_chat(
            &messages,
            ChatOptions {
                add_generation_prompt: true,
                think_prefill: true,
                ..ChatOptions::default()
            },
        )?;
        // Sample i of a problem gets seed base + i; without a base seed, a hash of the key
        // keeps reruns reproducible.
        let seed = req
            .sampling
            .seed
            .map_or_else(|| fnv1a(req.key().as_bytes()), |s| s + req.sample as u64);
        let sampling = SamplingParams {
            temperature: req.sampling.temperature as f32,
            top_p: req.sampling.top_p as f32,
            top_k: 0,
            seed,
        };
        let stop_tokens: Vec<u32> = model
            .config()
            .eos_token_ids
            .iter()
            .copied()
            .chain(self.tokenizer.eos_id())
            .collect();
        let max_tokens = req.sampling.max_tokens as usize;
        let (text, finish, tokens) = match decoding {
            Decoding::Plain => {
                let mut out = self.engine.generate(model::Request {
                    prompt,
                    params: RequestParams {
                        max_tokens,
                        sampling,
                        stop_tokens,
                        stop_strings: req.stop.clone(),
                        ..RequestParams::default()
                    },
                })?;
                let c = out.remove(0);
                (c.text, c.finish, c.tokens.len())
            }
            Decoding::Mtp => {
                let opts = GenerateOptions {
                    max_new_tokens: max_tokens,
                    sampling,
                    stop_tokens,
                    stop_strings: req.stop.clone(),
                    decoding: Decoding::Mtp,
                    ..GenerateOptions::default()
                };
                let (gen, text) =
                    self.generator
                        .generate_text(&self.tokenizer, &prompt, &opts, |_| {})?;
                (text, Some(gen.finish), gen.tokens.len())
            }
        };
        Ok(Generation {
            text,
            reasoning: None,
            finish_reason: Some(
                if finish == Some(FinishReason::MaxTokens) {
                    "length"
                } else {
                    "stop"
                }
                .into(),
            ),
            completion_tokens: Some(tokens as u64),
        })
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl ResponseSource for LocalModel {
    fn describe(&self) -> String {
        match self.decoding {
            Decoding::Plain => self.describe.clone(),
            Decoding::Mtp => format!("{} (MTP speculative decoding)", self.describe),
        }
    }

    fn generate<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, anyhow::Result<Generation>> {
        let inner = Arc::clone(&self.inner);
        let decoding = self.decoding;
        let req = req.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.run(decoding, &req))
                .await
                .context("local model worker")?
        })
    }
}
