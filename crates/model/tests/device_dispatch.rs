#![allow(clippy::disallowed_methods)] // tests read results on the host
//! The device-dispatch path (the GPU default: routing by argsorts, experts from stacked
//! weights, no host copy) run on the CPU, where HF's references pin it.

mod common;

use candle_core::{DType, Device};
use fixtures::{assert_close, Case};
use model::mtp::{load_mtp_modules, mtp_forward};
use model::DeepSeek;

use fixtures::CASES;

fn load(case: &Case, device_dispatch: bool) -> DeepSeek {
    let mut model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    assert!(!model.device_dispatch(), "the CPU default is the host path");
    if device_dispatch {
        model.use_device_dispatch().unwrap();
        assert!(model.device_dispatch());
    }
    model
}

#[test]
fn device_dispatch_matches_hf_on_every_fixture() {
    for name in CASES {
        let case = Case::load(name);
        let model = load(&case, true);
        let ids = case.ids("input_ids");
        let logits = model.logits(&ids).unwrap();
        let what = |s: &str| format!("{name} device dispatch {s}");
        assert_close(
            &logits,
            &case.tensor("prefill.logits"),
            1e-4,
            &what("prefill"),
        );
        let decoded = common::decode_each(&model, &ids);
        assert_close(
            &decoded,
            &case.tensor("decode.logits"),
            1e-4,
            &what("decode"),
        );
    }
}

#[test]
fn device_dispatch_mtp_modules_match_the_host_path() {
    let case = Case::load("v3_mtp");
    let ids = case.ids("input_ids");
    let (host, device) = (load(&case, false), load(&case, true));
    let (host_mods, device_mods) = (
        load_mtp_modules(&host).unwrap(),
        load_mtp_modules(&device).unwrap(),
    );
    assert!(!host_mods.is_empty());
    for (a, b) in host_mods.iter().zip(&device_mods) {
        let (_, want) = mtp_forward(&host, a, &ids).unwrap();
        let (_, got) = mtp_forward(&device, b, &ids).unwrap();
        assert_close(
            &got,
            &want,
            1e-5,
            "v3_mtp module logits, device vs host dispatch",
        );
    }
}
