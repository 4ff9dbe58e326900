//! The DeepSeek network: embedding, decoder layers (MLA + dense or MoE FFN), final RMSNorm and
//! head. Attention comes from the `mla` crate, FFNs from the `moe` crate, RoPE from `rope-yarn`;
//! this module only wires them together. V3.2 layers run DeepSeek Sparse Attention
//! ([`Mla::forward_dsa_split`]): each layer's lightning [`Indexer`] picks every query's
//! top-`index_topk` cached keys and MLA attends to those only; the session keeps the indexer's
//! key caches beside the latent caches and rolls both back together.
//!
//! Dimension legend: `T` tokens of one sequence, `C` hidden size, `V` vocabulary.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Module, RmsNorm, VarBuilder};
use mla::{
    AttentionPath, Indexer, IndexerCache, LatentKvCache, LayerCache, Mla, PackedPart, SparsePattern,
};
use moe::{Dispatch, Mlp, Moe};
use rope_yarn::RopeCache;

use crate::checkpoint::{Checkpoint, Precision};
use crate::config::{FfnKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::plan::{expected_tensors, least_tensor_count};
use crate::precision::MatrixFormat;
use linear::{MapMatrix, Matrix, MatrixLoader};

/// A decoder layer's FFN.
pub enum Ffn {
    /// Dense SwiGLU (the first `first_k_dense_replace` layers).
    Dense(Mlp),
    /// Routed + shared experts.
    Moe(Moe),
}

impl Ffn {
    fn load(
        cfg: &ModelConfig,
        layer: usize,
        vb: VarBuilder,
        matrices: &dyn MatrixLoader,
    ) -> Result<Self> {
        Ok(match cfg.ffn_kind(layer) {
            FfnKind::Dense => Ffn::Dense(Mlp::load_with(
                vb,
                cfg.hidden_size,
                cfg.intermediate_size,
                matrices,
            )?),
            FfnKind::Moe => Ffn::Moe(Moe::load_with(
                vb,
                cfg.moe.as_ref().expect("MoE layer"),
                matrices,
            )?),
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

/// One pre-norm decoder block: `h = x + attn(norm(x)); out = h + ffn(norm(h))`, where `attn`
/// is dense MLA, or for V3.2 MLA over the keys the layer's indexer selects (DSA).
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Mla,
    /// V3.2: the lightning indexer (`self_attn.indexer`).
    indexer: Option<Indexer>,
    post_attention_layernorm: RmsNorm,
    mlp: Ffn,
}

impl DecoderLayer {
    /// Converts the attention projections and the FFN's matrices to `format` when it is a
    /// quantised one ([`MatrixFormat::Quant`]; other formats were chosen at load). The
    /// routers and the V3.2 indexer keep theirs.
    pub fn quantize(&mut self, format: MatrixFormat) -> Result<()> {
        let MatrixFormat::Quant(q) = format else {
            return Ok(());
        };
        self.map_matrices(&|m| m.quantize(q))
    }

    /// Replaces the attention projections and the FFN's matrices by `f` of them (a format
    /// conversion); the routers, `kv_b_proj` and the V3.2 indexer keep theirs.
    pub fn map_matrices(&mut self, f: &MapMatrix<'_>) -> Result<()> {
        self.self_attn.map_projections(f)?;
        match &mut self.mlp {
            Ffn::Dense(m) => m.map_matrices(f)?,
            Ffn::Moe(m) => m.map_matrices(f)?,
        }
        Ok(())
    }

    /// Backs the layer's matrices with transparent huge pages, taken together
    /// ([`linear::advise_matrices_huge_pages`]): those made after load (quantised, or relaid
    /// into panels) are in fresh allocations, which the loader's advice did not reach, and a
    /// routed expert's matrix alone is mostly too small for a 2 MiB page of its own, where
    /// the layer's experts, made one after another, fill whole pages together. Returns the
    /// bytes advised.
    pub fn advise_huge_pages(&self) -> usize {
        linear::advise_matrices_huge_pages(&self.matrices())
    }

    /// The matrices [`DecoderLayer::map_matrices`] replaces: the attention projections and
    /// the FFN's (every routed expert's and the shared experts').
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut all = self.self_attn.weights().projections();
        match &self.mlp {
            Ffn::Dense(m) => all.extend(m.matrices()),
            Ffn::Moe(m) => {
                let experts = m.experts();
                let shared = m.shared().into_iter();
                for mlp in (0..experts.len()).map(|e| experts.expert(e)).chain(shared) {
                    all.extend(mlp.matrices());
                }
            }
        }
        all
    }

    /// Brings a layer just read into `precision`'s form: its matrices quantised
    /// ([`DecoderLayer::quantize`]), advised into huge pages and set to multiply bf16-rounded
    /// activations where `precision` asks, and its experts stacked when `device_dispatch`
    /// ([`DecoderLayer::stack_experts`]). The one sequence for the main layers and the MTP
    /// modules' blocks alike.
    pub fn prepare(&mut self, precision: &Precision, device_dispatch: bool) -> Result<()> {
        self.quantize(precision.matrices)?;
        if precision.huge_pages {
            self.advise_huge_pages();
        }
        if precision.bf16_activations {
            self.map_matrices(&|m| Ok(m.with_bf16_activations()))?;
        }
        if device_dispatch {
            self.stack_experts()?;
        }
        Ok(())
    }

    /// Stacks the routed experts for device dispatch (a no-op for dense FFNs): routing and
    /// experts then run as device-generic tensor ops with no host copy ([`moe::device`]).
    pub fn stack_experts(&mut self) -> Result<()> {
        if let Ffn::Moe(m) = &mut self.mlp {
            m.stack_experts()?;
        }
        Ok(())
    }

    /// Loads layer `layer` (a main layer or an MTP module's block) from `vb` at its prefix.
    pub fn load(cfg: &ModelConfig, layer: usize, vb: VarBuilder) -> Result<Self> {
        Self::load_with(cfg, layer, vb, &linear::ThroughVarBuilder)
    }

    /// [`DecoderLayer::load`] with the projections obtained from `matrices`
    /// (`Checkpoint::matrix_loader`: FP8 weights used in place in the memory map).
    pub fn load_with(
        cfg: &ModelConfig,
        layer: usize,
        vb: VarBuilder,
        matrices: &dyn MatrixLoader,
    ) -> Result<Self> {
        let (c, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: candle_nn::rms_norm(c, eps, vb.pp("input_layernorm"))?,
            self_attn: Mla::load_with(&vb.pp("self_attn"), cfg.mla.clone(), matrices)?,
            indexer: cfg
                .indexer
                .as_ref()
                .map(|c| Indexer::load(&vb.pp("self_attn.indexer"), c.clone()))
                .transpose()?,
            post_attention_layernorm: candle_nn::rms_norm(
                c,
                eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Ffn::load(cfg, layer, vb.pp("mlp"), matrices)?,
        })
    }

    /// `x` `[1, T, C]` at positions `start..start + T`; appends to `cache` (and, in a DSA
    /// layer, the indexer keys to `index`) when given. A DSA layer takes both caches or
    /// neither; a dense layer takes no `index`.
    pub fn forward(
        &self,
        x: &Tensor,
        start: usize,
        rope: &mut RopeCache,
        cache: Option<&mut LayerCache>,
        index: Option<&mut IndexerCache>,
        path: AttentionPath,
    ) -> Result<Tensor> {
        let attend = Attend { path, sparse: None };
        Ok(self
            .forward_with_selection(x, start, rope, cache, index, attend)?
            .0)
    }

    /// [`DecoderLayer::forward`] attending as `attend` says, also returning a DSA layer's
    /// selection (the keys each new token attended to, [`SparsePattern::TopK`]; `None` for
    /// dense attention). A fixed pattern ([`Attend::sparse`]) applies to dense-attention
    /// layers only: a DSA layer given one is an error.
    pub fn forward_with_selection(
        &self,
        x: &Tensor,
        start: usize,
        rope: &mut RopeCache,
        cache: Option<&mut LayerCache>,
        index: Option<&mut IndexerCache>,
        attend: Attend<'_>,
    ) -> Result<(Tensor, Option<SparsePattern>)> {
        let path = attend.path;
        let h = self.input_layernorm.forward(x)?;
        let Some(indexer) = &self.indexer else {
            if index.is_some() {
                return Err(ModelError::Input(
                    "an indexer cache was passed to a layer without an indexer".into(),
                ));
            }
            let a = match attend.sparse {
                None => self.self_attn.forward(&h, start, rope, cache, path)?,
                Some(pattern) => {
                    let attn = &self.self_attn;
                    attn.forward_sparse(&h, start, rope, cache, path, pattern)?
                }
            };
            return Ok((self.finish(x, &a, Dispatch::Auto)?, None));
        };
        if attend.sparse.is_some() {
            return Err(ModelError::Input(
                "a fixed sparse pattern was given to a DSA layer, whose indexer selects the keys \
                 (patterns are for dense-attention models)"
                    .into(),
            ));
        }
        let caches = match (cache, index) {
            (Some(latent), Some(index)) => Some((latent, index)),
            (None, None) => None,
            _ => {
                return Err(ModelError::Input(
                    "a DSA layer needs its latent and its indexer cache together (or neither)"
                        .into(),
                ))
            }
        };
        let attn = &self.self_attn;
        let (a, selection) = attn.forward_dsa_split(&h, start, rope, caches, indexer, path)?;
        Ok((self.finish(x, &a, Dispatch::Auto)?, Some(selection)))
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
        if self.indexer.is_some() {
            return Err(dsa_unsupported("packed forwards (the engine)"));
        }
        let a = self
            .self_attn
            .forward_packed(&self.input_layernorm.forward(x)?, parts, rope)?;
        self.finish(x, &a, dispatch)
    }

    /// The residual around attention, then the FFN block.
    fn finish(&self, x: &Tensor, attn: &Tensor, dispatch: Dispatch) -> Result<Tensor> {
        let h = linear::elementwise::add(x, attn)?;
        let (b, t, c) = h.dims3()?;
        let f = self.mlp.forward_with(
            &self
                .post_attention_layernorm
                .forward(&h)?
                .reshape((b * t, c))?,
            dispatch,
        )?;
        Ok(linear::elementwise::add(&h, &f.reshape((b, t, c))?)?)
    }

    /// The attention block.
    pub fn attention(&self) -> &Mla {
        &self.self_attn
    }

    /// V3.2: the layer's lightning indexer.
    pub fn indexer(&self) -> Option<&Indexer> {
        self.indexer.as_ref()
    }

    /// An empty indexer key cache for one sequence (V3.2; `None` for dense attention), in the
    /// attention's dtype and device.
    pub fn new_index_cache(&self) -> Result<Option<IndexerCache>> {
        let attn = &self.self_attn;
        Ok(self
            .indexer
            .as_ref()
            .map(|ix| ix.new_cache(1, attn.dtype(), attn.device()))
            .transpose()?)
    }

    /// The FFN.
    pub fn ffn(&self) -> &Ffn {
        &self.mlp
    }
}

/// How a decoder layer attends in one call.
#[derive(Debug, Clone, Copy)]
pub struct Attend<'a> {
    /// The MLA path.
    pub path: AttentionPath,
    /// A fixed sparse pattern over the cached keys for a dense-attention layer
    /// ([`DeepSeek::sparse`]); `None`: dense attention.
    pub sparse: Option<&'a SparsePattern>,
}

/// Per-sequence state: the latent KV cache of every layer, for V3.2 the indexer's key cache of
/// every layer, the shared RoPE table and the number of tokens processed.
pub struct Session {
    /// One latent cache per decoder layer.
    pub kv: LatentKvCache,
    /// V3.2: one indexer key cache per decoder layer, holding the same tokens as `kv`
    /// (empty for dense-attention models).
    pub index: Vec<IndexerCache>,
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

    /// Rolls the caches (latent and indexer) back to `pos` tokens (speculative decoding
    /// rejects a suffix).
    pub fn truncate(&mut self, pos: usize) {
        self.kv.truncate(pos);
        self.index.iter_mut().for_each(|c| c.truncate(pos));
    }
}

/// Per decoder layer, per new token (in order), the cached keys its attention read as DSA
/// selected them (ascending; HF's indexer indices): what [`DeepSeek::forward_with_selections`]
/// returns. Empty rows for dense-attention layers.
pub type Selections = Vec<Vec<Vec<usize>>>;

/// What one forward pass returns.
pub struct Output {
    /// `[T, V]` f32 logits.
    pub logits: Tensor,
    /// `[T, C]` hidden states after the final norm (what MTP modules take).
    pub hidden: Tensor,
}

/// An error naming `name` in `checkpoint` unless `m` is `want` (`[rows, columns]`).
fn check_dims(checkpoint: &Checkpoint, name: &str, m: &Matrix, want: [usize; 2]) -> Result<()> {
    if m.dims() == want {
        return Ok(());
    }
    Err(ModelError::Weights {
        dir: checkpoint.dir().to_path_buf(),
        problems: vec![format!("{name}: expected {want:?}, found {:?}", m.dims())],
    })
}

/// A DeepSeek-V2/V3 causal language model.
pub struct DeepSeek {
    config: ModelConfig,
    /// `embed_tokens.weight` `[V, C]` in its stored format (a lookup table: only the rows of
    /// the tokens are widened).
    embed_tokens: Matrix,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `lm_head.weight` `[V, C]`.
    lm_head: Matrix,
    precision: Precision,
    device: Device,
    checkpoint: Arc<Checkpoint>,
    /// Which MLA path runs a forward over `T` new tokens.
    pub paths: PathPolicy,
    /// Longest block of tokens one pass through the layers takes: longer inputs go through in
    /// chunks, each attending to the cache plus itself, so activation memory is bounded by
    /// the chunk, not the prompt ([`DEFAULT_PREFILL_CHUNK`]; results equal one pass).
    pub prefill_chunk: usize,
    /// A fixed sparse-attention pattern (local window, blocks, random keys, unions:
    /// [`SparsePattern`]) every layer of a dense-attention model attends with, in place of
    /// dense attention, in sessions (generation, `logits`; MTP draft blocks stay dense). An
    /// **approximation** for models not trained with it: it changes the model's outputs
    /// (`benchmarks/README.md` measures the logit KL against dense). Default `None`; an error
    /// on V3.2 checkpoints, whose indexer selects the keys.
    pub sparse: Option<SparsePattern>,
    /// MoE layers run device dispatch ([`DeepSeek::use_device_dispatch`]).
    device_dispatch: bool,
}

/// Default [`DeepSeek::prefill_chunk`]: long enough that per-pass overheads are amortised,
/// short enough that a chunk's activations (`T x` the widest layer) stay small. Measured on
/// V2-Lite-4L, 8K-token prompt (`benchmarks/README.md`): chunks of 512 / 1024 / 2048 / 4096
/// prefill at 126 / 142 / 164 / 174 tok/s with 0 / +0.10 / +0.36 / +0.74 GB of peak RSS.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

/// Which MLA path runs a forward over `T` new tokens.
///
/// Both defaults read the paged latent cache in place. Blocks of up to 8 tokens (decode steps,
/// MTP verification) take the absorbed path (`T·H·(2R + r)` FLOPs per key), which on the CPU
/// in f32 is `mla`'s fused kernel: 256-key chunks with an online softmax, each cached latent
/// read once per step; prefill chunks take the flash-style path (online softmax over key
/// blocks in candle ops, choosing the absorbed or expanded formulation per call), which never
/// materialises the `T x S` scores. Measured on a V2-Lite-shaped layer (`mla_decode`,
/// `benchmarks/README.md`), a decode step (weights included) at 16K tokens of context took
/// 17 ms absorbed against 42 ms on the flash path.
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
        let checkpoint = Arc::new(Checkpoint::open(dir)?);
        let config = checkpoint.config()?;
        // A configuration slightly off gets the full list of missing tensors from `check`;
        // one describing over twice the checkpoint gets this summary instead of a list that
        // could be unbounded.
        let (least, held) = (least_tensor_count(&config), checkpoint.tensors().len());
        if least > held.saturating_mul(2) {
            let field =
                if config.moe.is_some() && config.num_hidden_layers.saturating_mul(2) <= held {
                    "n_routed_experts"
                } else {
                    "num_hidden_layers"
                };
            return Err(ModelError::config(
                field,
                format!(
                    "the configuration needs at least {least} tensors ({} layers, {} MTP \
                     modules, {} routed experts); {} holds {held}",
                    config.num_hidden_layers,
                    config.num_nextn_predict_layers,
                    config.moe.as_ref().map_or(0, |m| m.gate.n_routed_experts),
                    dir.display()
                ),
            ));
        }
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
        if precision.matrices == MatrixFormat::Fp8
            && checkpoint.matrix_dtype() != Some(DType::F8E4M3)
        {
            return Err(ModelError::Input(format!(
                "matrices fp8: {} stores its matrices as {}, not FP8 blocks (q8 quantises to \
                 8 bits per weight)",
                checkpoint.dir().display(),
                checkpoint
                    .matrix_dtype()
                    .map_or("mixed dtypes", |d| d.as_str())
            )));
        }
        if precision.matrices == MatrixFormat::Ggml && !checkpoint.is_gguf() {
            return Err(ModelError::Input(format!(
                "matrices gguf: {} is not a GGUF file (q8/q4 quantise at load)",
                checkpoint.dir().display()
            )));
        }
        if !device.is_cpu() && !matches!(precision.matrices, MatrixFormat::Float(_)) {
            return Err(ModelError::Input(format!(
                "matrices {}: the FP8, 8-bit and 4-bit kernels are CPU kernels; on a GPU the \
                 matrices are bf16 (the default there: FP8 checkpoints are dequantised once at \
                 load), f16 or f32",
                precision.matrices
            )));
        }
        let vb = checkpoint.var_builder(precision, device);
        let matrices = checkpoint.matrix_loader(precision, device);
        // Off the CPU every MoE layer routes and dispatches on the device: the host path would
        // copy the gate logits back and synchronise the stream in every layer.
        let device_dispatch = !device.is_cpu();
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        // As stored (bf16, or a GGUF file's blocks): in f32 V2-Lite's would take 0.84 GB and
        // V3's 3.7 GB, for one row read per token.
        let embed_tokens = matrices
            .load(&vb.pp("model.embed_tokens"), "weight")?
            .lookup_table()?;
        check_dims(
            &checkpoint,
            "model.embed_tokens.weight",
            &embed_tokens,
            [vocab, hidden],
        )?;
        // Each layer is quantised as soon as it is read, so peak memory is the quantised
        // model plus one layer as stored.
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let vb = vb.pp(format!("model.layers.{l}"));
                let mut layer = DecoderLayer::load_with(&config, l, vb, &matrices)?;
                // A GGUF file's `attn_k_b` / `attn_v_b` blocks as stored for decode's absorbed
                // products (exact, a quarter of the f32 copies' bytes at 8 bits) unless every
                // matrix was asked for as floats.
                let floats = matches!(precision.matrices, MatrixFormat::Float(_));
                if device.is_cpu() && !floats {
                    let kv_b = format!("model.layers.{l}.self_attn.kv_b_proj.weight");
                    if let Some(heads) = checkpoint.kv_b_heads(&kv_b)? {
                        layer
                            .self_attn
                            .use_absorbed_blocks(heads.w_uk_t, heads.w_uv)?;
                    }
                }
                layer.prepare(&precision, device_dispatch)?;
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(hidden, config.rms_norm_eps, vb.pp("model.norm"))?;
        let mut lm_head = matrices.load(&vb.pp("lm_head"), "weight")?;
        check_dims(&checkpoint, "lm_head.weight", &lm_head, [vocab, hidden])?;
        if let Some(format) = precision.head_format() {
            lm_head = lm_head.quantize(format)?;
        }
        if precision.huge_pages {
            lm_head.advise_huge_pages();
        }
        if precision.bf16_activations {
            lm_head = lm_head.with_bf16_activations();
        }
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
            sparse: None,
            device_dispatch,
        })
    }

    /// Whether MoE layers route and dispatch with device-generic tensor ops (no host copy in
    /// a forward pass): the default on GPUs with dense matrices, see
    /// [`DeepSeek::use_device_dispatch`].
    pub fn device_dispatch(&self) -> bool {
        self.device_dispatch
    }

    /// Routes and dispatches every MoE layer with device-generic tensor ops, as on a GPU
    /// ([`moe::device`]: routing by argsorts, experts from stacked weights, no host copy).
    /// On the CPU the host path is faster; this exists so the GPU path is tested where no GPU
    /// is. Needs dense matrices (not q8/q4/fp8).
    pub fn use_device_dispatch(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            layer.stack_experts()?;
        }
        self.device_dispatch = true;
        Ok(())
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
        let index = self
            .layers
            .iter()
            .filter_map(|l| l.new_index_cache().transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Session {
            kv,
            index,
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
        let rows = self.embed_tokens.rows(tokens)?.to_device(&self.device)?;
        Ok(rows.to_dtype(self.dtype())?.unsqueeze(0)?)
    }

    /// Runs `tokens` through the model after the session's cached tokens, appending them to
    /// the cache. Returns f32 logits and the final-normed hidden states of the new tokens.
    pub fn forward(&self, tokens: &[u32], session: &mut Session) -> Result<Output> {
        self.on_worker(|| {
            let hidden = self.hidden_states(tokens, session)?;
            let logits = self.head(&hidden)?;
            Ok(Output { logits, hidden })
        })
    }

    /// Like [`DeepSeek::forward`] but applies the head to the last position only (logits
    /// `[1, V]`): what generation needs after a prefill. The head is the largest matrix, so
    /// this saves `(T - 1) · V · C` multiply-adds (39% of a 512-token V2-Lite-4L prefill).
    pub fn forward_last(&self, tokens: &[u32], session: &mut Session) -> Result<Output> {
        self.on_worker(|| {
            let hidden = self.hidden_states(tokens, session)?;
            let logits = self.head(&hidden.narrow(0, tokens.len() - 1, 1)?)?;
            Ok(Output { logits, hidden })
        })
    }

    /// [`DeepSeek::forward`], also returning which cached keys each new token attended to in
    /// every DSA layer ([`Selections`]): V3.2's indexer choices, for inspection and parity tests.
    pub fn forward_with_selections(
        &self,
        tokens: &[u32],
        session: &mut Session,
    ) -> Result<(Output, Selections)> {
        self.on_worker(|| {
            let mut selections = vec![Vec::new(); self.layers.len()];
            let hidden = self.hidden_states_inner(tokens, session, Some(&mut selections))?;
            let logits = self.head(&hidden)?;
            Ok((Output { logits, hidden }, selections))
        })
    }

    /// Final-normed hidden states `[T, C]` of `tokens`, appended to the session's cache, in
    /// chunks of at most [`DeepSeek::prefill_chunk`] tokens.
    pub fn hidden_states(&self, tokens: &[u32], session: &mut Session) -> Result<Tensor> {
        self.on_worker(|| self.hidden_states_inner(tokens, session, None))
    }

    fn hidden_states_inner(
        &self,
        tokens: &[u32],
        session: &mut Session,
        mut selections: Option<&mut Selections>,
    ) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::Input("no tokens to process".into()));
        }
        let chunks = tokens
            .chunks(self.prefill_chunk.max(1))
            .map(|chunk| self.chunk_hidden_states(chunk, session, selections.as_deref_mut()))
            .collect::<Result<Vec<_>>>()?;
        match <[Tensor; 1]>::try_from(chunks) {
            Ok([one]) => Ok(one),
            Err(chunks) => Ok(Tensor::cat(&chunks, 0)?),
        }
    }

    /// One pass of `tokens` through every layer after the session's cached tokens; DSA layers'
    /// selections are appended to `selections` when given.
    fn chunk_hidden_states(
        &self,
        tokens: &[u32],
        session: &mut Session,
        mut selections: Option<&mut Selections>,
    ) -> Result<Tensor> {
        let start = session.len();
        let path = self.paths.for_tokens(tokens.len());
        let mut x = self.embed(tokens)?;
        let mut index = session.index.iter_mut();
        for (l, (layer, cache)) in self.layers.iter().zip(session.kv.layers_mut()).enumerate() {
            let index = match layer.indexer() {
                Some(_) => Some(index.next().ok_or_else(|| {
                    ModelError::Input(format!(
                        "layer {l} uses sparse attention but the session has no indexer cache \
                         for it (make sessions with DeepSeek::new_session)"
                    ))
                })?),
                None => None,
            };
            let attend = Attend {
                path,
                sparse: self.sparse.as_ref(),
            };
            let (y, selection) = layer.forward_with_selection(
                &x,
                start,
                &mut session.rope,
                Some(cache),
                index,
                attend,
            )?;
            if let (Some(all), Some(SparsePattern::TopK(rows))) = (&mut selections, selection) {
                all[l].extend(rows);
            }
            x = y;
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
        if self.config.is_dsa() {
            return Err(dsa_unsupported("DeepSeek::forward_packed"));
        }
        if self.sparse.is_some() {
            return Err(ModelError::Input(
                "DeepSeek::sparse patterns run in sessions only, not in packed forwards".into(),
            ));
        }
        self.on_worker(|| self.forward_packed_inner(parts, rope, dispatch))
    }

    fn forward_packed_inner(
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

    /// Bytes one token of one sequence occupies in the caches over all layers: the latent, plus
    /// the indexer key for V3.2.
    pub fn cache_bytes_per_token(&self) -> usize {
        let m = &self.config.mla;
        let index = self.config.indexer.as_ref().map_or(0, |c| c.head_dim);
        (m.kv_lora_rank + m.qk_rope_head_dim + index)
            * self.dtype().size_in_bytes()
            * self.layers.len()
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

    /// Up to how many sequences one pass may decode with every sequence's output the same bits
    /// as alone: the least [`linear::Matrix::batch_invariant_rows`] over the matrices that
    /// multiply all of a pass's rows (attention projections, FFNs and experts, the head) on
    /// the detected kernel path. Attention itself runs per sequence and the routers keep
    /// every row ([`moe::Gate::logits`]). `linear::GEMV_MAX_ROWS` in general; 64 for bf16
    /// matrices under `--bf16-activations` on AVX512-BF16 CPUs, unbounded on AMX CPUs when
    /// every such matrix's `K` is a multiple of 32 (V2/V3's are); 64 when every such matrix is
    /// quantised on AVX2 CPUs without VNNI (`linear::Isa::quant_row_kernel_rows`); unbounded
    /// (`usize::MAX`) when every such matrix is quantised and held in panels (AVX512-VNNI
    /// CPUs: `linear::QuantMatrix::for_isa`).
    pub fn batch_invariant_rows(&self) -> usize {
        let isa = linear::Isa::detect();
        let mut rows = self.lm_head.batch_invariant_rows(isa);
        for m in self.layers.iter().flat_map(DecoderLayer::matrices) {
            rows = rows.min(m.batch_invariant_rows(isa));
        }
        rows
    }

    /// Bytes of weights one decode step reads, each matrix in the format it is kept in:
    /// `(total, routed experts)`. The total counts one embedding row, every layer's attention
    /// weights and norms, its dense FFN or its shared experts plus `top_k` routed experts (the
    /// router is not counted: a few hundred KB per layer), the final norm and the head; the
    /// V3.2 indexer and MTP modules are not counted.
    pub fn decode_weight_bytes(&self) -> (usize, usize) {
        let hidden = self.config.hidden_size;
        let norm = hidden * self.dtype().size_in_bytes();
        let embed_row = self.embed_tokens.bytes() / self.config.vocab_size.max(1);
        let (mut total, mut routed) = (embed_row + norm + self.lm_head.bytes(), 0);
        for layer in &self.layers {
            total += 2 * norm + layer.self_attn.decode_weight_bytes();
            total += match &layer.mlp {
                Ffn::Dense(m) => m.weight_bytes(),
                Ffn::Moe(m) => {
                    let k = m.config().gate.top_k;
                    routed += k * m.experts().expert(0).weight_bytes();
                    m.decode_weight_bytes()
                }
            };
        }
        (total, routed)
    }

    /// Runs `f` on a thread of rayon's pool when the model runs on the CPU (the caller's own
    /// thread when it already is one, or on a GPU, whose work is queued on a stream).
    ///
    /// Every CPU product in a forward pass is a rayon parallel loop. Called from a thread
    /// outside the pool, each loop is injected into the pool and the caller sleeps until it
    /// ends: two cross-thread wake-ups per product, about 150 per decode step of the
    /// V2-Lite-shaped benchmark checkpoint. Run from a pool thread, the loops split in place and
    /// the other workers steal from it while they are still spinning, so a step pays one
    /// injection (`benchmarks/README.md`, "Decode at 4 bits: where a step's time goes").
    fn on_worker<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if !self.device.is_cpu() || rayon::current_thread_index().is_some() {
            f()
        } else {
            rayon::scope(|_| f())
        }
    }

    /// The output head on final-normed hidden states `[T, C]` -> f32 `[T, V]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.on_worker(|| Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?))
    }

    /// One causal prefill of `tokens` with no cache: f32 logits `[T, V]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut session = self.new_session()?;
        Ok(self.forward(tokens, &mut session)?.logits)
    }

    /// Logits of the last position as a `Vec<f32>`.
    pub fn last_logits(out: &Output) -> Result<Vec<f32>> {
        let t = out.logits.dim(0)?;
        Ok(linear::host::vec1::<f32>(&out.logits.get(t - 1)?)?)
    }

    /// Index of the largest logit of each row of `[T, V]` logits.
    pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
        Ok(linear::host::vec1::<u32>(&logits.argmax(D::Minus1)?)?)
    }
}

/// The error for a path that does not run DeepSeek Sparse Attention (V3.2) yet.
pub(crate) fn dsa_unsupported(what: &str) -> ModelError {
    ModelError::config(
        "model_type",
        format!(
            "deepseek_v32 (DeepSeek Sparse Attention) is not supported by {what} yet; \
             sessions (generate, logits) run it"
        ),
    )
}
