//! The local model crate as a response source: a DeepSeek checkpoint on this machine, its
//! tokenizer and chat template. R1 protocol: one user message (plus an optional system
//! prompt), the assistant turn opened with `<think>\n`, so responses lack the opening tag (the
//! answer engine treats that as normal). Generation goes through `model::generate`, plain or
//! with MTP speculative decoding ([`LocalModel::with_decoding`]; same responses for greedy
//! requests, same distribution for sampled ones).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use model::generate::{Decoding, FinishReason, GenerateOptions, Generator};
use model::{ChatOptions, DeepSeek, Message, SamplingParams, Tokenizer};

use super::{BoxFuture, Generation, Request, ResponseSource};

/// A loaded local model; requests run one at a time per call on blocking threads.
pub struct LocalModel {
    inner: Arc<(Generator, Tokenizer)>,
    decoding: Decoding,
    describe: String,
}

impl LocalModel {
    /// Loads `model_dir` on the CPU with the model CLI's default precision (f32 compute over
    /// the checkpoint's bf16/f16 matrices, see `model::Precision::auto`) and the tokenizer
    /// from `tokenizer_dir` (default: the model directory).
    pub fn load(model_dir: &Path, tokenizer_dir: Option<&Path>) -> anyhow::Result<Self> {
        let model = DeepSeek::load_auto(
            model_dir,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let tok_dir = tokenizer_dir.unwrap_or(model_dir);
        let tokenizer = Tokenizer::from_dir(tok_dir)
            .with_context(|| format!("tokenizer in {}", tok_dir.display()))?;
        Ok(Self {
            inner: Arc::new((Generator::new(model), tokenizer)),
            decoding: Decoding::Plain,
            describe: format!("local model {}", model_dir.display()),
        })
    }

    /// Generates with `decoding` (default [`Decoding::Plain`]). [`Decoding::Mtp`] loads the
    /// checkpoint's MTP modules now, once for all requests, and fails when it has none.
    pub fn with_decoding(mut self, decoding: Decoding) -> anyhow::Result<Self> {
        if decoding == Decoding::Mtp {
            self.inner.0.mtp_modules()?;
        }
        self.decoding = decoding;
        Ok(self)
    }
}

fn run(
    generator: &Generator,
    tokenizer: &Tokenizer,
    decoding: Decoding,
    req: &Request,
) -> anyhow::Result<Generation> {
    let model = generator.model();
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(Message::new("system", system));
    }
    messages.push(Message::new("user", &req.prompt));
    let prompt = tokenizer.encode_chat(
        &messages,
        ChatOptions {
            add_generation_prompt: true,
            think_prefill: true,
        },
    )?;
    // Sample i of a problem gets seed base + i; without a base seed, a hash of the key keeps
    // reruns reproducible.
    let seed = req
        .sampling
        .seed
        .map_or_else(|| fnv1a(req.key().as_bytes()), |s| s + req.sample as u64);
    let opts = GenerateOptions {
        max_new_tokens: req.sampling.max_tokens as usize,
        sampling: SamplingParams {
            temperature: req.sampling.temperature as f32,
            top_p: req.sampling.top_p as f32,
            top_k: 0,
            seed,
        },
        stop_tokens: model
            .config()
            .eos_token_ids
            .iter()
            .copied()
            .chain(tokenizer.eos_id())
            .collect(),
        stop_strings: req.stop.clone(),
        decoding,
    };
    let (gen, text) = generator.generate_text(tokenizer, &prompt, &opts, |_| {})?;
    Ok(Generation {
        text,
        reasoning: None,
        finish_reason: Some(
            if gen.finish == FinishReason::MaxTokens {
                "length"
            } else {
                "stop"
            }
            .into(),
        ),
        completion_tokens: Some(gen.tokens.len() as u64),
    })
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
            tokio::task::spawn_blocking(move || run(&inner.0, &inner.1, decoding, &req))
                .await
                .context("local model worker")?
        })
    }
}
