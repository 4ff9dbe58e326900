//! `cargo run --release -p model -- <command>`: logits, generate, serve, info,
//! random-checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use model::generate::{generate_text, Decoding, GenerateOptions};
use model::penalties::Penalties;
use model::precision::parse_float_dtype;
use model::random::{write_random_checkpoint, StoreDtype};
use model::MatrixFormat;
use model::{ChatOptions, DeepSeek, Message, ModelConfig, Precision, SamplingParams, Tokenizer};

#[derive(Parser)]
#[command(about = "DeepSeek-V2/V3/R1 inference from HF checkpoints", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantTo {
    Q8,
    Q4,
    Q4k,
    Q6k,
    Q5,
    Q5k,
    Q3k,
    Q2k,
}

impl From<QuantTo> for linear::QuantFormat {
    fn from(to: QuantTo) -> Self {
        match to {
            QuantTo::Q8 => linear::QuantFormat::Q8,
            QuantTo::Q4 => linear::QuantFormat::Q4,
            QuantTo::Q4k => linear::QuantFormat::Q4K,
            QuantTo::Q6k => linear::QuantFormat::Q6K,
            QuantTo::Q5 => linear::QuantFormat::Q5,
            QuantTo::Q5k => linear::QuantFormat::Q5K,
            QuantTo::Q3k => linear::QuantFormat::Q3K,
            QuantTo::Q2k => linear::QuantFormat::Q2K,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Store {
    F32,
    Bf16,
    Fp8,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Checkpoint: an HF directory (config.json + safetensors) or a llama.cpp GGUF file
    /// (architecture deepseek2; its block formats are kept as stored by default).
    #[arg(long)]
    model: PathBuf,
    /// Compute dtype (activations, latent cache, norms): f32, bf16 or f16. Default: f32 on the
    /// CPU (exact, and candle's CPU bf16 GEMM is slow, see benchmarks/README.md), bf16 with
    /// --cuda (half the memory; V2-Lite in f32 would need ~63 GB of GPU memory).
    #[arg(long, value_parser = parse_float_dtype)]
    dtype: Option<DType>,
    /// Format the weight matrices are kept in: f32, bf16, f16, fp8 (an FP8 checkpoint's e4m3
    /// blocks as shipped), q8, q4, q4k, q6k, q5, q5k, q3k or q2k (8/4/6/5/3/2-bit groups
    /// quantised at load; q4k, q6k, q5, q5k, q3k and q2k are GGUF's Q4_K, Q6_K, Q5_1, Q5_K, Q3_K
    /// and Q2_K, 4.5, 6.56, 6, 5.5, 3.44 and 2.63 bits per weight in a file), gguf (a GGUF file's
    /// blocks as stored). Default: on the CPU, a GGUF file's blocks as stored, and with f32
    /// compute the checkpoint's own bf16/f16/FP8, exact, so decode reads the fewest bytes that
    /// give the checkpoint's model; otherwise the compute dtype.
    #[arg(long)]
    matrices: Option<MatrixFormat>,
    /// Run on the first CUDA device (needs `--features cuda`).
    #[arg(long)]
    cuda: bool,
    /// Route and dispatch MoE layers with device-generic tensor ops on the CPU too, with the
    /// matrices in the compute dtype unless --matrices says otherwise: the path `--cuda` takes
    /// (no host copy), slower on the CPU; for checking that path without a GPU.
    #[arg(long)]
    device_dispatch: bool,
    /// Keep weight matrices in ordinary 4 KiB pages (default: transparent huge pages, which
    /// spare decode a TLB miss per 4 KiB of weights, with the heap the load copies into
    /// advised before it is touched, so the copies are faulted in as huge pages; values are
    /// the same either way).
    #[arg(long)]
    no_huge_pages: bool,
    /// Copy FP8 weights out of the checkpoint's memory map into the process (default: use them
    /// in place, as shipped: no copy at load, pages shared through the page cache).
    #[arg(long)]
    no_mmap: bool,
    /// Multiply bf16 matrices with activations rounded to bf16 (HF's and llama.cpp's bf16
    /// arithmetic; `vdpbf16ps` on AVX512-BF16 CPUs, faster for batched decode; AMX tiles on
    /// AMX CPUs, 1.7-2.9x the default's prefill on a Sapphire Rapids VM) instead of f32
    /// products of the exact bf16 weights (the default).
    #[arg(long)]
    bf16_activations: bool,
    /// Quantise the output head at load to q8, q4, q4k, q6k, q5, q5k, q3k or q2k (like
    /// llama.cpp's
    /// `--output-tensor-type`): a decode step reads the whole head, so this reads fewer bytes
    /// per token, at the head's quantisation error on every logit. Default: the head as the
    /// other matrices are kept (q8 when --matrices is q8, q4 or q5, q6k under q4k, q5k, q3k and
    /// q2k, like llama.cpp's K-quant mixes).
    #[arg(long)]
    head: Option<linear::QuantFormat>,
    /// Longest block of prompt tokens one pass through the layers takes; longer prompts go
    /// through in chunks over the cache (same results, activation memory bounded by the chunk).
    #[arg(long, default_value_t = model::DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Sparse attention with a fixed pattern instead of dense attention in every layer
    /// (generate, logits): a comma-separated union of `local:WINDOW`,
    /// `block:SIZE[:SINK[:RECENT]]` and `random:KEYS[:SEED]`, e.g. `local:512,block:64:1:0`.
    /// An APPROXIMATION for models not trained with it (outputs change; benchmarks/README.md
    /// measures the logit KL against dense). Not for V3.2 checkpoints (their indexer picks
    /// the keys) nor `serve`.
    #[arg(long, value_parser = parse_sparse)]
    sparse: Option<mla::SparsePattern>,
}

fn parse_sparse(s: &str) -> std::result::Result<mla::SparsePattern, String> {
    s.parse().map_err(|e: mla::MlaError| e.to_string())
}

impl ModelArgs {
    /// Where tokenizer.json is looked for by default: the checkpoint directory, or the
    /// directory holding a GGUF file (this reader does not build a tokenizer from GGUF
    /// metadata).
    fn load(&self) -> Result<DeepSeek> {
        let device = if self.cuda {
            Device::new_cuda(0).context(if cfg!(feature = "cuda") {
                "CUDA device 0: no usable GPU and driver (libcuda.so.1) on this machine"
            } else {
                "--cuda: this binary was built without CUDA (build with --features cuda)"
            })?
        } else {
            Device::Cpu
        };
        if self.prefill_chunk == 0 {
            bail!("--prefill-chunk must be at least 1");
        }
        let huge_pages = !self.no_huge_pages;
        if huge_pages && !self.cuda {
            // What the load copies lands in 2 MiB pages from the first touch (see the module).
            let bytes = model::host_memory::checkpoint_bytes(&self.model);
            model::host_memory::reserve_huge_page_heap(bytes);
        }
        let dtype = self
            .dtype
            .unwrap_or(if self.cuda { DType::BF16 } else { DType::F32 });
        let mut model = DeepSeek::load_with(&self.model, &device, |checkpoint| {
            match self.matrices {
                Some(m) => Precision::mixed(dtype, m),
                // As on a GPU: matrices in the compute dtype (FP8 dequantised once at load).
                None if self.device_dispatch => Precision::mixed(dtype, dtype),
                None => Precision::auto(checkpoint, dtype, &device),
            }
            .with_huge_pages(huge_pages)
            .with_mmap(!self.no_mmap)
            .with_bf16_activations(self.bf16_activations)
            .with_head(self.head)
        })?;
        if self.device_dispatch {
            model.use_device_dispatch()?;
        }
        model.prefill_chunk = self.prefill_chunk;
        if self.sparse.is_some() && model.config().is_dsa() {
            bail!(
                "--sparse: {} is a DeepSeek-V3.2 checkpoint, whose indexer selects the keys; \
                 fixed patterns are for dense-attention models",
                self.model.display()
            );
        }
        model.sparse = self.sparse.clone();
        Ok(model)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Reasoning {
    /// On when the chat template mentions `<think>` (R1).
    Auto,
    /// Always (an R1 checkpoint whose template does not say so).
    On,
    /// Never: replies come back whole in `content`.
    Off,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Directory with tokenizer.json (+ tokenizer_config.json); default: the one beside the
    /// checkpoint, else the tokenizer inside a GGUF file. Without one, only `/v1/completions`
    /// with token-id prompts is served.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A Jinja chat template file to use instead of the tokenizer's (vLLM's and llama-server's
    /// `--chat-template`): e.g. one that shows `tools` to the model, which DeepSeek-V3's own
    /// template does not.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests.
    #[arg(long)]
    api_key: Option<String>,
    /// The model name clients use (default: the --model path as given, as vLLM does).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Latent-cache budget in GiB (in the compute dtype).
    #[arg(long, conflicts_with = "cache_tokens")]
    cache_gb: Option<f64>,
    /// Latent-cache budget in tokens over all sequences (default: 262144).
    #[arg(long)]
    cache_tokens: Option<usize>,
    /// Tokens per cache page.
    #[arg(long, default_value_t = model::EngineConfig::default().page_tokens)]
    page_tokens: usize,
    /// Requests waiting for admission at most; more get 429 with Retry-After.
    #[arg(long, default_value_t = model::EngineConfig::default().max_waiting)]
    max_waiting: usize,
    /// Batch each step as one pass (faster at high concurrency; outputs then depend on the
    /// batch up to rounding).
    #[arg(long)]
    no_batch_invariant: bool,
    /// `max_tokens` for requests that leave it out (the engine reserves cache for it).
    #[arg(long, default_value_t = 4096)]
    default_max_tokens: usize,
    /// R1 reasoning split (`reasoning_content`) and `<think>\n` prefill for chat.
    #[arg(long, value_enum, default_value = "auto")]
    reasoning: Reasoning,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Origins browsers may call the API from (CORS), comma-separated: `*` for any (vLLM's
    /// and llama-server's default), '' for none.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    allowed_origins: Vec<String>,
    /// Seconds a client may stay silent while sending a request (its head, or between body
    /// chunks) before the connection is closed (408 mid-body); also how long an idle
    /// keep-alive connection is kept.
    #[arg(long, default_value = "30", value_parser = positive_seconds)]
    read_timeout: std::time::Duration,
}

/// A positive number of seconds that a `Duration` holds.
fn positive_seconds(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("expected a positive number of seconds, found {s:?}"))
}

#[derive(Subcommand)]
enum Command {
    /// One causal prefill; writes f32 `logits` [T, vocab] to a safetensors file.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Streams generated text; prints prefill and decode tokens/s at the end.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Directory with tokenizer.json (+ tokenizer_config.json); default: the one beside
        /// the checkpoint, else the tokenizer inside a GGUF file.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the chat template as a user message (R1: ends with `<think>\n`).
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the prompt.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// With --chat: a Jinja chat template file to use instead of the tokenizer's (as
        /// `serve --chat-template`).
        #[arg(long, requires = "chat")]
        chat_template: Option<PathBuf>,
        /// Token budget.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Temperature (0: greedy). Default: 0.6 with --chat (R1's recommendation), else 0.
        #[arg(long)]
        temperature: Option<f32>,
        /// Nucleus mass. Default: 0.95 with --chat, else 1.
        #[arg(long)]
        top_p: Option<f32>,
        /// Keep the k most likely tokens (0: off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop strings (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Divides positive logits of tokens already in the prompt or output by this and
        /// multiplies negative ones (1: off; HF's `repetition_penalty`).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Subtracted from the logit of every token the output already holds ([-2, 2]).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        presence_penalty: f32,
        /// Subtracted per occurrence in the output so far ([-2, 2]).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        frequency_penalty: f32,
        /// Speculative decoding with the checkpoint's MTP modules (drafts verified by the main
        /// model; greedy output identical, sampled output distribution unchanged; stop strings
        /// and the token budget apply as without it). Adds the acceptance rate to the summary.
        #[arg(long)]
        mtp: bool,
    },
    /// An OpenAI-compatible HTTP server (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/models`, `/health`, `/metrics`) over the continuous-batching engine. The model
    /// flag `--prefill-chunk` also sets the engine's prefill chunk. SIGTERM / Ctrl-C: stop
    /// admitting (503), finish the requests in flight, exit; a second signal exits at once.
    Serve(Box<ServeArgs>),
    /// Parameters, layer plan, KV-cache bytes per token and memory per dtype (of a GGUF file
    /// also its tensors by type).
    Info {
        /// Checkpoint directory, config.json or GGUF file.
        #[arg(long)]
        model: PathBuf,
    },
    /// Writes an HF checkpoint as a GGUF file with 8-bit (Q8_0), 4-bit (Q4_1, or Q4_K with
    /// Q4_1 for rows that are not whole 256-value superblocks), 6-bit (Q6_K), 5-bit (Q5_1, or
    /// Q5_K with Q5_1 for partial superblocks), 3-bit (Q3_K) or 2-bit (Q2_K; both with Q4_1
    /// for partial superblocks) projections: the values `--matrices
    /// q8|q4|q4k|q6k|q5|q5k|q3k|q2k` computes at load, so `--model OUT.gguf` reloads them
    /// without requantising; llama.cpp reads the file too (no tokenizer inside: pass
    /// `--tokenizer`). One tensor in memory at a time.
    Quantize {
        /// Source checkpoint directory (safetensors; FP8 is dequantised first).
        #[arg(long)]
        model: PathBuf,
        /// q8, q4, q4k, q6k, q5, q5k, q3k or q2k.
        #[arg(long, value_enum)]
        to: QuantTo,
        /// Output GGUF file (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a random checkpoint of any config in the release layout.
    RandomCheckpoint {
        /// A config.json.
        #[arg(long)]
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Storage dtype.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: Store,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    // Large tensors reuse freed heap pages instead of fresh mappings (see the module).
    model::host_memory::retain_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Logits { model, tokens, out } => logits(&model, &tokens, &out),
        Command::Generate {
            model,
            tokenizer,
            prompt,
            chat,
            system,
            chat_template,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            stop,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            mtp,
        } => {
            let defaults = if chat {
                SamplingParams::r1_chat(seed)
            } else {
                SamplingParams::greedy()
            };
            let sampling = SamplingParams {
                temperature: temperature.unwrap_or(defaults.temperature),
                top_p: top_p.unwrap_or(defaults.top_p),
                top_k,
                seed,
            };
            let chat = chat.then_some(Chat {
                system: system.as_deref(),
                template: chat_template.as_deref(),
            });
            run_generate(
                &model,
                tokenizer.as_deref(),
                &prompt,
                chat,
                GenerateOptions {
                    max_new_tokens: max_tokens,
                    sampling,
                    penalties: Penalties {
                        presence: presence_penalty,
                        frequency: frequency_penalty,
                        repetition: repetition_penalty,
                        logit_bias: vec![],
                    },
                    stop_tokens: vec![],
                    stop_strings: stop,
                    decoding: if mtp { Decoding::Mtp } else { Decoding::Plain },
                },
            )
        }
        Command::Serve(args) => serve(&args),
        Command::Info { model } => info(&model),
        Command::Quantize { model, to, out } => quantize(&model, to, &out),
        Command::RandomCheckpoint {
            config,
            out,
            dtype,
            seed,
        } => random(&config, &out, dtype, seed),
    }
}

fn logits(args: &ModelArgs, tokens: &[u32], out: &Path) -> Result<()> {
    let model = args.load()?;
    let logits = model.logits(tokens)?;
    let mut tensors = HashMap::from([("logits".to_string(), logits)]);
    // Row j: the depth-1 MTP module on (main hidden state j, token j + 1): predicts token j + 2.
    if let Some(mtp_logits) = model::mtp::mtp_logits(&model, tokens)? {
        eprintln!(
            "checkpoint has MTP modules: writing mtp_logits {:?}",
            mtp_logits.dims()
        );
        tensors.insert("mtp_logits".to_string(), mtp_logits);
    }
    candle_core::safetensors::save(&tensors, out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote logits {:?} to {}",
        tensors["logits"].dims(),
        out.display()
    );
    Ok(())
}

/// `generate --chat`: the prompt as a user message, after an optional system message, in the
/// tokenizer's chat template or another one.
struct Chat<'a> {
    system: Option<&'a str>,
    template: Option<&'a Path>,
}

/// The checkpoint's tokenizer (`dir`, else the one beside it or inside its GGUF file), with the
/// chat template of the file `template` in place of its own.
fn load_tokenizer(
    model: &Path,
    dir: Option<&Path>,
    template: Option<&Path>,
) -> Result<Option<Tokenizer>> {
    let tokenizer = Tokenizer::for_model(model, dir)?;
    let Some(path) = template else {
        return Ok(tokenizer);
    };
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("reading --chat-template {}", path.display()))?;
    let t = tokenizer.context("--chat-template needs a tokenizer")?;
    let t = t
        .with_chat_template(&source)
        .with_context(|| format!("--chat-template {}", path.display()))?;
    Ok(Some(t))
}

fn run_generate(
    args: &ModelArgs,
    tokenizer_dir: Option<&Path>,
    prompt: &str,
    chat: Option<Chat>,
    mut opts: GenerateOptions,
) -> Result<()> {
    // Before the (possibly long) load: generate would refuse them after it.
    // The CLI sets no logit bias, so no token id needs the vocabulary's size yet.
    opts.check(0)?;
    let template = chat.as_ref().and_then(|c| c.template);
    let tokenizer = load_tokenizer(&args.model, tokenizer_dir, template)?.with_context(|| {
        format!(
            "no tokenizer for {}: no tokenizer.json beside it (nor one inside a GGUF file); \
             pass --tokenizer DIR",
            args.model.display()
        )
    })?;
    // Rendered before the load too, so that a template error costs no wait.
    let ids = match &chat {
        Some(chat) => {
            let opts = ChatOptions {
                add_generation_prompt: true,
                think_prefill: true,
                ..ChatOptions::default()
            };
            let system = chat.system.map(|s| Message::new("system", s));
            let messages: Vec<Message> = system
                .into_iter()
                .chain([Message::new("user", prompt)])
                .collect();
            tokenizer.encode_chat(&messages, opts)?
        }
        None => tokenizer.encode(prompt)?,
    };
    let model = args.load()?;
    opts.stop_tokens.extend(
        model
            .config()
            .eos_token_ids
            .iter()
            .copied()
            .chain(tokenizer.eos_id()),
    );
    let mut stdout = std::io::stdout();
    let (gen, _) = generate_text(&model, &tokenizer, &ids, &opts, |piece| {
        let _ = stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush());
    })?;
    println!();
    let mtp = gen.mtp.as_ref().map_or(String::new(), |s| {
        format!(
            "; MTP acceptance {:.1}% ({:.2} tokens per step)",
            100.0 * s.acceptance_rate(),
            s.tokens_per_step()
        )
    });
    eprintln!(
        "prompt {} tokens, prefill {:.1} tok/s; generated {} tokens, decode {:.2} tok/s ({:?}){mtp}",
        gen.prompt_tokens,
        gen.prefill_tokens_per_sec(),
        gen.tokens.len(),
        gen.decode_tokens_per_sec(),
        gen.finish
    );
    // What the decode rate means for memory bandwidth (weights only; the latent cache and
    // activations come on top): scripts/gpu-check reads this line.
    let (weight_bytes, _) = model.decode_weight_bytes();
    eprintln!(
        "decode reads {weight_bytes} bytes of weights per token ({:.1} GB/s at the decode rate)",
        weight_bytes as f64 * gen.decode_tokens_per_sec() / 1e9
    );
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<()> {
    use model::server::{self, SamplingDefaults, ServerConfig};
    use model::{Engine, EngineConfig};

    let tokenizer = load_tokenizer(
        &args.model.model,
        args.tokenizer.as_deref(),
        args.chat_template.as_deref(),
    )?;
    if tokenizer.is_none() {
        tracing::warn!(
            "no tokenizer for {} (no tokenizer.json beside it, none inside a GGUF file): \
             serving /v1/completions with token-id prompts only",
            args.model.model.display()
        );
    }
    if args.model.sparse.is_some() {
        bail!("--sparse is not supported by serve (the engine runs dense attention)");
    }
    let model = args.model.load()?;
    let cfg = model.config();
    if let Some(t) = &tokenizer {
        if t.vocab_size() > cfg.vocab_size {
            tracing::warn!(
                "the tokenizer has {} ids, the model {}: prompts with the extra ids are refused",
                t.vocab_size(),
                cfg.vocab_size
            );
        }
    }
    let defaults = EngineConfig::default();
    let cache_tokens = match (args.cache_tokens, args.cache_gb) {
        (Some(t), _) => t,
        (None, Some(gb)) => {
            let per_token =
                mla::KvLayout::mla(&cfg.mla).bytes_per_token(cfg.num_hidden_layers, model.dtype());
            (gb * (1u64 << 30) as f64 / per_token as f64) as usize
        }
        (None, None) => defaults.cache_tokens,
    };
    let engine_config = EngineConfig {
        max_running: args.max_running,
        cache_tokens,
        page_tokens: args.page_tokens,
        prefill_chunk: args.model.prefill_chunk,
        max_waiting: args.max_waiting,
        batch_invariant: !args.no_batch_invariant,
    };
    let reasoning = match args.reasoning {
        Reasoning::On => true,
        Reasoning::Off => false,
        Reasoning::Auto => tokenizer.as_ref().is_some_and(server::template_thinks),
    };
    let config = ServerConfig {
        model_name: args
            .served_model_name
            .clone()
            .unwrap_or_else(|| args.model.model.display().to_string()),
        api_key: args.api_key.clone(),
        reasoning,
        default_max_tokens: args.default_max_tokens,
        sampling: SamplingDefaults::from_generation_config(&args.model.model)?,
        max_body_bytes: args.max_body_mb << 20,
        read_timeout: args.read_timeout,
        allowed_origins: args
            .allowed_origins
            .iter()
            .filter(|o| !o.trim().is_empty())
            .cloned()
            .collect(),
        ..ServerConfig::new("")
    };
    tracing::info!(
        model = %config.model_name,
        reasoning,
        cache_tokens,
        pages = engine_config.total_pages(),
        "starting the engine"
    );
    let engine = Engine::start(
        std::sync::Arc::new(model),
        tokenizer.map(std::sync::Arc::new),
        engine_config,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        tracing::info!(%addr, model = %config.model_name, "serving");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            termination().await;
            let _ = stop.send(());
            termination().await;
            eprintln!("second signal: exiting without draining");
            std::process::exit(130);
        });
        server::serve(listener, engine, config, async {
            let _ = stopped.await;
        })
        .await?;
        eprintln!("server stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn termination() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn info(path: &Path) -> Result<()> {
    let cfg_path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let is_gguf = model::gguf::is_gguf_file(path);
    let (cfg, types) = if is_gguf {
        let checkpoint = model::checkpoint::Checkpoint::open(path)?;
        (checkpoint.config()?, Some(gguf_types(&checkpoint)))
    } else {
        (ModelConfig::from_file(&cfg_path)?, None)
    };
    let (total, active) = model::plan::parameter_counts(&cfg);
    println!(
        "{}: {:?}, {} layers (+{} MTP), hidden {}, vocab {}",
        cfg_path.display(),
        cfg.arch,
        cfg.num_hidden_layers,
        cfg.num_nextn_predict_layers,
        cfg.hidden_size,
        cfg.vocab_size
    );
    println!(
        "parameters: {:.3} B total, {:.3} B active per token (MTP modules excluded)",
        total as f64 / 1e9,
        active as f64 / 1e9
    );
    if let Some(types) = types {
        println!("tensors (as served, experts one each): {types}");
        // What `generate` / `serve` would tokenize with when given no --tokenizer.
        let tokenizer = match Tokenizer::for_model(path, None) {
            Ok(Some(t)) => format!(
                "{} tokens, chat template {}",
                t.vocab_size(),
                if t.chat_template_source().is_some() {
                    "yes"
                } else {
                    "no"
                }
            ),
            Ok(None) => "none (pass --tokenizer DIR)".into(),
            Err(e) => format!("unusable: {e}"),
        };
        println!("tokenizer (beside the file, else inside it): {tokenizer}");
    }
    let dense: Vec<usize> = (0..cfg.num_hidden_layers)
        .filter(|&l| !cfg.is_moe_layer(l))
        .collect();
    println!(
        "layer plan: dense FFN in layers {dense:?}, MoE in the other {}",
        cfg.num_hidden_layers - dense.len()
    );
    if let Some(m) = &cfg.moe {
        let g = &m.gate;
        println!(
            "routing: {} routed experts (top-{}, {}/{}, {} groups keep {}), {} shared, width {}, scale {}",
            g.n_routed_experts, g.top_k, g.scoring, g.topk_method, g.n_group, g.topk_group, m.n_shared_experts, m.moe_intermediate_size, g.routed_scaling_factor
        );
    }
    if let Some(ix) = &cfg.indexer {
        println!(
            "sparse attention (DSA): lightning indexer {} heads x {}, top-{} keys per query; \
             its key cache adds {} B/token in bf16 over the main layers",
            ix.n_heads,
            ix.head_dim,
            ix.topk,
            ix.head_dim * 2 * cfg.num_hidden_layers
        );
    }
    for dtype in [DType::BF16, DType::F32] {
        let mla = mla::KvLayout::mla(&cfg.mla).bytes_per_token(cfg.num_hidden_layers, dtype);
        let mha = mla::KvLayout::mha(&cfg.mla).bytes_per_token(cfg.num_hidden_layers, dtype);
        println!(
            "KV cache per token ({dtype:?}): MLA {mla} B, MHA would need {mha} B ({:.1}x)",
            mha as f64 / mla as f64
        );
    }
    for (name, bytes) in [("f32", 4.0), ("bf16/f16", 2.0), ("fp8", 1.0)] {
        println!("weights in {name}: {:.2} GB", total as f64 * bytes / 1e9);
    }
    Ok(())
}

/// A GGUF file's tensors counted by stored type, with the format each block type is held in
/// (or that candle's kernels multiply it).
fn gguf_types(checkpoint: &model::checkpoint::Checkpoint) -> String {
    let mut types: std::collections::BTreeMap<String, usize> = Default::default();
    for meta in checkpoint.tensors().values() {
        let name = match meta.ggml {
            Some(ty) => {
                let held = match linear::QuantMatrix::format_of_ggml(ty) {
                    Some(f) => format!("held as {f}"),
                    None => "candle's kernels".into(),
                };
                format!("{} ({held})", linear::ggml_type_name(ty))
            }
            None => format!("{:?}", meta.dtype),
        };
        *types.entry(name).or_default() += 1;
    }
    let list: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    list.join(", ")
}

fn quantize(model: &Path, to: QuantTo, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; choose another --out", out.display());
    }
    let checkpoint = model::checkpoint::Checkpoint::open(model)?;
    let format = to.into();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors").expect("template"),
    );
    let partial = out.with_extension("gguf.partial");
    let written = model::gguf::write_quantized(&checkpoint, format, &partial, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    });
    bar.finish_and_clear();
    // Nothing half-written is left under the output's name.
    let written = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    std::fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))?;
    eprintln!("wrote {} ({:.2} GB)", out.display(), written as f64 / 1e9);
    Ok(())
}

fn random(config: &Path, out: &Path, dtype: Store, seed: u64) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    if out.join("config.json").exists() {
        bail!(
            "{} already holds a checkpoint; choose another --out",
            out.display()
        );
    }
    let store = match dtype {
        Store::F32 => StoreDtype::F32,
        Store::Bf16 => StoreDtype::Bf16,
        Store::Fp8 => StoreDtype::Fp8,
    };
    let bar = ProgressBar::new(0)
        .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("template"));
    write_random_checkpoint(&text, out, store, seed, |name, i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    })
    .with_context(|| format!("config {}", config.display()))?;
    bar.finish_and_clear();
    eprintln!("wrote {}", out.display());
    Ok(())
}
