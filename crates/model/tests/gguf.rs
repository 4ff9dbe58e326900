#![allow(clippy::disallowed_methods)] // tests read results on the host
//! GGUF files written by llama.cpp's own converter and quantiser
//! (`tests/reference/gguf_fixtures.sh`), read by the model crate.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use fixtures::{assert_close, fixtures_dir, Case};
use model::checkpoint::Checkpoint;
use model::{DeepSeek, MatrixFormat, Precision};

/// GGUF metadata as (key, value) pairs.
type Metadata = Vec<(String, gguf_file::Value)>;

fn gguf(name: &str) -> PathBuf {
    fixtures_dir().join("gguf").join(name)
}

fn load(path: &Path, precision: Option<Precision>) -> DeepSeek {
    let r = match precision {
        Some(p) => DeepSeek::load(path, p, &Device::Cpu),
        None => DeepSeek::load_auto(path, DType::F32, &Device::Cpu),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A copy of the v3_noaux fixture in `dir` with `mscale = mscale_all_dim` (1.0 / 0.8 there):
/// the model a GGUF file describes (one YaRN factor; see `model::gguf`).
fn v3_noaux_as_gguf_reads_it(dir: &Path) {
    let case = Case::load("v3_noaux");
    for entry in std::fs::read_dir(&case.dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let all_dim = cfg["rope_scaling"]["mscale_all_dim"].clone();
    cfg["rope_scaling"]["mscale"] = all_dim;
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
}

/// A lossless (f32) GGUF of a V2 fixture gives HF's logits, prefill and decode.
#[test]
fn f32_gguf_matches_hf() {
    let case = Case::load("v2_group_limited");
    let model = load(&gguf("v2_group_limited-f32.gguf"), None);
    let ids = case.ids("input_ids");
    let want = case.tensor("prefill.logits");
    assert_close(&model.logits(&ids).unwrap(), &want, 1e-4, "gguf prefill");
    let decoded = common::decode_each(&model, &ids);
    assert_close(&decoded, &want, 1e-4, "gguf decode");
}

/// A V3 GGUF (q_lora, noaux_tc router with its bias, split attn_k_b / attn_v_b) equals the
/// safetensors model read the way GGUF can describe it: GGUF keeps one YaRN factor
/// (`yarn_log_multiplier = 0.1 · mscale_all_dim`), so `mscale` is `mscale_all_dim` there (as
/// llama.cpp computes it); this fixture has 1.0 / 0.8, so its config is edited to match.
#[test]
fn v3_gguf_matches_the_safetensors_model() {
    let case = Case::load("v3_noaux");
    let dir = tempfile::tempdir().unwrap();
    v3_noaux_as_gguf_reads_it(dir.path());
    let ids = case.ids("input_ids");
    let want = load(dir.path(), None).logits(&ids).unwrap();
    let got = load(&gguf("v3_noaux-f32.gguf"), None).logits(&ids).unwrap();
    assert_close(&got, &want, 1e-4, "v3 gguf vs safetensors");
}

/// llama-quantize's Q8_0 blocks load as this crate's Q8 matrices with nothing requantised:
/// every projection holds exactly the values of the same file dequantised to f32
/// (`--matrices f32`); the logits are close to the f32 file's model (8-bit weights, and 8-bit
/// activations in products of up to 32 rows: within 0.5 on these logits).
#[test]
fn q8_0_gguf_keeps_its_blocks() {
    for name in ["v2_group_limited", "v3_noaux"] {
        let path = gguf(&format!("{name}-Q8_0.gguf"));
        let kept = load(&path, None);
        assert_eq!(kept.precision().matrices, MatrixFormat::Ggml);
        let formats: Vec<&str> = kept
            .layers()
            .iter()
            .flat_map(|l| {
                let w = l.attention().weights();
                [w.kv_a_proj_with_mqa.format(), w.o_proj.format()]
            })
            .collect();
        assert!(formats.contains(&"q8"), "{name}: {formats:?}");
        let dequantised = load(&path, Some(Precision::from(DType::F32)));
        same_matrices(&kept, &dequantised, name);
        // The absorbed blocks: `attn_v_b` (Q8_0) as stored, `attn_k_b` (f16, its rows of 16
        // are not whole Q8_0 blocks) as the f16 half; both f32 when dequantised.
        let absorbed = |m: &DeepSeek| -> usize {
            m.layers()
                .iter()
                .map(|l| {
                    let a = l.attention();
                    a.decode_weight_bytes() + a.weights().kv_b_proj.bytes() - a.weights().bytes()
                })
                .sum()
        };
        let (stored, f32_blocks) = (absorbed(&kept), absorbed(&dequantised));
        assert!(
            4 * stored < 3 * f32_blocks,
            "{name}: {stored} against {f32_blocks}"
        );
        let ids = Case::load(name).ids("input_ids");
        let a = kept.logits(&ids).unwrap();
        // Against the lossless file (HF's model, up to GGUF's YaRN reading for v3_noaux).
        let f32_model = load(&gguf(&format!("{name}-f32.gguf")), None);
        assert_close(&a, &f32_model.logits(&ids).unwrap(), 0.5, name);
    }
}

/// Every GGUF tensor of a file, read back (to write edited copies).
fn read_all(
    path: &Path,
) -> (
    gguf_file::Content,
    Vec<(String, candle_core::quantized::QTensor)>,
) {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|n| {
            let t = content.tensor(&mut f, &n, &Device::Cpu).unwrap();
            (n, t)
        })
        .collect();
    (content, tensors)
}

fn write(path: &Path, metadata: &Metadata, tensors: &[(String, candle_core::quantized::QTensor)]) {
    let md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// Where tensor `name`'s info in a GGUF header continues after its name: its dimension
/// count (u32), dimensions (u64 each, innermost first), type (u32), data offset (u64).
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .unwrap_or_else(|| panic!("{name} not in the header"));
    at + key.len()
}

fn open_err(path: &Path) -> String {
    match Checkpoint::open(path) {
        Ok(_) => panic!("{}: opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_files_name_the_key_or_tensor() {
    let src = gguf("v2_group_limited-f32.gguf");
    let (content, tensors) = read_all(&src);
    let dir = tempfile::tempdir().unwrap();
    let metadata = |edit: &dyn Fn(&mut Metadata)| {
        let mut md: Metadata = content
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        edit(&mut md);
        md
    };

    let other = dir.path().join("llama.gguf");
    let md = metadata(&|md| {
        for (k, v) in md.iter_mut() {
            if k == "general.architecture" {
                *v = gguf_file::Value::String("llama".into());
            }
        }
    });
    write(&other, &md, &tensors);
    let e = open_err(&other);
    assert!(
        e.contains("general.architecture") && e.contains("llama"),
        "{e}"
    );

    let no_experts = dir.path().join("no_experts.gguf");
    let md = metadata(&|md| md.retain(|(k, _)| k != "deepseek2.expert_count"));
    write(&no_experts, &md, &tensors);
    let e = open_err(&no_experts);
    assert!(e.contains("deepseek2.expert_count: missing"), "{e}");

    let extra = dir.path().join("extra.gguf");
    let mut more = read_all(&src).1;
    let (_, norm) = read_all(&src)
        .1
        .into_iter()
        .find(|(n, _)| n == "blk.0.attn_norm.weight")
        .unwrap();
    more.push(("blk.0.mystery.weight".into(), norm));
    write(&extra, &metadata(&|_| {}), &more);
    let e = open_err(&extra);
    assert!(e.contains("blk.0.mystery.weight"), "{e}");

    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).unwrap();
    let e = open_err(&cut);
    assert!(e.contains("past the end of the file"), "{e}");

    // A hostile data offset that wraps past usize::MAX, and a quantised row that does not
    // split into whole blocks (dimensions rewritten in the header), name their tensor.
    let name = "blk.0.attn_kv_a_mqa.weight";
    let at = tensor_info_at(&bytes, name);
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let offset_at = at + 4 + 8 * n_dims + 4;
    let mut wrapped = bytes.clone();
    wrapped[offset_at..offset_at + 8].copy_from_slice(&(u64::MAX - 64).to_le_bytes());
    let wrap = dir.path().join("wrap.gguf");
    std::fs::write(&wrap, &wrapped).unwrap();
    let e = open_err(&wrap);
    assert!(e.contains(name) && e.contains("offset"), "{e}");
    let q8 = std::fs::read(gguf("v3_noaux-Q8_0.gguf")).unwrap();
    let at = tensor_info_at(&q8, name);
    let mut odd = q8.clone();
    odd[at + 4..at + 12].copy_from_slice(&33u64.to_le_bytes()); // ne[0]: the row length
    let odd_rows = dir.path().join("odd_rows.gguf");
    std::fs::write(&odd_rows, &odd).unwrap();
    let e = open_err(&odd_rows);
    assert!(e.contains(name) && e.contains("blocks of 32"), "{e}");

    // A missing tensor is reported by the checkpoint check, one line per name.
    let missing = dir.path().join("missing.gguf");
    let fewer: Vec<_> = read_all(&src)
        .1
        .into_iter()
        .filter(|(n, _)| n != "blk.1.ffn_up_exps.weight")
        .collect();
    write(&missing, &metadata(&|_| {}), &fewer);
    let e = DeepSeek::load_auto(&missing, DType::F32, &Device::Cpu)
        .err()
        .expect("loaded without experts")
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.experts.0.up_proj.weight: missing"),
        "{e}"
    );
}

/// Every projection of `a` holds exactly the values of the same projection of `b`.
fn same_matrices(a: &DeepSeek, b: &DeepSeek, what: &str) {
    let all = |m: &DeepSeek| -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (l, layer) in m.layers().iter().enumerate() {
            let w = layer.attention().weights();
            for (n, x) in [("kv_a", &w.kv_a_proj_with_mqa), ("o", &w.o_proj)] {
                out.push((format!("{l}.{n} {}", x.format()), x.dequantize().unwrap()));
            }
            let mlps: Vec<&moe::Mlp> = match layer.ffn() {
                model::model::Ffn::Dense(d) => vec![d],
                model::model::Ffn::Moe(moe) => (0..moe.experts().len())
                    .map(|e| moe.experts().expert(e))
                    .chain(moe.shared())
                    .collect(),
            };
            for (i, mlp) in mlps.iter().enumerate() {
                for (j, x) in mlp.matrices().iter().enumerate() {
                    out.push((
                        format!("{l}.mlp{i}.{j} {}", x.format()),
                        x.dequantize().unwrap(),
                    ));
                }
            }
        }
        out
    };
    let (x, y) = (all(a), all(b));
    assert_eq!(x.len(), y.len(), "{what}");
    for ((n1, t1), (n2, t2)) in x.iter().zip(&y) {
        let d = fixtures::max_abs_diff(t1, t2);
        assert_eq!(d, 0.0, "{what}: {n1} vs {n2} differ by {d}");
    }
}

/// `model quantize`'s files reload the quantised model with nothing requantised: every
/// projection holds the values `--matrices q8|q4` computes from the source. (The logits are
/// not compared: these fixtures' 24-wide expert rows are not whole GGML blocks, so they are
/// stored as f32 values and multiplied without the 8-bit activation rounding of quantised
/// products of up to 32 rows, and on these tiny random models that moves routing decisions.)
#[test]
fn quantized_files_reload_the_quantised_model() {
    let dir = tempfile::tempdir().unwrap();
    let v3 = dir.path().join("v3_noaux");
    std::fs::create_dir(&v3).unwrap();
    v3_noaux_as_gguf_reads_it(&v3);
    let v2 = Case::load("v2_group_limited").dir;
    for (src, name) in [
        (v2.as_path(), "v2_group_limited"),
        (v3.as_path(), "v3_noaux"),
    ] {
        for format in linear::QuantFormat::ALL {
            let what = format!("{name} {format}");
            let out = dir.path().join(format!("{name}-{format}.gguf"));
            let checkpoint = Checkpoint::open(src).unwrap();
            let mut last = (0, 0);
            model::gguf::write_quantized(&checkpoint, format, &out, |i, n| last = (i, n)).unwrap();
            assert!(last.0 == last.1 && last.1 > 0, "{what}: progress {last:?}");
            let reloaded = load(&out, None);
            let direct = load(
                src,
                Some(Precision::mixed(DType::F32, MatrixFormat::Quant(format))),
            );
            same_matrices(&reloaded, &direct, &what);
        }
    }
    // A YaRN setting GGUF cannot express is refused, naming the field.
    let checkpoint = Checkpoint::open(&Case::load("v3_noaux").dir).unwrap();
    let out = dir.path().join("refused.gguf");
    let e = model::gguf::write_quantized(&checkpoint, linear::QuantFormat::Q8, &out, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_scaling"), "{e}");
}

/// The v3_rope_half fixture (`rope_interleave: false`) copied to `dir` as GGUF reads it
/// (`mscale = mscale_all_dim`), with `edit` applied to its weights and config.
fn rope_half_copy(
    dir: &Path,
    edit: impl Fn(&mut std::collections::HashMap<String, Tensor>, &mut serde_json::Value),
) {
    let src = Case::load("v3_rope_half").dir;
    let mut tensors = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("model-") && name.ends_with(".safetensors") {
            tensors.extend(candle_core::safetensors::load(&p, &Device::Cpu).unwrap());
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let all_dim = cfg["rope_scaling"]["mscale_all_dim"].clone();
    cfg["rope_scaling"]["mscale"] = all_dim;
    edit(&mut tensors, &mut cfg);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

/// A checkpoint with half-split rotary pairs (`rope_interleave: false`) is quantised into the
/// file llama.cpp's interleaved rotation reads as the same model: byte for byte the file of
/// its interleaved twin (the query and `kv_a_proj_with_mqa` rotary rows `(i, i + d/2)` moved
/// to `(2i, 2i + 1)`), and the twin is the same model (the same logits, in f32).
#[test]
fn half_split_rotary_rows_are_quantised_as_interleaved_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (half, twin) = (dir.path().join("half"), dir.path().join("twin"));
    std::fs::create_dir(&half).unwrap();
    std::fs::create_dir(&twin).unwrap();
    rope_half_copy(&half, |_, _| {});
    rope_half_copy(&twin, |tensors, cfg| {
        let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let (heads, nope, d, rank) = (
            n("num_attention_heads"),
            n("qk_nope_head_dim"),
            n("qk_rope_head_dim"),
            n("kv_lora_rank"),
        );
        // Each block's rotary rows, from `before` on, interleaved: i, i + d/2, i + 1, ...
        let interleave = |w: &Tensor, blocks: usize, before: usize| -> Tensor {
            let per = before + d;
            let mut rows = Vec::new();
            for b in 0..blocks {
                rows.push(w.narrow(0, b * per, before).unwrap());
                for i in 0..d / 2 {
                    for j in [i, i + d / 2] {
                        rows.push(w.narrow(0, b * per + before + j, 1).unwrap());
                    }
                }
            }
            Tensor::cat(&rows, 0).unwrap()
        };
        for (name, w) in tensors.iter_mut() {
            if name.ends_with("self_attn.q_proj.weight") {
                *w = interleave(w, heads, nope);
            } else if name.ends_with("self_attn.kv_a_proj_with_mqa.weight") {
                *w = interleave(w, 1, rank);
            }
        }
        cfg["rope_interleave"] = serde_json::Value::Bool(true);
    });
    let ids = Case::load("v3_rope_half").ids("input_ids");
    let (a, b) = (load(&half, None), load(&twin, None));
    assert_close(
        &a.logits(&ids).unwrap(),
        &b.logits(&ids).unwrap(),
        1e-5,
        "the interleaved twin",
    );
    let write = |src: &Path, name: &str| -> Vec<u8> {
        let out = dir.path().join(name);
        let checkpoint = Checkpoint::open(src).unwrap();
        model::gguf::write_quantized(&checkpoint, linear::QuantFormat::Q8, &out, |_, _| {})
            .unwrap();
        std::fs::read(out).unwrap()
    };
    let (from_half, from_twin) = (write(&half, "half.gguf"), write(&twin, "twin.gguf"));
    assert!(from_half == from_twin, "the two files differ");
}

/// A GGUF from before llama.cpp split MLA: one `attn_kv_b` `[H·(nope + v), rank]` in Q8_0
/// blocks, and the per-head widths under `key_length` / `value_length` (made here from the
/// split Q8_0 fixture). It loads, its `kv_b_proj` is dequantised once (so both attention paths
/// multiply by the same values: `mla`'s `block_quantised_kv_b_proj_equals_its_dequantised_twin`),
/// prefill and token-by-token decode agree, and its logits are close to the lossless file's.
#[test]
fn older_gguf_with_a_whole_attn_kv_b_in_blocks() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let name = "v2_group_limited";
    let (content, tensors) = read_all(&gguf(&format!("{name}-Q8_0.gguf")));
    let md = |k: &str| {
        content.metadata[&format!("deepseek2.{k}")]
            .to_u32()
            .unwrap() as usize
    };
    let (h, n, v) = (
        md("attention.head_count"),
        md("attention.key_length_mla") - md("rope.dimension_count"),
        md("attention.value_length_mla"),
    );
    let rope = md("rope.dimension_count");
    let split =
        |name: &str| name.ends_with(".attn_k_b.weight") || name.ends_with(".attn_v_b.weight");
    let values: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(name, _)| split(name))
        .map(|(name, t)| (name.clone(), t.dequantize(&Device::Cpu).unwrap()))
        .collect();
    let mut joined = Vec::new();
    for (tensor, t) in tensors {
        let Some(layer) = tensor.strip_suffix(".attn_k_b.weight") else {
            if !split(&tensor) {
                joined.push((tensor, t));
            }
            continue;
        };
        // [H, rank, nope] -> [H, nope, rank], then the value rows [H, v, rank] after them.
        let k = values[&tensor].transpose(1, 2).unwrap();
        let vb = &values[&format!("{layer}.attn_v_b.weight")];
        let rank = vb.dim(2).unwrap();
        let kv_b = Tensor::cat(&[&k, vb], 1)
            .unwrap()
            .reshape((h * (n + v), rank))
            .unwrap();
        let q = QTensor::quantize(&kv_b, GgmlDType::Q8_0).unwrap();
        joined.push((format!("{layer}.attn_kv_b.weight"), q));
    }
    let mut metadata: Metadata = content
        .metadata
        .iter()
        .filter(|(k, _)| !k.ends_with("_mla"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, value) in metadata.iter_mut() {
        match k.as_str() {
            "deepseek2.attention.key_length" => *value = gguf_file::Value::U32((n + rope) as u32),
            "deepseek2.attention.value_length" => *value = gguf_file::Value::U32(v as u32),
            "deepseek2.attention.head_count_kv" => *value = gguf_file::Value::U32(h as u32),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("older.gguf");
    write(&path, &metadata, &joined);

    let model = load(&path, None);
    for layer in model.layers() {
        assert_eq!(layer.attention().weights().kv_b_proj.format(), "f32");
    }
    let ids = Case::load(name).ids("input_ids");
    let prefill = model.logits(&ids).unwrap();
    let decoded = common::decode_each(&model, &ids);
    assert_close(&decoded, &prefill, 1e-3, "older gguf: decode vs prefill");
    let f32_model = load(&gguf(&format!("{name}-f32.gguf")), None);
    assert_close(
        &prefill,
        &f32_model.logits(&ids).unwrap(),
        0.5,
        "older gguf",
    );
}

/// Random damage to a GGUF header (bytes, lengths and offsets set to extremes) gives an error
/// or a model that runs, never a panic: the class of bug behind a wrapped data offset.
#[test]
fn damaged_gguf_headers_are_errors_not_panics() {
    use rand::{Rng, SeedableRng};
    let src = std::fs::read(gguf("v3_noaux-Q8_0.gguf")).unwrap();
    // The header (metadata and tensor infos) ends before the first tensor's data.
    let header = src.len().min(12_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.gguf");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..400 {
        let mut b = src.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..header - 8);
            match rng.random_range(0..4) {
                0 => b[at] = rng.random(),
                1 => b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes()),
                2 => {
                    b[at..at + 8].copy_from_slice(&(1u64 << rng.random_range(8..40)).to_le_bytes())
                }
                _ => b[at..at + 4].copy_from_slice(&0u32.to_le_bytes()),
            }
        }
        std::fs::write(&path, &b).unwrap();
        let run = std::panic::catch_unwind(|| {
            if let Ok(m) = DeepSeek::load_auto(&path, DType::F32, &Device::Cpu) {
                let _ = m.logits(&[1, 2, 3]);
            }
        });
        assert!(run.is_ok(), "damaged header {i} panicked");
    }
}

/// A GGUF split by llama.cpp's `gguf-split` (three parts, the metadata in the first), opened
/// from any of its parts, is the model of the whole file: the same logits, bit for bit. A
/// missing part, a part from another split and a renamed first part are errors naming the file.
#[test]
fn split_gguf_files_load_as_the_whole_file() {
    let whole = load(&gguf("v3_noaux-Q8_0.gguf"), None);
    let part = |k: usize| gguf(&format!("split/v3_noaux-Q8_0-0000{k}-of-00003.gguf"));
    let ids = [5u32, 6, 7, 8, 9];
    let want = whole.logits(&ids).unwrap();
    for k in [1, 3] {
        let split = load(&part(k), None);
        let got = split.logits(&ids).unwrap();
        assert_close(&got, &want, 0.0, &format!("split opened from part {k}"));
    }

    let dir = tempfile::tempdir().unwrap();
    let copy = |k: usize, name: &str| std::fs::copy(part(k), dir.path().join(name)).unwrap();
    copy(1, "m-00001-of-00003.gguf");
    copy(2, "m-00002-of-00003.gguf");
    let e = open_err(&dir.path().join("m-00001-of-00003.gguf"));
    assert!(e.contains("m-00003-of-00003.gguf"), "{e}");
    copy(2, "m-00003-of-00003.gguf");
    let e = open_err(&dir.path().join("m-00001-of-00003.gguf"));
    assert!(
        e.contains("m-00003-of-00003.gguf") && e.contains("split.no"),
        "{e}"
    );
    copy(1, "renamed.gguf");
    let e = open_err(&dir.path().join("renamed.gguf"));
    assert!(e.contains("split.count is 3"), "{e}");
}

/// `tokenizer.ggml.*` metadata for the HF tokenizer in `dir`, written as llama.cpp's converter
/// writes it (`_set_vocab_gpt2`: every id's token, type 3 for special added tokens and those
/// that look special, 4 for other added ones, 1 for the rest, 5 for ids without a token; the
/// merges as "a b"), with the
/// given pre-tokenizer name. Checked by hand against the converter's own output for the real
/// DeepSeek-V3 tokenizer (`convert_hf_to_gguf.py --vocab-only`): the same tokens, types and
/// merges.
fn tokenizer_metadata(dir: &Path, pre: &str, vocab_size: usize) -> Metadata {
    use gguf_file::Value as V;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    for (token, id) in json["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = Some((token.clone(), 1));
    }
    for added in json["added_tokens"].as_array().unwrap() {
        let content = added["content"].as_str().unwrap();
        // The converter's `does_token_look_special`: DeepSeek's `<｜...｜>` are control tokens
        // even where tokenizer.json says `special: false`.
        let looks_special = content.starts_with("<｜") && content.ends_with("｜>")
            || content.starts_with("<|") && content.ends_with("|>");
        let ty = if added["special"] == true || looks_special {
            3
        } else {
            4
        };
        tokens[added["id"].as_u64().unwrap() as usize] = Some((content.to_string(), ty));
    }
    let (names, types): (Vec<V>, Vec<V>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (name, ty) = t.unwrap_or((format!("[PAD{i}]"), 5));
            (V::String(name), V::I32(ty))
        })
        .unzip();
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => V::String(s.clone()),
            pair => V::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )),
        })
        .collect();
    let special = |key: &str| {
        let text = config[key]
            .as_str()
            .or(config[key]["content"].as_str())
            .unwrap();
        let id = names
            .iter()
            .position(|n| matches!(n, V::String(s) if s == text))
            .unwrap();
        V::U32(id as u32)
    };
    vec![
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String(pre.into())),
        ("tokenizer.ggml.bos_token_id".into(), special("bos_token")),
        ("tokenizer.ggml.eos_token_id".into(), special("eos_token")),
        (
            "tokenizer.ggml.add_bos_token".into(),
            V::Bool(config["add_bos_token"].as_bool().unwrap_or(false)),
        ),
        (
            "tokenizer.chat_template".into(),
            V::String(config["chat_template"].as_str().unwrap().into()),
        ),
        ("tokenizer.ggml.tokens".into(), V::Array(names)),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        ("tokenizer.ggml.merges".into(), V::Array(merges)),
    ]
}

/// Texts to tokenize: the shared benchmark questions and real model outputs when present, and
/// a few hand-picked edge cases (special tokens, think tags, whitespace runs, digits, CJK,
/// kana, Greek, emoji) always.
fn tokenizer_texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "<｜begin▁of▁sentence｜>hi<｜User｜>x<think>\n</think>  \t\r\n 12345 深度求索 こんにちは カタカナ ǅ Ωmega 🚀",
        "def f(x):\n    return x**2  # 1234567\n\n\n",
        "   leading spaces, trailing spaces   ",
        "",
    ]
    .map(String::from)
    .to_vec();
    if let Some(data) = fixtures::shared_data_dir() {
        for file in ["math500.jsonl", "real_outputs/skythought_math.jsonl"] {
            let Ok(text) = std::fs::read_to_string(data.join(file)) else {
                continue;
            };
            for line in text.lines().take(200) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                texts.extend(
                    v.as_object()
                        .unwrap()
                        .values()
                        .filter_map(|x| x.as_str().map(String::from)),
                );
            }
        }
    }
    texts
}

/// The tokenizer inside a GGUF file: the fixture model with the tiny tokenizer's metadata
/// added loads it with no tokenizer.json anywhere, and it encodes, decodes and templates as
/// the HF tokenizer does; with the real DeepSeek-V3 tokenizer (fetched by
/// scripts/fetch-tokenizer.sh; skipped without it) the same over the shared data's texts.
/// An unknown pre-tokenizer is an error naming the key.
#[test]
fn gguf_files_carry_their_tokenizer() {
    use model::{ChatOptions, Message, Tokenizer};
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixtures_dir().join("tiny_tokenizer");
    let (content, tensors) = read_all(&gguf("v3_noaux-Q8_0.gguf"));
    let with_tokenizer = |pre: &str, tokenizer_dir: &Path, vocab: usize, name: &str| {
        let mut md: Metadata = content
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        md.extend(tokenizer_metadata(tokenizer_dir, pre, vocab));
        let path = dir.path().join(name);
        write(&path, &md, if vocab == 256 { &tensors } else { &[] });
        path
    };
    let texts = tokenizer_texts();
    let same = |hf: &Tokenizer, ours: &Tokenizer, what: &str| {
        assert_eq!(
            (hf.bos_id(), hf.eos_id()),
            (ours.bos_id(), ours.eos_id()),
            "{what}"
        );
        for t in &texts {
            let ids = hf.encode(t).unwrap();
            assert_eq!(ours.encode(t).unwrap(), ids, "{what}: {t:?}");
            assert_eq!(
                ours.decode(&ids).unwrap(),
                hf.decode(&ids).unwrap(),
                "{what}"
            );
        }
        let chat = [
            Message::new("system", "Be brief."),
            Message::new("user", "1+1?"),
        ];
        let opts = ChatOptions::default();
        assert_eq!(
            ours.apply_chat_template(&chat, opts).unwrap(),
            hf.apply_chat_template(&chat, opts).unwrap(),
            "{what}"
        );
    };

    // The model file, alone in its directory: for_model finds the tokenizer inside.
    let model_file = with_tokenizer("deepseek-v3", &tiny, 256, "model.gguf");
    let ours = Tokenizer::for_model(&model_file, None)
        .unwrap()
        .expect("a tokenizer");
    same(&Tokenizer::from_dir(&tiny).unwrap(), &ours, "tiny");
    load(&model_file, None);

    // V2's pre-tokenizer (llama.cpp's regexes) compiles and, with no merges, gives the same ids.
    let v2 = with_tokenizer("deepseek-llm", &tiny, 256, "v2.gguf");
    same(
        &Tokenizer::from_dir(&tiny).unwrap(),
        &Tokenizer::from_gguf(&v2).unwrap().expect("a tokenizer"),
        "tiny deepseek-llm",
    );

    let bad = with_tokenizer("qwen2", &tiny, 256, "qwen.gguf");
    let e = Tokenizer::from_gguf(&bad).err().expect("read").to_string();
    assert!(e.contains("tokenizer.ggml.pre is 'qwen2'"), "{e}");

    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/deepseek-v3-tokenizer");
    if !real.join("tokenizer.json").is_file() {
        println!("SKIP: no DeepSeek-V3 tokenizer (scripts/fetch-tokenizer.sh)");
        return;
    }
    let v3 = with_tokenizer("deepseek-v3", &real, 129_280, "v3-vocab.gguf");
    let ours = Tokenizer::from_gguf(&v3).unwrap().expect("a tokenizer");
    same(&Tokenizer::from_dir(&real).unwrap(), &ours, "deepseek-v3");
}
