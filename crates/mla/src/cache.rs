//! The latent KV cache: only the normed `c_kv` (`R` values) and the roped shared key `k_pe`
//! (`rope` values) per token, per layer.
//!
//! Storage is one preallocated buffer pair per layer, `[B, capacity, R]` and
//! `[B, capacity, rope]`, written in place with `Tensor::slice_set`. When a write does not fit
//! the capacity grows geometrically (at least doubling), so appending `n` tokens one by one
//! copies `O(n)` values in total, not `O(n²)` as `Tensor::cat` on every step would.
//!
//! Each sequence of the batch has its own length. [`LayerCache::truncate`] and
//! [`LayerCache::truncate_seq`] only move lengths back: stale rows past a length are never
//! read (every view is narrowed to the length) and are overwritten by the next append, which is
//! what speculative decoding needs to roll back rejected draft tokens.

use candle_core::{DType, Device, Tensor};

use crate::config::MlaConfig;
use crate::error::{MlaError, Result};

/// The smallest capacity allocated on the first write.
const MIN_CAPACITY: usize = 16;

/// One layer's latent cache for a batch of sequences.
///
/// Views returned by [`LayerCache::seq`] / [`LayerCache::views`] share the buffer: they are
/// snapshots only until the next write to the cache.
#[derive(Debug, Clone)]
pub struct LayerCache {
    c_kv: Option<Tensor>,
    k_pe: Option<Tensor>,
    lens: Vec<usize>,
    capacity: usize,
    kv_lora_rank: usize,
    rope_dim: usize,
    dtype: DType,
    device: Device,
}

impl LayerCache {
    /// An empty cache for `batch` sequences of `kv_lora_rank` latent and `rope_dim` rotary
    /// values per token. Nothing is allocated until the first write or [`LayerCache::reserve`].
    pub fn new(
        batch: usize,
        kv_lora_rank: usize,
        rope_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if batch == 0 {
            return Err(MlaError::Cache("batch must be > 0".into()));
        }
        Ok(Self {
            c_kv: None,
            k_pe: None,
            lens: vec![0; batch],
            capacity: 0,
            kv_lora_rank,
            rope_dim,
            dtype,
            device: device.clone(),
        })
    }

    /// An empty cache sized for `config`.
    pub fn for_config(
        config: &MlaConfig,
        batch: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::new(
            batch,
            config.kv_lora_rank,
            config.qk_rope_head_dim,
            dtype,
            device,
        )
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Tokens held by each sequence.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Tokens held by sequence `i`.
    pub fn seq_len(&self, i: usize) -> Result<usize> {
        self.lens.get(i).copied().ok_or_else(|| self.bad_seq(i))
    }

    /// The common length when every sequence holds the same number of tokens, else `None`.
    pub fn uniform_len(&self) -> Option<usize> {
        let first = self.lens[0];
        self.lens.iter().all(|&l| l == first).then_some(first)
    }

    /// True when no sequence holds a token.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Tokens that fit without reallocating.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Latent rank `R`.
    pub fn kv_lora_rank(&self) -> usize {
        self.kv_lora_rank
    }

    /// Rotary key size.
    pub fn rope_dim(&self) -> usize {
        self.rope_dim
    }

    /// Storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Storage device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes one token occupies in this layer: `(R + rope) · sizeof(dtype)`.
    pub fn bytes_per_token(&self) -> usize {
        (self.kv_lora_rank + self.rope_dim) * self.dtype.size_in_bytes()
    }

    /// Bytes allocated (capacity, all sequences).
    pub fn allocated_bytes(&self) -> usize {
        self.batch() * self.capacity * self.bytes_per_token()
    }

    /// Makes room for `len` tokens per sequence (grows to at least `len`, keeping contents).
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        if len <= self.capacity {
            return Ok(());
        }
        let new_cap = len.max(2 * self.capacity).max(MIN_CAPACITY);
        let b = self.batch();
        let c_kv = Tensor::zeros((b, new_cap, self.kv_lora_rank), self.dtype, &self.device)?;
        let k_pe = Tensor::zeros((b, new_cap, self.rope_dim), self.dtype, &self.device)?;
        let used = self.lens.iter().copied().max().unwrap_or(0);
        if let (Some(old_c), Some(old_k)) = (&self.c_kv, &self.k_pe) {
            if used > 0 {
                c_kv.slice_set(&old_c.narrow(1, 0, used)?.contiguous()?, 1, 0)?;
                k_pe.slice_set(&old_k.narrow(1, 0, used)?.contiguous()?, 1, 0)?;
            }
        }
        self.c_kv = Some(c_kv);
        self.k_pe = Some(k_pe);
        self.capacity = new_cap;
        Ok(())
    }

    fn check_new(&self, c_kv: &Tensor, k_pe: &Tensor, batch: usize) -> Result<usize> {
        let t = match c_kv.dims() {
            &[b, t, r] if b == batch && r == self.kv_lora_rank => t,
            _ => {
                return Err(MlaError::InputShape {
                    what: "c_kv",
                    expected: format!("[{batch}, tokens, {}]", self.kv_lora_rank),
                    found: c_kv.dims().to_vec(),
                })
            }
        };
        if k_pe.dims() != [batch, t, self.rope_dim] {
            return Err(MlaError::InputShape {
                what: "k_pe",
                expected: format!("[{batch}, {t}, {}]", self.rope_dim),
                found: k_pe.dims().to_vec(),
            });
        }
        for (what, x) in [("c_kv", c_kv), ("k_pe", k_pe)] {
            if x.dtype() != self.dtype {
                return Err(MlaError::DTypeMismatch {
                    what,
                    expected: self.dtype,
                    found: x.dtype(),
                });
            }
        }
        Ok(t)
    }

    /// Appends `t` tokens to every sequence: `c_kv` `[B, t, R]`, `k_pe` `[B, t, rope]`. All
    /// sequences must hold the same number of tokens (use [`LayerCache::append_seq`]
    /// otherwise).
    pub fn append(&mut self, c_kv: &Tensor, k_pe: &Tensor) -> Result<()> {
        let t = self.check_new(c_kv, k_pe, self.batch())?;
        let len = self.uniform_len().ok_or_else(|| {
            MlaError::Cache(format!(
                "append needs equal sequence lengths, found {:?}: use append_seq",
                self.lens
            ))
        })?;
        self.reserve(len + t)?;
        let (buf_c, buf_k) = self.buffers()?;
        buf_c.slice_set(&c_kv.contiguous()?, 1, len)?;
        buf_k.slice_set(&k_pe.contiguous()?, 1, len)?;
        self.lens.iter_mut().for_each(|l| *l += t);
        Ok(())
    }

    /// Appends `t` tokens to sequence `i` only: `c_kv` `[1, t, R]`, `k_pe` `[1, t, rope]`.
    pub fn append_seq(&mut self, i: usize, c_kv: &Tensor, k_pe: &Tensor) -> Result<()> {
        let len = self.seq_len(i)?;
        let t = self.check_new(c_kv, k_pe, 1)?;
        self.reserve(len + t)?;
        let (buf_c, buf_k) = self.buffers()?;
        buf_c
            .narrow(0, i, 1)?
            .slice_set(&c_kv.contiguous()?, 1, len)?;
        buf_k
            .narrow(0, i, 1)?
            .slice_set(&k_pe.contiguous()?, 1, len)?;
        self.lens[i] += t;
        Ok(())
    }

    fn buffers(&self) -> Result<(&Tensor, &Tensor)> {
        match (&self.c_kv, &self.k_pe) {
            (Some(c), Some(k)) => Ok((c, k)),
            _ => Err(MlaError::Cache("no storage allocated".into())),
        }
    }

    /// Rolls every sequence back to at most `pos` tokens (no-op for shorter ones).
    pub fn truncate(&mut self, pos: usize) {
        self.lens.iter_mut().for_each(|l| *l = (*l).min(pos));
    }

    /// Rolls sequence `i` back to at most `pos` tokens.
    pub fn truncate_seq(&mut self, i: usize, pos: usize) -> Result<()> {
        let len = self.seq_len(i)?;
        self.lens[i] = len.min(pos);
        Ok(())
    }

    /// Empties every sequence, keeping the allocation.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// The cached `c_kv` `[B, len, R]` and `k_pe` `[B, len, rope]` when every sequence holds
    /// `len` tokens.
    pub fn views(&self) -> Result<(Tensor, Tensor)> {
        let len = self.uniform_len().ok_or_else(|| {
            MlaError::Cache(format!(
                "views need equal sequence lengths, found {:?}: use seq",
                self.lens
            ))
        })?;
        self.range(0, self.batch(), len)
    }

    /// Sequence `i`'s cached `c_kv` `[1, len_i, R]` and `k_pe` `[1, len_i, rope]`.
    pub fn seq(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let len = self.seq_len(i)?;
        self.range(i, 1, len)
    }

    fn range(&self, first: usize, count: usize, len: usize) -> Result<(Tensor, Tensor)> {
        match (&self.c_kv, &self.k_pe) {
            (Some(c), Some(k)) => Ok((
                c.narrow(0, first, count)?.narrow(1, 0, len)?,
                k.narrow(0, first, count)?.narrow(1, 0, len)?,
            )),
            _ => Ok((
                Tensor::zeros((count, 0, self.kv_lora_rank), self.dtype, &self.device)?,
                Tensor::zeros((count, 0, self.rope_dim), self.dtype, &self.device)?,
            )),
        }
    }

    fn bad_seq(&self, i: usize) -> MlaError {
        MlaError::Cache(format!(
            "sequence {i} out of range (batch {})",
            self.batch()
        ))
    }
}

/// The latent caches of every layer of a model, moved together.
#[derive(Debug, Clone)]
pub struct LatentKvCache {
    layers: Vec<LayerCache>,
}

impl LatentKvCache {
    /// Empty caches for `num_layers` layers of `config`'s shape.
    pub fn new(
        config: &MlaConfig,
        num_layers: usize,
        batch: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|_| LayerCache::for_config(config, batch, dtype, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `l`'s cache.
    pub fn layer(&self, l: usize) -> Result<&LayerCache> {
        let n = self.layers.len();
        self.layers
            .get(l)
            .ok_or_else(|| MlaError::Cache(format!("layer {l} out of range ({n} layers)")))
    }

    /// Layer `l`'s cache, mutably (what [`Mla::forward`](crate::Mla::forward) takes).
    pub fn layer_mut(&mut self, l: usize) -> Result<&mut LayerCache> {
        let n = self.layers.len();
        self.layers
            .get_mut(l)
            .ok_or_else(|| MlaError::Cache(format!("layer {l} out of range ({n} layers)")))
    }

    /// All layers.
    pub fn layers_mut(&mut self) -> &mut [LayerCache] {
        &mut self.layers
    }

    /// Rolls every layer and sequence back to at most `pos` tokens.
    pub fn truncate(&mut self, pos: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(pos));
    }

    /// Rolls sequence `i` of every layer back to at most `pos` tokens.
    pub fn truncate_seq(&mut self, i: usize, pos: usize) -> Result<()> {
        self.layers
            .iter_mut()
            .try_for_each(|l| l.truncate_seq(i, pos))
    }

    /// Reserves `len` tokens per sequence in every layer.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.reserve(len))
    }

    /// Bytes one token occupies over all layers (`(R + rope) · sizeof · layers`).
    pub fn bytes_per_token(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes_per_token).sum()
    }

    /// Bytes allocated over all layers.
    pub fn allocated_bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::allocated_bytes).sum()
    }
}
