#![allow(clippy::disallowed_methods)] // tests read results on the host
//! GGUF files written by llama.cpp's own converter and quantiser
//! (`tests/reference/gguf_fixtures.sh`), read by the model crate.

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

/// A lossless (f32) GGUF of a V2 fixture gives HF's logits, prefill and decode.
#[test]
fn f32_gguf_matches_hf() {
    let case = Case::load("v2_group_limited");
    let model = load(&gguf("v2_group_limited-f32.gguf"), None);
    let ids = case.ids("input_ids");
    let want = case.tensor("prefill.logits");
    assert_close(&model.logits(&ids).unwrap(), &want, 1e-4, "gguf prefill");
    let mut session = model.new_session().unwrap();
    let rows: Vec<Tensor> = ids
        .iter()
        .map(|&t| model.forward(&[t], &mut session).unwrap().logits)
        .collect();
    assert_close(&Tensor::cat(&rows, 0).unwrap(), &want, 1e-4, "gguf decode");
}

/// A V3 GGUF (q_lora, noaux_tc router with its bias, split attn_k_b / attn_v_b) equals the
/// safetensors model read the way GGUF can describe it: GGUF keeps one YaRN factor
/// (`yarn_log_multiplier = 0.1 · mscale_all_dim`), so `mscale` is `mscale_all_dim` there (as
/// llama.cpp computes it); this fixture has 1.0 / 0.8, so its config is edited to match.
#[test]
fn v3_gguf_matches_the_safetensors_model() {
    let case = Case::load("v3_noaux");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&case.dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let all_dim = cfg["rope_scaling"]["mscale_all_dim"].clone();
    cfg["rope_scaling"]["mscale"] = all_dim;
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let ids = case.ids("input_ids");
    let want = load(dir.path(), None).logits(&ids).unwrap();
    let got = load(&gguf("v3_noaux-f32.gguf"), None).logits(&ids).unwrap();
    assert_close(&got, &want, 1e-4, "v3 gguf vs safetensors");
}

/// llama-quantize's Q8_0 blocks load as this crate's Q8 matrices with nothing requantised:
/// the same logits as the same file dequantised to f32 (`--matrices f32`), up to summation
/// order; and close to the f32 file's model (8-bit weights: within 0.5 on these logits).
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
        let case = Case::load(name);
        let ids = case.ids("input_ids");
        let a = kept.logits(&ids).unwrap();
        assert_close(&a, &dequantised.logits(&ids).unwrap(), 1e-4, name);
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
