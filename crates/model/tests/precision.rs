//! Mixed precision: bf16/f16 matrices under f32 compute, and the automatic choice.
#![allow(clippy::disallowed_methods)] // tests read results on the host

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fixtures::{assert_close, Case};
use model::{Checkpoint, DeepSeek, MatrixFormat, Precision};

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

/// `--bf16-activations`: bf16 matrices multiply bf16-rounded activations. The logits move by
/// about the rounding of the activations (a relative 2^-9 per value), no more, and prefill (the
/// GEMM) and decode steps (the `vdpbf16ps` kernel where the CPU has it) agree.
#[test]
fn bf16_activations_stay_close_to_f32_products() {
    let case = Case::load("v3_fp8");
    let dir = std::env::temp_dir().join(format!("model-bf16-act-{}", std::process::id()));
    write_variant(&case, &dir, |t| t.to_dtype(DType::BF16).unwrap());
    let exact = DeepSeek::load_auto(&dir, DType::F32, &Device::Cpu).unwrap();
    let rounded = DeepSeek::load_with(&dir, &Device::Cpu, |ckpt| {
        Precision::auto(ckpt, DType::F32, &Device::Cpu).with_bf16_activations(true)
    })
    .unwrap();
    assert!(rounded.precision().bf16_activations);
    let ids = case.ids("input_ids");
    let want = exact.logits(&ids).unwrap();
    let got = rounded.logits(&ids).unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = fixtures::max_abs_diff(&got, &want);
    assert!(
        diff > 0.0,
        "the activations were not rounded: logits identical"
    );
    assert!(
        diff <= 2e-2 * scale,
        "max |diff| {diff} against logits up to {scale}"
    );
    let mut session = rounded.new_session().unwrap();
    for (i, &t) in ids.iter().enumerate() {
        let step = rounded.forward(&[t], &mut session).unwrap();
        assert_close(
            &step.logits,
            &got.narrow(0, i, 1).unwrap(),
            2e-2 * scale,
            "decode",
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An FP8 release whose bf16 embedding and head outweigh its FP8 layers (a model of few layers
/// and a large vocabulary) is still an FP8 checkpoint: the automatic choice and `--matrices
/// fp8` keep its FP8 blocks as shipped.
#[test]
fn fp8_layers_under_a_heavier_bf16_embedding_stay_fp8() {
    let config = std::fs::read_to_string(Case::load("v3_fp8").dir.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["vocab_size"] = 8192.into();
    let dir = std::env::temp_dir().join(format!("model-test-fp8-vocab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    model::random::write_random_checkpoint(
        &config.to_string(),
        &dir,
        model::random::StoreDtype::Fp8,
        1,
        |_, _, _| {},
    )
    .unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let bytes = |dtype: DType| -> usize {
        let of = |m: &&model::checkpoint::TensorMeta| m.dtype == dtype && m.shape.len() == 2;
        let size = |m: &model::checkpoint::TensorMeta| {
            m.shape.iter().product::<usize>() * dtype.size_in_bytes()
        };
        ckpt.tensors().values().filter(of).map(size).sum()
    };
    assert!(
        bytes(DType::BF16) > bytes(DType::F8E4M3),
        "the case needs more bf16 bytes"
    );
    assert_eq!(ckpt.matrix_dtype(), Some(DType::F8E4M3));
    let fp8 = Precision::mixed(DType::F32, MatrixFormat::Fp8);
    assert_eq!(Precision::auto(&ckpt, DType::F32, &Device::Cpu), fp8);
    let model = DeepSeek::load(&dir, fp8, &Device::Cpu).unwrap();
    assert!(model.logits(&[3, 4, 5]).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_precision_rules() {
    let cpu = Device::Cpu;
    let f32_ckpt = Checkpoint::open(&Case::load("v3_noaux").dir).unwrap();
    let fp8_ckpt = Checkpoint::open(&Case::load("v3_fp8").dir).unwrap();
    assert_eq!(fp8_ckpt.matrix_dtype(), Some(DType::F8E4M3));
    // f32 matrices stay f32; FP8 stays FP8 (exact, one byte per weight) under f32 compute on
    // the CPU.
    assert_eq!(
        Precision::auto(&f32_ckpt, DType::F32, &cpu),
        DType::F32.into()
    );
    assert_eq!(
        Precision::auto(&fp8_ckpt, DType::F32, &cpu),
        Precision::mixed(DType::F32, MatrixFormat::Fp8)
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

/// FP8 kept as shipped computes what the f32 dequantisation computes (up to summation order)
/// while holding one byte per weight; asking for it on a checkpoint that is not FP8 is an error
/// that says so.
#[test]
fn fp8_as_shipped_equals_f32_dequantisation() {
    let case = Case::load("v3_fp8");
    let cpu = Device::Cpu;
    let native = DeepSeek::load(
        &case.dir,
        Precision::mixed(DType::F32, MatrixFormat::Fp8),
        &cpu,
    )
    .unwrap();
    let wide = DeepSeek::load(&case.dir, DType::F32, &cpu).unwrap();
    let ids = case.ids("input_ids");
    assert_close(
        &native.logits(&ids).unwrap(),
        &wide.logits(&ids).unwrap(),
        1e-4,
        "fp8 as shipped vs f32",
    );
    // Loaded as shipped on the CPU, the FP8 weights are the memory map's bytes, used in place;
    // `with_mmap(false)` copies them, and computes the very same logits.
    let in_place = |m: &DeepSeek| match &m.layers()[0].attention().weights().o_proj {
        linear::Matrix::Fp8(w) => w.is_shared(),
        other => panic!("o_proj kept as {}", other.format()),
    };
    assert!(in_place(&native), "FP8 weights copied despite mmap");
    let copied = DeepSeek::load(
        &case.dir,
        Precision::mixed(DType::F32, MatrixFormat::Fp8).with_mmap(false),
        &cpu,
    )
    .unwrap();
    assert!(
        !in_place(&copied),
        "FP8 weights used in place despite with_mmap(false)"
    );
    assert_eq!(
        native.logits(&ids).unwrap().to_vec2::<f32>().unwrap(),
        copied.logits(&ids).unwrap().to_vec2::<f32>().unwrap()
    );
    let (narrow_bytes, wide_bytes) = (native.decode_weight_bytes().0, wide.decode_weight_bytes().0);
    assert!(
        narrow_bytes < wide_bytes / 2,
        "{narrow_bytes} vs {wide_bytes}: the FP8 matrices are not kept as bytes"
    );

    let f32_dir = Case::load("v3_noaux").dir;
    let err = DeepSeek::load(
        &f32_dir,
        Precision::mixed(DType::F32, MatrixFormat::Fp8),
        &cpu,
    )
    .err()
    .expect("fp8 on an f32 checkpoint");
    assert!(err.to_string().contains("not FP8"), "{err}");
}

/// Mean KL(p_ref || p) over positions and the share of positions whose arg-max agrees.
fn kl_and_agreement(reference: &Tensor, other: &Tensor) -> (f64, f64) {
    let rows = |t: &Tensor| -> Vec<Vec<f32>> { t.to_dtype(DType::F32).unwrap().to_vec2().unwrap() };
    let log_softmax = |r: &[f32]| -> Vec<f64> {
        let m = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z = r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
        r.iter().map(|&v| v as f64 - z).collect()
    };
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
    let (a, b) = (rows(reference), rows(other));
    let mut kl = 0.0;
    let mut agree = 0;
    for (ra, rb) in a.iter().zip(&b) {
        let (la, lb) = (log_softmax(ra), log_softmax(rb));
        kl += la
            .iter()
            .zip(&lb)
            .map(|(p, q)| p.exp() * (p - q))
            .sum::<f64>();
        agree += usize::from(argmax(ra) == argmax(rb));
    }
    (kl / a.len() as f64, agree as f64 / a.len() as f64)
}

/// 8-bit and 4-bit matrices stay close to the f32 model (next-token KL and arg-max agreement
/// on the fixture prompt), 8-bit closer than 4-bit, decode steps agree with the prefill on
/// the quantised weights, and the weights shrink.
#[test]
fn quantised_models_track_f32() {
    let case = Case::load("v3_noaux");
    let cpu = Device::Cpu;
    let ids = case.ids("input_ids");
    let exact = DeepSeek::load(&case.dir, DType::F32, &cpu).unwrap();
    let want = exact.logits(&ids).unwrap();
    let mut kls = Vec::new();
    // Bounds for this tiny random model (hidden 64: one or two groups per row; 4-bit rounding
    // noise is ~9% of each weight's spread), about 4x what the formats give here; the
    // benchmark checkpoint's measurements are in benchmarks/README.md.
    for (format, max_kl, min_agree) in [("q8", 5e-3, 0.9), ("q4", 0.3, 0.4)] {
        let format: MatrixFormat = format.parse().unwrap();
        let model = DeepSeek::load(&case.dir, Precision::mixed(DType::F32, format), &cpu).unwrap();
        let got = model.logits(&ids).unwrap();
        let (kl, agree) = kl_and_agreement(&want, &got);
        eprintln!("{format}: mean KL {kl:.2e}, top-1 agreement {agree:.3}");
        assert!(kl < max_kl, "{format}: mean KL {kl}");
        assert!(agree >= min_agree, "{format}: top-1 agreement {agree}");
        kls.push(kl);
        // Decode steps equal the prefill up to summation order, except that 4-bit products of
        // a few rows round the activations to 8 bits (`linear::quant`): a last-digit
        // difference in an activation can move it to the next step, so 4-bit decode and
        // prefill agree to that rounding.
        let steps = common::decode_each(&model, &ids);
        if format.name() == "q4" {
            let (drift, _) = kl_and_agreement(&got, &steps);
            eprintln!("q4 decode vs prefill: mean KL {drift:.2e}");
            assert!(
                drift < kl / 4.0,
                "q4 decode drifts from prefill: KL {drift} vs {kl}"
            );
        } else {
            assert_close(&steps, &got, 1e-4, "decode");
        }
        assert!(model.decode_weight_bytes().0 < exact.decode_weight_bytes().0 / 3);
    }
    assert!(kls[0] < kls[1], "q8 {} vs q4 {}", kls[0], kls[1]);
}

/// `Precision::head` quantises only the output head: a step reads exactly the head's bytes
/// less (`[V, C]` at 8.5 or 5 bits per weight instead of its stored width), the logits stay
/// close to the model's (8 bits closer than 4), and without it the head is kept as the
/// matrices are (8 bits under quantised layers).
#[test]
fn a_quantised_head_reads_fewer_bytes() {
    use linear::QuantFormat;
    let case = Case::load("v3_noaux");
    let cpu = Device::Cpu;
    let ids = case.ids("input_ids");
    let exact = DeepSeek::load(&case.dir, DType::F32, &cpu).unwrap();
    let want = exact.logits(&ids).unwrap();
    let (vocab, hidden) = (exact.config().vocab_size, exact.config().hidden_size);
    let head_f32 = vocab * hidden * 4;
    let mut kls = Vec::new();
    for format in [QuantFormat::Q8, QuantFormat::Q4] {
        let precision = Precision::mixed(DType::F32, DType::F32).with_head(Some(format));
        assert_eq!(precision.head_format(), Some(format));
        let model = DeepSeek::load(&case.dir, precision, &cpu).unwrap();
        let head_bytes = (vocab * hidden) as f64 * format.bits_per_weight() / 8.0;
        assert_eq!(
            model.decode_weight_bytes().0,
            exact.decode_weight_bytes().0 - head_f32 + head_bytes as usize,
            "{format:?}"
        );
        let (kl, agree) = kl_and_agreement(&want, &model.logits(&ids).unwrap());
        eprintln!("head {format:?}: mean KL {kl:.2e}, top-1 agreement {agree:.3}");
        assert!(kl > 0.0 && kl < 0.3, "head {format:?}: mean KL {kl}");
        kls.push(kl);
    }
    assert!(kls[0] < kls[1], "q8 head {} vs q4 head {}", kls[0], kls[1]);
    // The default: the head as the matrices are kept, 8 bits under quantised layers.
    assert_eq!(
        Precision::mixed(DType::F32, DType::BF16).head_format(),
        None
    );
    let q4: MatrixFormat = "q4".parse().unwrap();
    let q4 = Precision::mixed(DType::F32, q4);
    assert_eq!(q4.head_format(), Some(QuantFormat::Q8));
    assert_eq!(
        q4.with_head(Some(QuantFormat::Q4)).head_format(),
        Some(QuantFormat::Q4)
    );
    // Under q4k the head is Q6_K, as llama.cpp's Q4_K_M keeps it.
    let q4k = Precision::mixed(DType::F32, "q4k".parse::<MatrixFormat>().unwrap());
    assert_eq!(q4k.head_format(), Some(QuantFormat::Q6K));
}
