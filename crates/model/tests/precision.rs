//! Mixed precision: bf16/f16 matrices under f32 compute, and the automatic choice.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fixtures::{assert_close, Case};
use model::{Checkpoint, DeepSeek, Precision};

/// Writes `case`'s weights (FP8 dequantised) to `dir` as one `model.safetensors`, matrices
/// converted by `matrix`, vectors in f32, next to the case's `config.json`.
fn write_variant(case: &Case, dir: &Path, matrix: impl Fn(&Tensor) -> Tensor) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(case.dir.join("config.json"), dir.join("config.json")).unwrap();
    let tensors: HashMap<String, Tensor> = case
        .weights_f32()
        .into_iter()
        .map(|(name, t)| {
            let t = if t.rank() == 2 { matrix(&t) } else { t };
            (name, t)
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

/// A bf16 (or f16) checkpoint run with f32 compute equals, up to summation order, the f32
/// model whose weights hold exactly the same rounded values: the matrices are widened, never
/// rounded again, and no activation is narrowed.
#[test]
fn narrow_matrices_compute_in_f32() {
    let case = Case::load("v3_fp8");
    let tmp = std::env::temp_dir().join(format!("model-precision-{}", std::process::id()));
    for dt in [DType::BF16, DType::F16] {
        let narrow_dir = tmp.join(format!("{dt:?}"));
        let rounded_dir = tmp.join(format!("{dt:?}-as-f32"));
        write_variant(&case, &narrow_dir, |t| t.to_dtype(dt).unwrap());
        write_variant(&case, &rounded_dir, |t| {
            t.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap()
        });

        let ckpt = Checkpoint::open(&narrow_dir).unwrap();
        assert_eq!(ckpt.matrix_dtype(), Some(dt));
        let auto = Precision::auto(&ckpt, DType::F32, &Device::Cpu);
        assert_eq!(auto, Precision::mixed(DType::F32, dt));

        let mixed = DeepSeek::load_auto(&narrow_dir, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(mixed.precision(), auto);
        let exact = DeepSeek::load(&rounded_dir, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(mixed.dtype(), DType::F32);
        let ids = case.ids("input_ids");
        let want = exact.logits(&ids).unwrap();
        assert_close(&mixed.logits(&ids).unwrap(), &want, 1e-4, "prefill");
        // Decode steps take the matrix-vector kernel on the narrow weights.
        let mut session = mixed.new_session().unwrap();
        for (i, &t) in ids.iter().enumerate() {
            let step = mixed.forward(&[t], &mut session).unwrap();
            assert_close(&step.logits, &want.narrow(0, i, 1).unwrap(), 1e-4, "decode");
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn auto_precision_rules() {
    let cpu = Device::Cpu;
    let f32_ckpt = Checkpoint::open(&Case::load("v3_noaux").dir).unwrap();
    let fp8_ckpt = Checkpoint::open(&Case::load("v3_fp8").dir).unwrap();
    assert_eq!(fp8_ckpt.matrix_dtype(), Some(DType::F8E4M3));
    // f32 matrices stay f32; FP8 is dequantised to f32 (exact) under f32 compute on the CPU.
    assert_eq!(
        Precision::auto(&f32_ckpt, DType::F32, &cpu),
        DType::F32.into()
    );
    assert_eq!(
        Precision::auto(&fp8_ckpt, DType::F32, &cpu),
        DType::F32.into()
    );
    // Half-precision compute keeps one dtype.
    assert_eq!(
        Precision::auto(&fp8_ckpt, DType::F16, &cpu),
        DType::F16.into()
    );
}

/// The format a user downloads gives the exact model by default: an FP8 checkpoint loaded with
/// the automatic precision matches HF's logits (f32 dequantisation) within the parity
/// tolerance, prefill and decode.
#[test]
fn fp8_checkpoint_under_auto_precision_matches_hf() {
    let case = Case::load("v3_fp8");
    let model = DeepSeek::load_auto(&case.dir, DType::F32, &Device::Cpu).unwrap();
    let ids = case.ids("input_ids");
    let want = case.tensor("prefill.logits");
    let mut session = model.new_session().unwrap();
    let out = model.forward(&ids, &mut session).unwrap();
    assert_close(&out.logits, &want, 1e-4, "fp8 auto prefill");
    let mut session = model.new_session().unwrap();
    for (i, &t) in ids.iter().enumerate() {
        let step = model.forward(&[t], &mut session).unwrap();
        assert_close(
            &step.logits,
            &want.narrow(0, i, 1).unwrap(),
            1e-4,
            "fp8 auto decode",
        );
    }
}
