//! The local-model source (feature `local-model`) on a fixture checkpoint with the tiny
//! byte-level tokenizer: deterministic greedy responses, seeded sampling, stop strings.
#![cfg(feature = "local-model")]

use std::path::PathBuf;
use std::time::Duration;

use eval::source::local::LocalModel;
use eval::source::{Request, ResponseSource};
use eval::task::Sampling;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn request(sample: usize, temperature: f64, stop: &[&str]) -> Request {
    Request {
        task: "t".into(),
        id: "p1".into(),
        sample,
        prompt: "What is 2+2?".into(),
        system: None,
        sampling: Sampling {
            temperature,
            top_p: 0.95,
            max_tokens: 12,
            seed: Some(7),
        },
        stop: stop.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(60),
    }
}

#[test]
fn local_model_generates_reproducibly_and_honours_stop_strings() {
    let f = fixtures();
    let source = LocalModel::load(&f.join("v3_noaux"), Some(&f.join("tiny_tokenizer"))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gen = |req: Request| rt.block_on(source.generate(&req)).unwrap();

    let greedy = gen(request(0, 0.0, &[]));
    assert_eq!(
        greedy,
        gen(request(1, 0.0, &[])),
        "greedy ignores the sample index"
    );
    assert_eq!(greedy.completion_tokens, Some(12));
    assert_eq!(greedy.finish_reason.as_deref(), Some("length"));

    let a = gen(request(0, 1.0, &[]));
    assert_eq!(
        a,
        gen(request(0, 1.0, &[])),
        "same seed and sample, same text"
    );

    // Cut at a stop string taken from the greedy text itself.
    let text = greedy.text;
    let Some((cut, _)) = text.char_indices().nth(3) else {
        return;
    };
    let stop: String = text[cut..].chars().take(1).collect();
    let stopped = gen(request(0, 0.0, &[&stop]));
    assert_eq!(stopped.text, text[..text.find(&stop).unwrap()]);
    assert_eq!(stopped.finish_reason.as_deref(), Some("stop"));
}

#[test]
fn mtp_speculative_decoding_gives_the_plain_greedy_responses() {
    let f = fixtures();
    let tok = f.join("tiny_tokenizer");
    let plain = LocalModel::load(&f.join("v3_mtp"), Some(&tok)).unwrap();
    let mtp = LocalModel::load(&f.join("v3_mtp"), Some(&tok))
        .unwrap()
        .with_decoding(model::generate::Decoding::Mtp)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for stop in [&[][..], &["a"][..]] {
        let req = request(0, 0.0, stop);
        let a = rt.block_on(plain.generate(&req)).unwrap();
        let b = rt.block_on(mtp.generate(&req)).unwrap();
        assert_eq!(a, b, "stop {stop:?}");
    }
    // A checkpoint without MTP modules is refused when the source is built, not per request.
    let err = LocalModel::load(&f.join("v3_noaux"), Some(&tok))
        .unwrap()
        .with_decoding(model::generate::Decoding::Mtp)
        .err()
        .expect("v3_noaux has no MTP modules")
        .to_string();
    assert!(err.contains("num_nextn_predict_layers"), "{err}");
}
