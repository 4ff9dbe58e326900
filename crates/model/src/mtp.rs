//! The model side of multi-token prediction: [`DecoderLayer`] as the block of an MTP module,
//! [`DeepSeek`] as the main model of speculative decoding, loading the modules from
//! `model.layers.{num_hidden_layers + k}`, and the depth-1 `mtp_logits` the CLI writes.
//!
//! Functions here return [`mtp::Result`]; model errors are boxed into
//! [`mtp::MtpError::Backend`].

use candle_core::Tensor;
use mla::LayerCache;
use mtp::{MtpError, MtpModule, Result, TokenSampler};
use rope_yarn::RopeCache;

use crate::model::{DecoderLayer, DeepSeek, PathPolicy, Session};
use crate::sampling::Sampler;

/// An MTP module of this model.
pub type Module = MtpModule<DecoderLayer>;

/// The incremental state of an MTP module's block: its latent KV cache and RoPE table.
pub struct MtpCache {
    /// Latent cache of the block's MLA (one sequence).
    pub kv: LayerCache,
    /// cos/sin table grown on demand.
    pub rope: RopeCache,
}

impl mtp::DecoderBlock for DecoderLayer {
    type Cache = MtpCache;

    fn new_cache(&self) -> Result<MtpCache> {
        let attn = self.attention();
        Ok(MtpCache {
            kv: attn.new_cache(1).map_err(MtpError::backend)?,
            rope: RopeCache::new(attn.config().rope),
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut MtpCache) -> Result<Tensor> {
        let start = cache.kv.uniform_len().unwrap_or(0);
        // The main model's default choice (absorbed for short blocks).
        let path = PathPolicy::default().for_tokens(x.dim(1)?);
        DecoderLayer::forward(self, x, start, &mut cache.rope, Some(&mut cache.kv), path)
            .map_err(MtpError::backend)
    }

    fn cache_len(cache: &MtpCache) -> usize {
        cache.kv.uniform_len().unwrap_or(0)
    }

    fn truncate(cache: &mut MtpCache, len: usize) {
        cache.kv.truncate(len);
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
/// checkpoint. Module `k` (1-based) comes from `model.layers.{num_hidden_layers + k - 1}`.
pub fn load_mtp_modules(model: &DeepSeek) -> Result<Vec<Module>> {
    let cfg = model.config();
    let h = &cfg.hf;
    let vb = model
        .checkpoint()
        .var_builder(model.precision(), model.device());
    (h.num_hidden_layers..h.num_hidden_layers + h.num_nextn_predict_layers)
        .map(|layer| {
            let vb = vb.pp(format!("model.layers.{layer}"));
            let block = DecoderLayer::load(cfg, layer, vb.clone()).map_err(MtpError::backend)?;
            MtpModule::load(vb, h.hidden_size, h.rms_norm_eps, block)
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
