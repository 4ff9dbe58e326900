//! The model side of multi-token prediction: [`MtpBlock`] (a [`DecoderLayer`] run with the
//! main model's [`PathPolicy`]) as the block of an MTP module, [`DeepSeek`] as the main model of
//! speculative decoding, loading the modules from `model.layers.{num_hidden_layers + k}`, and
//! the depth-1 `mtp_logits` the CLI writes. Generation with MTP drafts goes through
//! [`crate::generate`] (`Decoding::Mtp`).
//!
//! Functions here return [`mtp::Result`]; model errors are boxed into
//! [`mtp::MtpError::Backend`] ([`into_model_error`] unboxes them again).

use candle_core::Tensor;
use mla::{IndexerCache, LayerCache};
use mtp::{MtpError, MtpModule, Result, TokenSampler};
use rope_yarn::RopeCache;

use crate::error::ModelError;
use crate::model::{DecoderLayer, DeepSeek, PathPolicy, Session};
use crate::sampling::Sampler;

/// An MTP module of this model.
pub type Module = MtpModule<MtpBlock>;

/// The decoder block of an MTP module: its [`DecoderLayer`] and the MLA [`PathPolicy`] it runs
/// with, the main model's (`DeepSeek::paths` when the module was loaded), so drafting follows
/// the same absorbed/expanded choice as the main model's forwards.
pub struct MtpBlock {
    layer: DecoderLayer,
    paths: PathPolicy,
}

impl MtpBlock {
    /// `layer` run with `paths`.
    pub fn new(layer: DecoderLayer, paths: PathPolicy) -> Self {
        Self { layer, paths }
    }

    /// The decoder layer.
    pub fn layer(&self) -> &DecoderLayer {
        &self.layer
    }

    /// The MLA path policy the block runs with.
    pub fn path_policy(&self) -> PathPolicy {
        self.paths
    }
}

/// The incremental state of an MTP module's block: its latent KV cache (and, for V3.2, its
/// indexer key cache, rolled back with it) and RoPE table.
pub struct MtpCache {
    /// Latent cache of the block's MLA (one sequence).
    pub kv: LayerCache,
    /// V3.2: the block's indexer key cache (same tokens as `kv`).
    pub index: Option<IndexerCache>,
    /// cos/sin table grown on demand.
    pub rope: RopeCache,
}

impl mtp::DecoderBlock for MtpBlock {
    type Cache = MtpCache;

    fn new_cache(&self) -> Result<MtpCache> {
        let attn = self.layer.attention();
        Ok(MtpCache {
            kv: attn.new_cache(1).map_err(MtpError::backend)?,
            index: self.layer.new_index_cache().map_err(MtpError::backend)?,
            rope: RopeCache::new(attn.config().rope),
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut MtpCache) -> Result<Tensor> {
        let start = cache.kv.uniform_len().unwrap_or(0);
        let path = self.paths.for_tokens(x.dim(1)?);
        self.layer
            .forward(
                x,
                start,
                &mut cache.rope,
                Some(&mut cache.kv),
                cache.index.as_mut(),
                path,
            )
            .map_err(MtpError::backend)
    }

    fn cache_len(cache: &MtpCache) -> usize {
        cache.kv.uniform_len().unwrap_or(0)
    }

    fn truncate(cache: &mut MtpCache, len: usize) {
        cache.kv.truncate(len);
        if let Some(index) = &mut cache.index {
            index.truncate(len);
        }
    }
}

/// An MTP error as a [`ModelError`]: the model's own errors that the MTP crate boxed come back
/// as they were, candle errors as [`ModelError::Candle`], the rest as [`ModelError::Mtp`].
pub fn into_model_error(e: MtpError) -> ModelError {
    match e {
        MtpError::Backend(inner) => match inner.downcast::<ModelError>() {
            Ok(model) => *model,
            Err(other) => ModelError::Mtp(MtpError::Backend(other)),
        },
        MtpError::Candle(c) => ModelError::Candle(c),
        other => ModelError::Mtp(other),
    }
}

impl mtp::MainModel for DeepSeek {
    type Session = Session;

    fn new_session(&self) -> Result<Session> {
        DeepSeek::new_session(self).map_err(MtpError::backend)
    }

    fn forward(&self, tokens: &[u32], session: &mut Session) -> Result<(Tensor, Tensor)> {
        let out = DeepSeek::forward(self, tokens, session).map_err(MtpError::backend)?;
        Ok((out.logits, out.hidden))
    }

    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        DeepSeek::embed(self, tokens).map_err(MtpError::backend)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        DeepSeek::head(self, hidden).map_err(MtpError::backend)
    }

    fn session_len(session: &Session) -> usize {
        session.len()
    }

    fn truncate(session: &mut Session, len: usize) {
        session.truncate(len);
    }
}

impl TokenSampler for Sampler {
    fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        Sampler::distribution(self, logits)
    }

    fn uniform(&mut self) -> f32 {
        Sampler::uniform(self)
    }
}

/// Loads every MTP module the configuration declares (`num_nextn_predict_layers`; none for
/// V2 or checkpoints without MTP weights), in the model's precision and device, from the model's
/// checkpoint. Module `k` (1-based) comes from `model.layers.{num_hidden_layers + k - 1}`. The
/// blocks run with the model's current [`PathPolicy`] (`model.paths`; load again after changing
/// it).
pub fn load_mtp_modules(model: &DeepSeek) -> Result<Vec<Module>> {
    let cfg = model.config();
    let vb = model
        .checkpoint()
        .var_builder(model.precision(), model.device());
    let matrices = model
        .checkpoint()
        .matrix_loader(model.precision(), model.device());
    (cfg.num_hidden_layers..cfg.num_hidden_layers + cfg.num_nextn_predict_layers)
        .map(|layer| {
            let vb = vb.pp(format!("model.layers.{layer}"));
            let mut layer_weights = DecoderLayer::load_with(cfg, layer, vb.clone(), &matrices)
                .map_err(MtpError::backend)?;
            layer_weights
                .prepare(&model.precision(), model.device_dispatch())
                .map_err(MtpError::backend)?;
            let block = MtpBlock::new(layer_weights, model.paths);
            MtpModule::load(vb, cfg.hidden_size, cfg.rms_norm_eps, block)
        })
        .collect()
}

/// Depth-1 teacher-forced outputs over `tokens` (`T >= 2`): row `j` is `module` applied to the
/// main model's final-normed hidden state at position `j` and token `j + 1` (predicting token
/// `j + 2`), causal over the `T - 1` rows with a fresh cache. Returns
/// `(hidden [T-1, C] after shared_head.norm, f32 logits [T-1, V])`.
pub fn mtp_forward(model: &DeepSeek, module: &Module, tokens: &[u32]) -> Result<(Tensor, Tensor)> {
    let t = tokens.len();
    if t < 2 {
        return Err(MtpError::Input(format!(
            "MTP logits need at least 2 tokens, got {t}"
        )));
    }
    let mut session = DeepSeek::new_session(model).map_err(MtpError::backend)?;
    let out = DeepSeek::forward(model, tokens, &mut session).map_err(MtpError::backend)?;
    let prev = out.hidden.narrow(0, 0, t - 1)?.unsqueeze(0)?; // [1, T-1, C]
    let emb = DeepSeek::embed(model, &tokens[1..]).map_err(MtpError::backend)?; // [1, T-1, C]
    let mut cache = module.new_cache()?;
    let hidden = module.forward(&emb, &prev, &mut cache)?.squeeze(0)?; // [T-1, C]
    let logits = DeepSeek::head(model, &hidden).map_err(MtpError::backend)?;
    Ok((hidden, logits))
}

/// The CLI's `mtp_logits`: f32 `[T-1, V]` from the depth-1 module, or `None` when the
/// checkpoint has no MTP layer.
pub fn mtp_logits(model: &DeepSeek, tokens: &[u32]) -> Result<Option<Tensor>> {
    let modules = load_mtp_modules(model)?;
    match modules.first() {
        None => Ok(None),
        Some(m) => Ok(Some(mtp_forward(model, m, tokens)?.1)),
    }
}
