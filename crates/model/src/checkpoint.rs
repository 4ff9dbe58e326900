//! Checkpoints on disk: HF directories (sharded safetensors through
//! `model.safetensors.index.json`, or a single file) or llama.cpp GGUF files ([`crate::gguf`]),
//! memory-mapped, validated against the configuration, with FP8 e4m3 block weights and GGML
//! block formats kept as stored or dequantised at load as the [`Precision`] says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::precision::MatrixFormat;
pub use crate::precision::Precision;
use candle_nn::VarBuilder;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Side of the square FP8 scale blocks (`weight_block_size`).
pub const FP8_BLOCK: usize = 128;

/// Suffix of the per-block scales stored beside an FP8 weight.
const SCALE_SUFFIX: &str = "_scale_inv";

/// Where a tensor lives and what it looks like, read from the safetensors headers.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    /// The shard holding it.
    pub file: PathBuf,
    /// Stored dtype.
    pub dtype: DType,
    /// Stored shape (HF's: a GGUF tensor is described by the HF tensor it serves).
    pub shape: Vec<usize>,
    /// The GGML block format of a GGUF tensor stored block-quantised (`dtype` is then what it
    /// dequantises to, f32).
    pub ggml: Option<linear::GgmlDType>,
}

/// A memory-mapped checkpoint: an HF directory or a GGUF file.
pub struct Checkpoint {
    dir: PathBuf,
    store: Store,
    tensors: BTreeMap<String, TensorMeta>,
}

/// Where the tensors are read from.
enum Store {
    Safetensors(Shards),
    Gguf(GgufFile),
}

/// Safetensors shards mapped read-only, with every tensor's bytes located once at open.
///
/// Loading a tensor copies it out of the map (into the tensor's own storage, where the model
/// then converts or quantises it), and then tells the kernel this process no longer needs the
/// mapped pages (`MADV_DONTNEED`, [`release_mapped`]; GGUF files do the same). Without that, every page read at load stays resident in the
/// map for as long as the checkpoint is open, beside the copy: the process's resident memory
/// held the weights twice (a V2-Lite-shaped checkpoint of 4.3 GB measured 9.2 GB peak RSS
/// after a short prompt). The pages stay in the page cache, so a second load of the same
/// tensor reads them from memory, not disk.
struct Shards {
    maps: Vec<Arc<memmap2::Mmap>>,
    /// Tensor name → (shard, byte range in it, stored dtype).
    at: BTreeMap<String, (usize, std::ops::Range<usize>, safetensors::Dtype)>,
}

impl Shards {
    /// Copies `name` (shape `shape`) out of its shard and releases the mapped pages that lie
    /// wholly inside it.
    fn load(&self, name: &str, shape: &[usize]) -> candle_core::Result<Tensor> {
        use candle_core::safetensors::Load;
        let (shard, range, dtype) = self
            .at
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: not in any shard")))?;
        let map = &*self.maps[*shard];
        let view =
            safetensors::tensor::TensorView::new(*dtype, shape.to_vec(), &map[range.clone()])
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let t = view.load(&Device::Cpu)?;
        release_mapped(map, &map[range.clone()]);
        Ok(t)
    }
}

/// Drops the pages of `map` that lie wholly inside `bytes` (a slice of it whose values were
/// just copied out) from this process's resident set (`MADV_DONTNEED`); the page cache keeps
/// them. See [`Shards`] for why.
pub(crate) fn release_mapped(map: &memmap2::Mmap, bytes: &[u8]) {
    const PAGE: usize = 4096;
    let offset = bytes.as_ptr() as usize - map.as_ptr() as usize;
    let (start, end) = (
        offset.next_multiple_of(PAGE),
        (offset + bytes.len()) / PAGE * PAGE,
    );
    if end > start {
        // SAFETY: the map is read-only and file-backed, so dropping its pages loses nothing:
        // a later read faults them in again from the file. The caller holds its own copy of
        // the values. A failure only leaves the pages resident.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

impl Checkpoint {
    /// Opens `dir`: `model.safetensors.index.json` if present, else `model.safetensors`, else
    /// every `*.safetensors` file. Every shard is validated (header, offsets, file length), and
    /// every index entry must be found in the shard it names.
    ///
    /// A path to a file ending in `.gguf` opens a GGUF file instead ([`crate::gguf`]).
    pub fn open(dir: &Path) -> Result<Self> {
        if crate::gguf::is_gguf_file(dir) {
            let gguf = GgufFile::open(dir)?;
            return Ok(Self {
                dir: dir.to_path_buf(),
                tensors: gguf.metas(),
                store: Store::Gguf(gguf),
            });
        }
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let index_path = dir.join("model.safetensors.index.json");
        let index: Option<BTreeMap<String, String>> = if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                    path: index_path.clone(),
                    reason: format!("invalid JSON: {e}"),
                })?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    reason: "no weight_map object".into(),
                })?;
            Some(
                map.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
            )
        } else {
            None
        };
        let files: Vec<PathBuf> = match &index {
            Some(map) => map
                .values()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|f| dir.join(f))
                .collect(),
            None if dir.join("model.safetensors").is_file() => vec![dir.join("model.safetensors")],
            None => {
                let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| ModelError::io(dir, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                v.sort();
                v
            }
        };
        if files.is_empty() {
            return Err(ModelError::Safetensors {
                path: dir.to_path_buf(),
                reason: "no *.safetensors files".into(),
            });
        }
        let mut tensors = BTreeMap::new();
        let mut shards = Shards {
            maps: Vec::new(),
            at: BTreeMap::new(),
        };
        for file in &files {
            let (map, entries) = read_header(file)?;
            for (name, meta, bytes) in entries {
                shards
                    .at
                    .insert(name.clone(), (shards.maps.len(), bytes.0, bytes.1));
                tensors.insert(name, meta);
            }
            shards.maps.push(Arc::new(map));
        }
        if let Some(map) = &index {
            let wrong: Vec<String> = map
                .iter()
                .filter(|(name, file)| tensors.get(*name).is_none_or(|m| m.file != dir.join(file)))
                .map(|(name, file)| {
                    format!("{name}: listed in the index under {file}, not found there")
                })
                .collect();
            if !wrong.is_empty() {
                return Err(ModelError::Weights {
                    dir: dir.to_path_buf(),
                    problems: wrong,
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            store: Store::Safetensors(shards),
            tensors,
        })
    }

    /// The configuration: `config.json` in the directory, or a GGUF file's metadata.
    pub fn config(&self) -> Result<ModelConfig> {
        match &self.store {
            Store::Safetensors(_) => ModelConfig::from_file(&self.dir.join("config.json")),
            Store::Gguf(g) => {
                ModelConfig::from_json_str(g.config_json()).map_err(|e| e.in_file(&self.dir))
            }
        }
    }

    /// Whether this is a GGUF file.
    pub fn is_gguf(&self) -> bool {
        matches!(self.store, Store::Gguf(_))
    }

    /// The checkpoint directory (or GGUF file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every stored tensor.
    pub fn tensors(&self) -> &BTreeMap<String, TensorMeta> {
        &self.tensors
    }

    /// The checkpoint's matrix format: `F8E4M3` if any matrix is stored in FP8 blocks (an FP8
    /// release: DeepSeek's keep the embedding and the output head in bf16, which outweigh the
    /// FP8 layers in a model of few layers), else the dtype most of the matrix bytes are stored
    /// in; `None` for a checkpoint without matrices.
    pub fn matrix_dtype(&self) -> Option<DType> {
        let mut matrices = self.tensors.values().filter(|m| m.shape.len() == 2);
        if matrices.any(|m| m.dtype == DType::F8E4M3) {
            return Some(DType::F8E4M3);
        }
        let mut bytes: Vec<(DType, usize)> = Vec::new();
        for m in self.tensors.values().filter(|m| m.shape.len() == 2) {
            let b = m.shape.iter().product::<usize>() * m.dtype.size_in_bytes();
            match bytes.iter_mut().find(|(d, _)| *d == m.dtype) {
                Some((_, total)) => *total += b,
                None => bytes.push((m.dtype, b)),
            }
        }
        bytes.into_iter().max_by_key(|&(_, b)| b).map(|(d, _)| d)
    }

    /// Total bytes of stored tensor data.
    pub fn stored_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|m| m.shape.iter().product::<usize>() * m.dtype.size_in_bytes())
            .sum()
    }

    /// Loads `name` as `dtype` on `device`. FP8 weights are dequantised with their
    /// `weight_scale_inv` blocks first (in f32).
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let raw = self.load_raw(name)?;
        let t = if raw.dtype() == DType::F8E4M3 {
            let scale_name = format!("{name}{SCALE_SUFFIX}");
            if !self.tensors.contains_key(&scale_name) {
                return Err(ModelError::Weights {
                    dir: self.dir.clone(),
                    problems: vec![format!("{name}: FP8 weight without {scale_name}")],
                });
            }
            dequantize_fp8(&raw, &self.load_raw(&scale_name)?).map_err(|e| ModelError::Weights {
                dir: self.dir.clone(),
                problems: vec![format!("{name}: {e}")],
            })?
        } else {
            raw
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    fn load_raw(&self, name: &str) -> Result<Tensor> {
        if !self.tensors.contains_key(name) {
            return Err(ModelError::Weights {
                dir: self.dir.clone(),
                problems: vec![format!("{name}: missing")],
            });
        }
        match &self.store {
            Store::Safetensors(shards) => {
                let meta = &self.tensors[name];
                shards
                    .load(name, &meta.shape)
                    .map_err(|e| ModelError::Safetensors {
                        path: meta.file.clone(),
                        reason: format!("{name}: {e}"),
                    })
            }
            Store::Gguf(g) => g.load(name),
        }
    }

    /// A GGUF matrix's raw GGML blocks (`[N, bytes per row]` u8), if it is stored in a block
    /// format and served whole (not a joined `kv_b_proj`).
    fn ggml_blocks(&self, name: &str) -> Result<Option<Tensor>> {
        match &self.store {
            Store::Gguf(g) => g.blocks(name),
            Store::Safetensors(_) => Ok(None),
        }
    }

    /// The absorbed per-head blocks of the `kv_b_proj` named `name` as a GGUF file stores them
    /// apart ([`crate::gguf::GgufFile::kv_b_heads`]); `None` for safetensors checkpoints.
    pub fn kv_b_heads(&self, name: &str) -> Result<Option<crate::gguf::KvBHeads>> {
        match &self.store {
            Store::Gguf(g) => g.kv_b_heads(name),
            Store::Safetensors(_) => Ok(None),
        }
    }

    /// Compares the stored tensors with the `expected` (name, shape) list and returns ONE
    /// error listing every missing, unexpected and mis-shaped tensor. An FP8 weight's
    /// `weight_scale_inv` is expected with shape `[ceil(rows/128), ceil(cols/128)]`; names in
    /// `optional` may be present or absent.
    pub fn check(&self, expected: &[(String, Vec<usize>)], optional: &[String]) -> Result<()> {
        let mut problems = Vec::new();
        let mut known: BTreeSet<&str> = optional.iter().map(String::as_str).collect();
        for (name, shape) in expected {
            known.insert(name);
            let Some(meta) = self.tensors.get(name) else {
                problems.push(format!("{name}: missing (expected {shape:?})"));
                continue;
            };
            if &meta.shape != shape {
                problems.push(format!(
                    "{name}: expected {shape:?}, found {:?}",
                    meta.shape
                ));
            }
            if meta.dtype == DType::F8E4M3 {
                let scale = format!("{name}{SCALE_SUFFIX}");
                let want: Vec<usize> = shape.iter().map(|d| d.div_ceil(FP8_BLOCK)).collect();
                match self.tensors.get(&scale) {
                    None => problems.push(format!(
                        "{scale}: missing (FP8 weight needs block scales {want:?})"
                    )),
                    Some(m) if m.shape != want => {
                        problems.push(format!("{scale}: expected {want:?}, found {:?}", m.shape))
                    }
                    Some(_) => {}
                }
            }
        }
        for (name, meta) in &self.tensors {
            let scale_of = name.strip_suffix(SCALE_SUFFIX);
            let is_scale = scale_of.is_some_and(|w| {
                self.tensors
                    .get(w)
                    .is_some_and(|m| m.dtype == DType::F8E4M3)
            });
            if !known.contains(name.as_str()) && !is_scale {
                problems.push(format!(
                    "{name}: unexpected ({:?} {:?})",
                    meta.dtype, meta.shape
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Weights {
                dir: self.dir.clone(),
                problems,
            })
        }
    }

    /// A candle `VarBuilder` over this checkpoint that reads matrices as `precision.matrices`
    /// says ([`Precision::matrix_dtype`]; FP8 weights dequantised in f32 on the fly, except
    /// that under [`MatrixFormat::Fp8`] a request for e4m3, which is how `linear::Matrix::load`
    /// asks, returns them as shipped), FP8 block scales in f32, everything else (norms,
    /// biases) in `precision.compute`, and checks every requested shape.
    pub fn var_builder(
        self: &Arc<Self>,
        precision: impl Into<Precision>,
        device: &Device,
    ) -> VarBuilder<'static> {
        let precision = precision.into();
        let backend: Box<dyn SimpleBackend> = Box::new(Backend {
            checkpoint: Arc::clone(self),
            precision,
        });
        VarBuilder::from_backend(backend, precision.compute, device.clone())
    }
}

impl Checkpoint {
    /// The loader of the model's matrices ([`linear::MatrixLoader`]) for `precision` on
    /// `device`: with FP8 matrices kept as shipped on the CPU and [`Precision::mmap`], an FP8
    /// weight of a safetensors shard is used where it lies in the memory map
    /// ([`linear::Fp8Matrix::from_shared`]; its scales are read into memory, they are small);
    /// every other matrix is read through the `VarBuilder`, as [`Checkpoint::var_builder`] says.
    pub fn matrix_loader(
        self: &Arc<Self>,
        precision: impl Into<Precision>,
        device: &Device,
    ) -> CheckpointMatrices {
        let precision = precision.into();
        let in_place = precision.mmap
            && precision.matrices == MatrixFormat::Fp8
            && device.is_cpu()
            && matches!(self.store, Store::Safetensors(_));
        if in_place && precision.huge_pages {
            self.advise_maps_huge_pages();
        }
        CheckpointMatrices {
            checkpoint: Arc::clone(self),
            in_place,
        }
    }

    /// `MADV_HUGEPAGE` on every shard's whole map, before the weights used in place are first
    /// read: a page the page cache does not hold yet is then read in as a 2 MiB folio and
    /// mapped as one (Linux 6.18 on ext4 does), where advising each matrix alone covers only
    /// the 2 MiB pages inside it (a routed expert has one at most). Pages the cache already
    /// holds keep their size: the kernel collapses no file pages in place without
    /// `CONFIG_READ_ONLY_THP_FOR_FS` (`MADV_COLLAPSE` answers `EINVAL`).
    fn advise_maps_huge_pages(&self) {
        if let Store::Safetensors(shards) = &self.store {
            let spans = shards.maps.iter().map(|m| {
                let start = m.as_ptr() as usize;
                start..start + m.len()
            });
            linear::advise_huge_pages_ahead(spans.collect());
        }
    }

    /// The FP8 weight `name` over its bytes in the memory map, if it is one (stored e4m3,
    /// rank 2, with its scales beside it, in a safetensors shard).
    /// Its pages are advised with the whole map ([`Checkpoint::matrix_loader`]).
    fn mapped_fp8(&self, name: &str) -> Result<Option<linear::Fp8Matrix>> {
        let Store::Safetensors(shards) = &self.store else {
            return Ok(None);
        };
        let (Some(meta), Some((shard, range, _))) = (self.tensors.get(name), shards.at.get(name))
        else {
            return Ok(None);
        };
        let scale_name = format!("{name}{SCALE_SUFFIX}");
        let [n, k] = meta.shape[..] else {
            return Ok(None);
        };
        if meta.dtype != DType::F8E4M3 || !self.tensors.contains_key(&scale_name) {
            return Ok(None);
        }
        let invalid = |e: candle_core::Error| ModelError::Safetensors {
            path: meta.file.clone(),
            reason: format!("{name}: {e}"),
        };
        let owner: Arc<linear::ByteOwner> = shards.maps[*shard].clone();
        let bytes = linear::SharedBytes::new(owner, range.clone()).map_err(invalid)?;
        let scale = self.load(&scale_name, DType::F32, &Device::Cpu)?;
        let block = (FP8_BLOCK, FP8_BLOCK);
        let w = linear::Fp8Matrix::from_shared(bytes, (n, k), &scale, block).map_err(invalid)?;
        Ok(Some(w))
    }
}

/// [`Checkpoint::matrix_loader`]'s loader.
pub struct CheckpointMatrices {
    checkpoint: Arc<Checkpoint>,
    /// Whether FP8 weights are used in place.
    in_place: bool,
}

impl CheckpointMatrices {
    /// Whether FP8 weights are used where they lie in the memory map.
    pub fn in_place(&self) -> bool {
        self.in_place
    }
}

impl linear::MatrixLoader for CheckpointMatrices {
    fn load(&self, vb: &VarBuilder, name: &str) -> candle_core::Result<linear::Matrix> {
        if self.in_place {
            let full = match vb.prefix() {
                p if p.is_empty() => name.to_string(),
                p => format!("{p}.{name}"),
            };
            let mapped = self
                .checkpoint
                .mapped_fp8(&full)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            if let Some(w) = mapped {
                return Ok(w.into());
            }
        }
        linear::Matrix::load(vb, name)
    }
}

struct Backend {
    checkpoint: Arc<Checkpoint>,
    precision: Precision,
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &shape {
            candle_core::bail!("{name}: expected {:?}, found {:?}", shape.dims(), t.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let err = |e: ModelError| candle_core::Error::Msg(e.to_string());
        if let Some(ty) = self.ggml_sibling(name) {
            return Tensor::new(&[linear::ggml_type_id(ty)], &Device::Cpu);
        }
        let meta = self.checkpoint.tensors.get(name);
        if dtype == DType::U8
            && meta.is_some_and(|m| m.ggml.is_some())
            && self.precision.matrices == MatrixFormat::Ggml
        {
            if let Some(blocks) = self.checkpoint.ggml_blocks(name).map_err(err)? {
                return Ok(blocks);
            }
        }
        let stored = meta.map(|m| m.dtype);
        let is_matrix = !name.ends_with(SCALE_SUFFIX) && meta.is_some_and(|m| m.shape.len() == 2);
        let t = if is_matrix
            && dtype == DType::F8E4M3
            && stored == Some(DType::F8E4M3)
            && self.precision.matrices == MatrixFormat::Fp8
        {
            self.checkpoint
                .load_raw(name)
                .map_err(err)?
                .to_device(dev)?
        } else if is_matrix {
            let dtype = self.precision.matrix_dtype(stored.unwrap_or(dtype));
            self.checkpoint.load(name, dtype, dev).map_err(err)?
        } else if name.ends_with(SCALE_SUFFIX) {
            self.checkpoint.load(name, DType::F32, dev).map_err(err)?
        } else {
            self.checkpoint.load(name, dtype, dev).map_err(err)?
        };
        // Decode streams every matrix once per token: huge pages spare a TLB miss per 4 KiB.
        if is_matrix && self.precision.huge_pages {
            linear::advise_huge_pages(&t);
        }
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.checkpoint.tensors.contains_key(name) || self.ggml_sibling(name).is_some()
    }
}

impl Backend {
    /// For `{weight}_ggml_type` ([`linear::GGML_TYPE_SUFFIX`]): the weight's GGML block format,
    /// if it has one (which tells `linear::Matrix::load` to ask for the raw blocks).
    fn ggml_sibling(&self, name: &str) -> Option<linear::GgmlDType> {
        let weight = name.strip_suffix(linear::GGML_TYPE_SUFFIX)?;
        self.checkpoint.tensors.get(weight)?.ggml
    }
}

/// One shard's tensors: name, metadata, and (byte range in the shard, stored dtype).
type ShardEntries = Vec<(
    String,
    TensorMeta,
    (std::ops::Range<usize>, safetensors::Dtype),
)>;

/// Maps one shard and reads and validates its header: every tensor's offsets must lie inside
/// the file (a truncated download fails here, naming the file).
fn read_header(path: &Path) -> Result<(memmap2::Mmap, ShardEntries)> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is mapped read-only; like every safetensors loader we rely on it not
    // being modified while the checkpoint is open.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file (truncated?): {e}"),
    })?;
    let base = mmap.as_ptr() as usize;
    let entries = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = DType::try_from(view.dtype()).map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                reason: format!("{name}: {e}"),
            })?;
            let start = view.data().as_ptr() as usize - base;
            let bytes = (start..start + view.data().len(), view.dtype());
            let meta = TensorMeta {
                file: path.to_path_buf(),
                dtype,
                shape: view.shape().to_vec(),
                ggml: None,
            };
            Ok((name, meta, bytes))
        })
        .collect::<Result<_>>()?;
    drop(st);
    Ok((mmap, entries))
}

/// Dequantises a block-FP8 weight: `W[i, j] = q[i, j] · scale[i / 128, j / 128]`, in f32.
/// Edge blocks may be partial (dimensions need not be multiples of 128).
pub fn dequantize_fp8(q: &Tensor, scale_inv: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, cols) = q.dims2()?;
    let (br, bc) = scale_inv.dims2()?;
    if br != rows.div_ceil(FP8_BLOCK) || bc != cols.div_ceil(FP8_BLOCK) {
        candle_core::bail!(
            "weight_scale_inv: expected [{}, {}] for a [{rows}, {cols}] weight, found [{br}, {bc}]",
            rows.div_ceil(FP8_BLOCK),
            cols.div_ceil(FP8_BLOCK)
        );
    }
    let device = q.device();
    let row_block: Vec<u32> = (0..rows).map(|i| (i / FP8_BLOCK) as u32).collect();
    let col_block: Vec<u32> = (0..cols).map(|j| (j / FP8_BLOCK) as u32).collect();
    let scale = scale_inv
        .to_dtype(DType::F32)?
        .index_select(&Tensor::new(row_block, device)?, 0)?
        .index_select(&Tensor::new(col_block, device)?, 1)?;
    q.to_dtype(DType::F32)? * scale
}
