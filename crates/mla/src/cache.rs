//! The latent KV cache: only the normed `c_kv` (`R` values) and the roped shared key `k_pe`
//! (`rope` values) per token, per layer.
//!
//! Storage is paged: each layer holds a list of pages, each a buffer pair `[B, page, R]` and
//! `[B, page, rope]` for [`CACHE_PAGE`] tokens (by default) written in place with
//! `Tensor::slice_set`. Growing allocates one more page and never copies what is stored, so a
//! 128K-token cache does not move 128K tokens each time it outgrows its allocation, and peak
//! memory is the cache plus at most one page. Attention reads the pages where they lie through
//! [`LatentKeys`]: the flash path's key blocks and the absorbed path's products are views
//! of the pages; the expanded oracle asks for one contiguous tensor
//! ([`LatentKeys::to_contiguous`], a copy when the keys span pages).
//!
//! Pages are shared copy-on-write: [`LayerCache::fork`] gives a second cache holding the same
//! tokens without copying any (the `n` samples of one prompt, a shared system prompt), and a
//! write into a page that another cache still holds first copies that one page.
//!
//! Each sequence of the batch has its own length. [`LayerCache::truncate`] and
//! [`LayerCache::truncate_seq`] only move lengths back: stale rows past a length are never
//! read (every view is narrowed to the length) and are overwritten by the next append, which is
//! what speculative decoding needs to roll back rejected draft tokens.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::MlaConfig;
use crate::error::{MlaError, Result};

/// Tokens per page of a [`LayerCache`] unless [`LayerCache::with_page_tokens`] says otherwise:
/// a multiple of the flash path's key block ([`crate::FLASH_KEY_BLOCK`]), so no block it reads
/// straddles two pages (each is a view in place). Larger pages make the absorbed decode step's
/// per-page products larger: on a V2-Lite-shaped layer at 8K tokens of context a step took
/// ~7 ms with 2048-token pages against ~10 ms with 512 (`mla_decode`, `benchmarks/README.md`).
/// The price is the allocation granularity: one page per layer and sequence is
/// `2048 · (R + rope)` values (4.7 MB in f32 for V2/V3's 576), which a server holding many
/// short sequences may want smaller.
pub const CACHE_PAGE: usize = 2048;

/// The latent keys some queries attend to, in order: contiguous segments (the pages of a
/// cache, or one tensor), each a `c_kv` `[B, len, R]` and `k_pe` `[B, len, rope]` pair.
#[derive(Debug, Clone)]
pub struct LatentKeys {
    segments: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl LatentKeys {
    /// One contiguous segment: `c_kv` `[B, S, R]` and `k_pe` `[B, S, rope]`.
    pub fn contiguous(c_kv: &Tensor, k_pe: &Tensor) -> Result<Self> {
        let len = c_kv.dim(1)?;
        Ok(Self {
            segments: vec![(c_kv.clone(), k_pe.clone())],
            len,
        })
    }

    /// Number of keys `S`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segments in order (pages of a cache, narrowed to the length).
    pub fn segments(&self) -> &[(Tensor, Tensor)] {
        &self.segments
    }

    /// The keys at `indices` (any order, repeats allowed) of sequence `seq` of these keys'
    /// batch, for sparse attention: each distinct key is read once from the segment (page)
    /// holding it, so the cost is linear in the keys asked for, not in [`LatentKeys::len`].
    /// Returns the distinct keys' `c_kv` `[U, R]` and `k_pe` `[U, rope]` (in key order) and,
    /// for each requested index, the row of the distinct keys holding it (`u32` `[N]`).
    pub(crate) fn gather_unique(
        &self,
        seq: usize,
        indices: &[usize],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len) {
            return Err(MlaError::Cache(format!(
                "key {bad} requested from {} keys",
                self.len
            )));
        }
        let mut distinct: Vec<usize> = indices.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let (mut cs, mut ks) = (vec![], vec![]);
        let (mut seg_start, mut next) = (0, 0);
        for (c, k) in &self.segments {
            let seg_len = c.dim(1)?;
            let first = next;
            while next < distinct.len() && distinct[next] < seg_start + seg_len {
                next += 1;
            }
            if next > first {
                let local: Vec<u32> = distinct[first..next]
                    .iter()
                    .map(|&i| (i - seg_start) as u32)
                    .collect();
                let local = Tensor::new(local.as_slice(), c.device())?;
                // [B, n, ·] -> sequence `seq`'s rows `[n, ·]` (a contiguous view of the page).
                let rows = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, seq, 1)?
                        .squeeze(0)?
                        .contiguous()?
                        .index_select(&local, 0)?)
                };
                cs.push(rows(c)?);
                ks.push(rows(k)?);
            }
            seg_start += seg_len;
        }
        let (c_kv, k_pe) = if cs.len() == 1 {
            (cs.remove(0), ks.remove(0))
        } else {
            (Tensor::cat(&cs, 0)?, Tensor::cat(&ks, 0)?)
        };
        let rows: Vec<u32> = indices
            .iter()
            .map(|i| distinct.binary_search(i).expect("present") as u32)
            .collect();
        let rows = Tensor::new(rows.as_slice(), c_kv.device())?;
        Ok((c_kv, k_pe, rows))
    }

    /// Keys `start..start + len`: a view when they lie in one segment, else a copy of the
    /// pieces joined.
    pub fn narrow(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        if start + len > self.len {
            return Err(MlaError::Cache(format!(
                "keys {start}..{} requested from {} keys",
                start + len,
                self.len
            )));
        }
        let (mut cs, mut ks) = (vec![], vec![]);
        let mut seg_start = 0;
        for (c, k) in &self.segments {
            let seg_len = c.dim(1)?;
            let lo = start.max(seg_start);
            let hi = (start + len).min(seg_start + seg_len);
            if lo < hi {
                cs.push(c.narrow(1, lo - seg_start, hi - lo)?);
                ks.push(k.narrow(1, lo - seg_start, hi - lo)?);
            }
            seg_start += seg_len;
        }
        match (cs.len(), self.segments.first()) {
            (1, _) => Ok((cs.remove(0), ks.remove(0))),
            (0, Some((c, k))) => Ok((c.narrow(1, 0, 0)?, k.narrow(1, 0, 0)?)),
            (0, None) => Err(MlaError::Cache("no key segments".into())),
            _ => Ok((Tensor::cat(&cs, 1)?, Tensor::cat(&ks, 1)?)),
        }
    }

    /// All keys as one `c_kv` `[B, S, R]` and `k_pe` `[B, S, rope]` (a copy when they span
    /// several segments).
    pub fn to_contiguous(&self) -> Result<(Tensor, Tensor)> {
        self.narrow(0, self.len)
    }
}

/// One page of a batch-1 [`LayerCache`] held outside it (e.g. by a prefix cache): the
/// tokens it stores stay shared, copy-on-write, with every cache that adopts it.
#[derive(Debug, Clone)]
pub struct SharedPage(Arc<(Tensor, Tensor)>);

impl SharedPage {
    /// Identity: equal for two handles of the same page (see [`LayerCache::page_ids`]).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// One layer's latent cache for a batch of sequences.
///
/// Views returned by [`LayerCache::seq`] / [`LayerCache::views`] share the buffer: they are
/// snapshots only until the next write to the cache.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Pages in order: `c_kv` `[B, page, R]` and `k_pe` `[B, page, rope]`, shared with forks
    /// until written (the `Arc` count says whether another cache holds a page).
    pages: Vec<Arc<(Tensor, Tensor)>>,
    page: usize,
    lens: Vec<usize>,
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
            pages: vec![],
            page: CACHE_PAGE,
            lens: vec![0; batch],
            kv_lora_rank,
            rope_dim,
            dtype,
            device: device.clone(),
        })
    }

    /// The same empty cache with pages of `tokens` tokens (more pages of fewer tokens waste
    /// less memory on short sequences; the flash path reads whole pages best when `tokens`
    /// is [`crate::FLASH_KEY_BLOCK`]). An error once anything is allocated, or for 0.
    pub fn with_page_tokens(mut self, tokens: usize) -> Result<Self> {
        if tokens == 0 {
            return Err(MlaError::Cache("page size must be > 0 tokens".into()));
        }
        if !self.pages.is_empty() {
            return Err(MlaError::Cache(
                "the page size can only be set before the first allocation".into(),
            ));
        }
        self.page = tokens;
        Ok(self)
    }

    /// Tokens per page.
    pub fn page_tokens(&self) -> usize {
        self.page
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

    /// Tokens per sequence that fit in the pages allocated so far.
    pub fn capacity(&self) -> usize {
        self.pages.len() * self.page
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
        self.batch() * self.capacity() * self.bytes_per_token()
    }

    /// Makes room for `len` tokens per sequence: allocates pages until they hold `len`,
    /// leaving the stored ones where they are.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        let b = self.batch();
        while self.capacity() < len {
            self.pages.push(Arc::new((
                Tensor::zeros((b, self.page, self.kv_lora_rank), self.dtype, &self.device)?,
                Tensor::zeros((b, self.page, self.rope_dim), self.dtype, &self.device)?,
            )));
        }
        Ok(())
    }

    /// A second cache holding the same tokens, sharing every page until one of the two writes
    /// into it (copy-on-write, one page at a time): a fork costs no copy, and each cache then
    /// owns only the pages it wrote. Views taken before a write keep seeing the old page.
    pub fn fork(&self) -> LayerCache {
        self.clone()
    }

    /// Page `i` as a handle that keeps it alive and shared (see [`LayerCache::adopt_pages`]).
    pub fn share_page(&self, i: usize) -> Option<SharedPage> {
        self.pages.get(i).map(|p| SharedPage(p.clone()))
    }

    /// Makes this empty cache hold the first `len` tokens stored in `pages` (pages of another
    /// cache with the same shape, page size, dtype and batch), sharing them copy-on-write:
    /// e.g. a prompt prefix another sequence has already computed.
    pub fn adopt_pages(&mut self, pages: Vec<SharedPage>, len: usize) -> Result<()> {
        if !self.pages.is_empty() || !self.is_empty() {
            return Err(MlaError::Cache(
                "can only adopt pages into an empty cache".into(),
            ));
        }
        if len > pages.len() * self.page {
            return Err(MlaError::Cache(format!(
                "{len} tokens do not fit in {} pages of {}",
                pages.len(),
                self.page
            )));
        }
        let b = self.batch();
        for page in &pages {
            let (c, k) = &*page.0;
            if c.dims() != [b, self.page, self.kv_lora_rank]
                || k.dims() != [b, self.page, self.rope_dim]
                || c.dtype() != self.dtype
            {
                return Err(MlaError::Cache(format!(
                    "a page of shape {:?} / {:?} ({:?}) does not fit a cache of [{b}, {}, {}] / \
                     [{b}, {}, {}] ({:?})",
                    c.dims(),
                    k.dims(),
                    c.dtype(),
                    self.page,
                    self.kv_lora_rank,
                    self.page,
                    self.rope_dim,
                    self.dtype
                )));
            }
        }
        self.pages = pages.into_iter().map(|p| p.0).collect();
        self.lens.iter_mut().for_each(|l| *l = len);
        Ok(())
    }

    /// Pages allocated so far (each holds [`LayerCache::page_tokens`] tokens per sequence).
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// An identity per allocated page, equal for two caches exactly when they share the page
    /// (what a pool counting unique pages over many forked caches needs).
    pub fn page_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.pages.iter().map(|p| Arc::as_ptr(p) as usize)
    }

    /// Writes `c_kv` `[b, t, R]` / `k_pe` `[b, t, rope]` at token `pos` of sequences
    /// `first..first + b`, page by page (the pages must be reserved), first copying any page
    /// written into that a fork still shares.
    fn write(&mut self, first: usize, pos: usize, c_kv: &Tensor, k_pe: &Tensor) -> Result<()> {
        let (b, t) = (c_kv.dim(0)?, c_kv.dim(1)?);
        let mut done = 0;
        while done < t {
            let at = pos + done;
            let (page, offset) = (at / self.page, at % self.page);
            let n = (self.page - offset).min(t - done);
            if Arc::strong_count(&self.pages[page]) > 1 {
                let (pc, pk) = &*self.pages[page];
                self.pages[page] = Arc::new((pc.copy()?, pk.copy()?));
            }
            let (pc, pk) = &*self.pages[page];
            let (pc, pk) = if b == self.batch() {
                (pc.clone(), pk.clone())
            } else {
                (pc.narrow(0, first, b)?, pk.narrow(0, first, b)?)
            };
            pc.slice_set(&c_kv.narrow(1, done, n)?.contiguous()?, 1, offset)?;
            pk.slice_set(&k_pe.narrow(1, done, n)?.contiguous()?, 1, offset)?;
            done += n;
        }
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
        self.write(0, len, c_kv, k_pe)?;
        self.lens.iter_mut().for_each(|l| *l += t);
        Ok(())
    }

    /// Appends `t` tokens to sequence `i` only: `c_kv` `[1, t, R]`, `k_pe` `[1, t, rope]`.
    pub fn append_seq(&mut self, i: usize, c_kv: &Tensor, k_pe: &Tensor) -> Result<()> {
        let len = self.seq_len(i)?;
        let t = self.check_new(c_kv, k_pe, 1)?;
        self.reserve(len + t)?;
        self.write(i, len, c_kv, k_pe)?;
        self.lens[i] += t;
        Ok(())
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

    /// The cached keys of every sequence, in place, when all hold the same number of tokens.
    pub fn keys(&self) -> Result<LatentKeys> {
        let len = self.uniform_len().ok_or_else(|| {
            MlaError::Cache(format!(
                "keys need equal sequence lengths, found {:?}: use seq_keys",
                self.lens
            ))
        })?;
        self.range(0, self.batch(), len)
    }

    /// Sequence `i`'s cached keys, in place.
    pub fn seq_keys(&self, i: usize) -> Result<LatentKeys> {
        let len = self.seq_len(i)?;
        self.range(i, 1, len)
    }

    /// The cached `c_kv` `[B, len, R]` and `k_pe` `[B, len, rope]` when every sequence holds
    /// `len` tokens, as one tensor each (a copy when they span pages).
    pub fn views(&self) -> Result<(Tensor, Tensor)> {
        self.keys()?.to_contiguous()
    }

    /// Sequence `i`'s cached `c_kv` `[1, len_i, R]` and `k_pe` `[1, len_i, rope]`, as one
    /// tensor each (a copy when they span pages).
    pub fn seq(&self, i: usize) -> Result<(Tensor, Tensor)> {
        self.seq_keys(i)?.to_contiguous()
    }

    fn range(&self, first: usize, count: usize, len: usize) -> Result<LatentKeys> {
        let mut segments = Vec::with_capacity(len.div_ceil(self.page));
        for (p, page) in self.pages.iter().enumerate() {
            let (c, k) = &**page;
            let start = p * self.page;
            if start >= len {
                break;
            }
            let n = self.page.min(len - start);
            segments.push((
                c.narrow(0, first, count)?.narrow(1, 0, n)?,
                k.narrow(0, first, count)?.narrow(1, 0, n)?,
            ));
        }
        if segments.is_empty() {
            segments.push((
                Tensor::zeros((count, 0, self.kv_lora_rank), self.dtype, &self.device)?,
                Tensor::zeros((count, 0, self.rope_dim), self.dtype, &self.device)?,
            ));
        }
        Ok(LatentKeys { segments, len })
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

    /// Empty caches whose pages hold `tokens` tokens each ([`LayerCache::with_page_tokens`]).
    pub fn with_page_tokens(self, tokens: usize) -> Result<Self> {
        let layers = self
            .layers
            .into_iter()
            .map(|l| l.with_page_tokens(tokens))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Every layer forked ([`LayerCache::fork`]): the same tokens, pages shared copy-on-write.
    pub fn fork(&self) -> Self {
        self.clone()
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
