//! A decode step on the device-dispatch path reads nothing back to the host.
//!
//! Every host read in the engine crates goes through `linear::host`, which counts it (clippy's
//! `disallowed_methods` rejects any other; the CPU kernels that read CPU tensors in place are
//! the marked exceptions and never run on a GPU). With device dispatch, a decode step's
//! forward (embedding, attention over the cache, routing, experts, head) must leave the count
//! unchanged; the host path, which routes on the CPU, moves it once per MoE layer, which shows
//! the counter is live. One test in this file: the counter is process-wide.

use candle_core::{DType, Device};
use fixtures::Case;
use model::DeepSeek;

/// Host reads made by `steps` single-token forwards after a prefill of the prompt.
fn reads_per_decode(model: &DeepSeek, ids: &[u32], steps: usize) -> u64 {
    let mut session = model.new_session().unwrap();
    model.forward(&ids[..4], &mut session).unwrap();
    let before = linear::host::reads();
    for &t in ids[4..].iter().cycle().take(steps) {
        model.forward(&[t], &mut session).unwrap();
    }
    linear::host::reads() - before
}

#[test]
fn device_dispatch_decode_steps_make_no_host_read() {
    for name in ["v2_greedy", "v2_group_limited", "v3_noaux", "v3_mtp"] {
        let case = Case::load(name);
        let ids = case.ids("input_ids");
        let mut model = DeepSeek::load(&case.dir, DType::F32, &Device::Cpu).unwrap();
        let moe_layers = (0..model.config().num_hidden_layers)
            .filter(|&l| model.config().is_moe_layer(l))
            .count() as u64;
        assert!(moe_layers > 0, "{name}: no MoE layer");
        let steps = 5;
        let host = reads_per_decode(&model, &ids, steps);
        assert!(
            host >= moe_layers * steps as u64,
            "{name}: the host path made {host} reads in {steps} steps over {moe_layers} MoE \
             layers; the counter is not counting"
        );
        model.use_device_dispatch().unwrap();
        let device = reads_per_decode(&model, &ids, steps);
        assert_eq!(
            device, 0,
            "{name}: device dispatch read the host {device} times"
        );
        println!("{name}: host path {host} reads in {steps} steps, device dispatch 0");
    }
}
