//! A 32K-token prompt through a small-dimension model in bounded memory: chunked prefill with
//! flash-style attention allocates at most a stated amount beyond what it keeps (the latent
//! cache and the returned hidden states), measured by a counting allocator, never assumed.
//! Materialising the scores of one unchunked pass would need `heads · T · T · 4` bytes (8 GiB
//! here).
#![allow(clippy::disallowed_methods)] // tests read results on the host

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device};
use mla::AttentionPath;
use model::random::{write_random_checkpoint, StoreDtype};
use model::DeepSeek;

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; the counters are side effects only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PROMPT: usize = 32 * 1024;
/// Extra bytes the prefill may allocate at its peak beyond its baseline.
const BOUND: usize = 32 << 20;

#[test]
fn a_32k_prompt_prefills_in_bounded_memory() {
    let config = serde_json::json!({
        "model_type": "deepseek_v2", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
        "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": null,
        "max_position_embeddings": 163840, "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "mscale": 0.707, "mscale_all_dim": 0.707}
    });
    let dir = std::env::temp_dir().join(format!("model-long-prompt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_random_checkpoint(&config.to_string(), &dir, StoreDtype::F32, 3, |_, _, _| {}).unwrap();
    let model = DeepSeek::load(&dir, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // The defaults under test: flash-style attention for prefill chunks of 2048.
    assert_eq!(model.paths.long, AttentionPath::Flash);
    assert_eq!(model.prefill_chunk, model::DEFAULT_PREFILL_CHUNK);
    let prompt: Vec<u32> = (0..PROMPT).map(|i| (i * 7 % 61) as u32 + 2).collect();

    let mut session = model.new_session().unwrap();
    session.kv.reserve(PROMPT + 1).unwrap();
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let out = model.forward_last(&prompt, &mut session).unwrap();
    let extra = PEAK.load(Ordering::Relaxed) - baseline;

    assert_eq!(session.len(), PROMPT);
    assert_eq!(out.logits.dims(), &[1, 64]);
    let logits = out.logits.to_vec2::<f32>().unwrap();
    assert!(logits[0].iter().all(|v| v.is_finite()));
    // What the call keeps: the hidden states it returns ([T, C] f32, 4 MiB here).
    let kept = PROMPT * 32 * 4;
    assert!(
        extra <= kept + BOUND,
        "prefill peaked at {} MiB above baseline (bound {} MiB + {} MiB kept)",
        extra >> 20,
        BOUND >> 20,
        kept >> 20
    );
    eprintln!(
        "32K-token prefill: peak {:.1} MiB above baseline (bound {} MiB)",
        extra as f64 / (1 << 20) as f64,
        (kept + BOUND) >> 20
    );
}
