//! The DeepSeek network: embedding, decoder layers (MLA + dense or MoE FFN), final RMSNorm and
//! head. Attention comes from the `mla` crate, FFNs from the `moe` crate, RoPE from `rope-yarn`;
//! this module only wires them together.
//!
//! Dimension legend: `T` tokens of one sequence, `C` hidden size, `V` vocabulary.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Module, RmsNorm, VarBuilder};
use mla::{AttentionPath, LatentKvCache, Mla, PackedPart};
use moe::{Dispatch, Mlp, Moe};
use rope_yarn::RopeCache;

use crate::checkpoint::{Checkpoint, Precision};
use crate::config::{FfnKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::plan::expected_tensors;

/// A decoder layer's FFN.
pub enum Ffn {
    /// Dense SwiGLU (the first `first_k_dense_replace` layers).
    Dense(Mlp),
    /// Routed + shared experts.
    Moe(Moe),
}

impl Ffn {
    fn load(cfg: &ModelConfig, layer: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg.ffn_kind(layer) {
            FfnKind::Dense => Ffn::Dense(Mlp::load(vb, cfg.hidden_size, cfg.intermediate_size)?),
            FfnKind::Moe => Ffn::Moe(Moe::load(vb, cfg.moe.as_ref().expect("MoE layer"))?),
        })
    }

    /// `[T, C] -> [T, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Dispatch::Auto)
    }

    /// `[T, C] -> [T, C]` with routed experts run as `dispatch` says (dense layers ignore it).
    pub fn forward_with(&self, x: &Tensor, dispatch: Dispatch) -> Result<Tensor> {
        Ok(match self {
            Ffn::Dense(m) => m.forward(x)?,
            Ffn::Moe(m) => m.forward_with(x, dispatch)?,
        })
    }
}

/// One pre-norm decoder block: `h = x + attn(norm(x)); out = h + ffn(norm(h))`.
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Mla,
    post_attention_layernorm: RmsNorm,
    mlp: Ffn,
}

impl DecoderLayer {
    /// Loads layer `layer` (a main layer or an MTP module's block) from `vb` at its prefix.
    pub fn load(cfg: &ModelConfig, layer: usize, vb: VarBuilder) -> Result<Self> {
        let (c, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: candle_nn::rms_norm(c, eps, vb.pp("input_layernorm"))?,
            self_attn: Mla::load(&vb.pp("self_attn"), cfg.mla.clone())?,
            post_attention_layernorm: candle_nn::rms_norm(
                c,
                eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Ffn::load(cfg, layer, vb.pp("mlp"))?,
        })
    }

    /// `x` `[1, T, C]` at positions `start..start + T`; appends to `cache` when given.
    pub fn forward(
        &self,
        x: &Tensor,
        start: usize,
        rope: &mut RopeCache,
        cache: Option<&mut mla::LayerCache>,
        path: AttentionPath,
    ) -> Result<Tensor> {
        let a =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, start, rope, cache, path)?;
        self.finish(x, &a, Dispatch::Auto)
    }

    /// Several sequences' new tokens back to back in `x` `[1, N, C]`, each over its own cache
    /// ([`Mla::forward_packed`]); the norms and the FFN run once over all `N` rows, routed
    /// experts as `dispatch` says.
    pub fn forward_packed(
        &self,
        x: &Tensor,
        parts: &mut [PackedPart<'_>],
        rope: &mut RopeCache,
        dispatch: Dispatch,
    ) -> Result<Tensor> {
        let a = self
            .self_attn
            .forward_packed(&self.input_layernorm.forward(x)?, parts, rope)?;
        self.finish(x, &a, dispatch)
    }

    /// The residual around attention, then the FFN block.
    fn finish(&self, x: &Tensor, attn: &Tensor, dispatch: Dispatch) -> Result<Tensor> {
        let h = (x + attn)?;
        let (b, t, c) = h.dims3()?;
        let f = self.mlp.forward_with(
            &self
                .post_attention_layernorm
                .forward(&h)?
                .reshape((b * t, c))?,
            dispatch,
        )?;
        Ok((h + f.reshape((b, t, c))?)?)
    }

    /// The attention block.
    pub fn attention(&self) -> &Mla {
        &self.self_attn
    }

    /// The FFN.
    pub fn ffn(&self) -> &Ffn {
        &self.mlp
    }
}

/// Per-sequence state: the latent KV cache of every layer, the shared RoPE table and the
/// number of tokens processed.
pub struct Session {
    /// One latent cache per decoder layer.
    pub kv: LatentKvCache,
    /// cos/sin table grown on demand.
    pub rope: RopeCache,
}

impl Session {
    /// Tokens held by the cache.
    pub fn len(&self) -> usize {
        self.kv
            .layer(0)
            .ok()
            .and_then(|l| l.uniform_len())
            .unwrap_or(0)
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rolls the cache back to `pos` tokens (speculative decoding rejects a suffix).
    pub fn truncate(&mut self, pos: usize) {
        self.kv.truncate(pos);
    }
}

/// What one forward pass returns.
pub struct Output {
    /// `[T, V]` f32 logits.
    pub logits: Tensor,
    /// `[T, C]` hidden states after the final norm (what MTP modules take).
    pub hidden: Tensor,
}

/// A DeepSeek-V2/V3 causal language model.
pub struct DeepSeek {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `lm_head.weight` `[V, C]`.
    lm_head: Tensor,
    precision: Precision,
    device: Device,
    checkpoint: Arc<Checkpoint>,
    /// Which MLA path runs a forward over `T` new tokens.
    pub paths: PathPolicy,
    /// Longest block of tokens one pass through the layers takes: longer inputs go through in
    /// chunks, each attending to the cache plus itself, so activation memory is bounded by
    /// the chunk, not the prompt ([`DEFAULT_PREFILL_CHUNK`]; results equal one pass).
    pub prefill_chunk: usize,
}

/// Default [`DeepSeek::prefill_chunk`]: long enough that per-pass overheads are amortised,
/// short enough that a chunk's activations (`T x` the widest layer) stay small. Measured on
/// V2-Lite-4L, 8K-token prompt (`benchmarks/README.md`): chunks of 512 / 1024 / 2048 / 4096
/// prefill at 126 / 142 / 164 / 174 tok/s with 0 / +0.10 / +0.36 / +0.74 GB of peak RSS.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

/// Which MLA path runs a forward over `T` new tokens.
///
/// Both defaults read the paged latent cache in place. Blocks of up to 8 tokens (decode steps,
/// MTP verification) take the absorbed path: scores over the latent (`T·H·(2R + r)` per key)
/// page by page, one softmax, the weighted sum page by page; prefill chunks take the
/// flash-style path (online softmax over key blocks, choosing the absorbed or expanded
/// formulation per call), which never materialises the `T x S` scores. Measured on a
/// V2-Lite-shaped layer (`mla_decode`, `benchmarks/README.md`), a decode step at 8K tokens
/// of context took ~7 ms absorbed against ~8-11 ms on the flash path (its per-block online
/// softmax costs more small operations than it saves at `T = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Blocks of at most `short_max` tokens.
    pub short: AttentionPath,
    /// Longer blocks.
    pub long: AttentionPath,
    /// The largest block that counts as short.
    pub short_max: usize,
}

impl PathPolicy {
    /// The path for a block of `tokens` new tokens.
    pub fn for_tokens(&self, tokens: usize) -> AttentionPath {
        if tokens <= self.short_max {
            self.short
        } else {
            self.long
        }
    }
}

impl Default for PathPolicy {
    /// Absorbed up to 8 tokens, flash-style above.
    fn default() -> Self {
        Self {
            short: AttentionPath::Absorbed,
            long: AttentionPath::Flash,
            short_max: 8,
        }
    }
}

impl DeepSeek {
    /// Loads `dir` (config.json + safetensors) on `device`, computing in a [`DType`] or a
    /// mixed [`Precision`] (e.g. f32 activations over bf16 matrices, the fast CPU decode
    /// setting). The checkpoint is validated against the configuration first: one error lists
    /// every missing, unexpected or mis-shaped tensor.
    pub fn load(dir: &Path, precision: impl Into<Precision>, device: &Device) -> Result<Self> {
        let precision = precision.into();
        Self::load_with(dir, device, |_| precision)
    }

    /// [`DeepSeek::load`] with [`Precision::auto`]: `compute` for the activations, and the
    /// matrices kept as the checkpoint stores them where that is faster (the CLI's default).
    pub fn load_auto(dir: &Path, compute: DType, device: &Device) -> Result<Self> {
        Self::load_with(dir, device, |checkpoint| {
            Precision::auto(checkpoint, compute, device)
        })
    }

    /// Opens and checks the checkpoint once, then builds the model in the precision `choose`
    /// picks from it (e.g. [`Precision::auto`] with huge pages turned off).
    pub fn load_with(
        dir: &Path,
        device: &Device,
        choose: impl FnOnce(&Checkpoint) -> Precision,
    ) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let checkpoint = Arc::new(Checkpoint::open(dir)?);
        let (plan, optional) = expected_tensors(&config);
        let expected: Vec<(String, Vec<usize>)> =
            plan.into_iter().map(|t| (t.name, t.shape)).collect();
        checkpoint.check(&expected, &optional)?;
        let precision = choose(&checkpoint);
        Self::from_checkpoint(config, checkpoint, precision, device)
    }

    /// Builds the model from an opened (and checked) checkpoint.
    pub fn from_checkpoint(
        config: ModelConfig,
        checkpoint: Arc<Checkpoint>,
        precision: impl Into<Precision>,
        device: &Device,
    ) -> Result<Self> {
        let precision = precision.into();
        let vb = checkpoint.var_builder(precision, device);
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_tokens = candle_nn::embedding(vocab, hidden, vb.pp("model.embed_tokens"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|l| DecoderLayer::load(&config, l, vb.pp(format!("model.layers.{l}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(hidden, config.rms_norm_eps, vb.pp("model.norm"))?;
        let lm_head = vb.pp("lm_head").get((vocab, hidden), "weight")?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            precision,
            device: device.clone(),
            checkpoint,
            paths: PathPolicy::default(),
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The checkpoint the weights came from (MTP modules load from it too).
    pub fn checkpoint(&self) -> &Arc<Checkpoint> {
        &self.checkpoint
    }

    /// Compute dtype (activations, cache, norms).
    pub fn dtype(&self) -> DType {
        self.precision.compute
    }

    /// Compute and matrix dtypes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The decoder layers.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// A fresh session (empty cache).
    pub fn new_session(&self) -> Result<Session> {
        let kv = LatentKvCache::new(
            &self.config.mla,
            self.layers.len(),
            1,
            self.dtype(),
            &self.device,
        )?;
        Ok(Session {
            kv,
            rope: RopeCache::new(self.config.mla.rope),
        })
    }

    /// Token embeddings `[1, T, C]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is out of range (vocab_size {vocab})"
            )));
        }
        if tokens.is_empty() {
            return Err(ModelError::Input("no tokens to process".into()));
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        Ok(self.embed_tokens.forward(&ids)?.to_dtype(self.dtype())?)
    }

    /// Runs `tokens` through the model after the session's cached tokens, appending them to
    /// the cache. Returns f32 logits and the final-normed hidden states of the new tokens.
    pub fn forward(&self, tokens: &[u32], session: &mut Session) -> Result<Output> {
        let hidden = self.hidden_states(tokens, session)?;
        let logits = self.head(&hidden)?;
        Ok(Output { logits, hidden })
    }

    /// Like [`DeepSeek::forward`] but applies the head to the last position only (logits
    /// `[1, V]`): what generation needs after a prefill. The head is the largest matrix, so
    /// this saves `(T - 1) · V · C` multiply-adds (39% of a 512-token V2-Lite-4L prefill).
    pub fn forward_last(&self, tokens: &[u32], session: &mut Session) -> Result<Output> {
        let hidden = self.hidden_states(tokens, session)?;
        let logits = self.head(&hidden.narrow(0, tokens.len() - 1, 1)?)?;
        Ok(Output { logits, hidden })
    }

    /// Final-normed hidden states `[T, C]` of `tokens`, appended to the session's cache, in
    /// chunks of at most [`DeepSeek::prefill_chunk`] tokens.
    pub fn hidden_states(&self, tokens: &[u32], session: &mut Session) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::Input("no tokens to process".into()));
        }
        let chunks = tokens
            .chunks(self.prefill_chunk.max(1))
            .map(|chunk| self.chunk_hidden_states(chunk, session))
            .collect::<Result<Vec<_>>>()?;
        match <[Tensor; 1]>::try_from(chunks) {
            Ok([one]) => Ok(one),
            Err(chunks) => Ok(Tensor::cat(&chunks, 0)?),
        }
    }

    /// One pass of `tokens` through every layer after the session's cached tokens.
    fn chunk_hidden_states(&self, tokens: &[u32], session: &mut Session) -> Result<Tensor> {
        let start = session.len();
        let path = self.paths.for_tokens(tokens.len());
        let mut x = self.embed(tokens)?;
        for (layer, cache) in self.layers.iter().zip(session.kv.layers_mut()) {
            x = layer.forward(&x, start, &mut session.rope, Some(cache), path)?;
        }
        Ok(self.norm.forward(&x)?.squeeze(0)?)
    }

    /// Final-normed hidden states `[N, C]` of several sequences in one pass: part `i` holds
    /// `tokens` that continue the sequence cached in `cache` (rows back to back in the order
    /// of `parts`), e.g. one decode token for each of many sequences plus a prefill chunk of
    /// another. The projections, norms and FFNs run once over all `N` rows; attention runs per
    /// sequence on the path [`DeepSeek::paths`] picks for its token count. `rope` is a table
    /// shared by every sequence (positions are absolute). No chunking: callers bound `N`.
    pub fn forward_packed(
        &self,
        parts: &mut [(&[u32], &mut LatentKvCache)],
        rope: &mut RopeCache,
        dispatch: Dispatch,
    ) -> Result<Tensor> {
        let tokens: Vec<u32> = parts.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let mut x = self.embed(&tokens)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let mut packed = parts
                .iter_mut()
                .map(|(t, cache)| {
                    Ok(PackedPart {
                        tokens: t.len(),
                        path: self.paths.for_tokens(t.len()),
                        cache: cache.layer_mut(l)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            x = layer.forward_packed(&x, &mut packed, rope, dispatch)?;
        }
        Ok(self.norm.forward(&x)?.squeeze(0)?)
    }

    /// Bytes one token of one sequence occupies in the latent cache over all layers.
    pub fn cache_bytes_per_token(&self) -> usize {
        let m = &self.config.mla;
        (m.kv_lora_rank + m.qk_rope_head_dim) * self.dtype().size_in_bytes() * self.layers.len()
    }

    /// An empty latent cache for one sequence with pages of `page_tokens` tokens (what
    /// [`DeepSeek::forward_packed`] takes; a [`Session`] holds one with the default pages).
    pub fn new_cache(&self, page_tokens: usize) -> Result<LatentKvCache> {
        Ok(LatentKvCache::new(
            &self.config.mla,
            self.layers.len(),
            1,
            self.dtype(),
            &self.device,
        )?
        .with_page_tokens(page_tokens)?)
    }

    /// The output head on final-normed hidden states `[T, C]` -> f32 `[T, V]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(linear::linear(hidden, &self.lm_head)?.to_dtype(DType::F32)?)
    }

    /// One causal prefill of `tokens` with no cache: f32 logits `[T, V]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut session = self.new_session()?;
        Ok(self.forward(tokens, &mut session)?.logits)
    }

    /// Logits of the last position as a `Vec<f32>`.
    pub fn last_logits(out: &Output) -> Result<Vec<f32>> {
        let t = out.logits.dim(0)?;
        Ok(out.logits.get(t - 1)?.to_vec1::<f32>()?)
    }

    /// Index of the largest logit of each row of `[T, V]` logits.
    pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
        Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }
}
