//! The real DeepSeek-V3 tokenizer (fetched by scripts/fetch-tokenizer.sh; skipped if absent).

use std::path::PathBuf;

use model::{ChatExtras, ChatOptions, Message, Tokenizer};

fn tokenizer() -> Option<Tokenizer> {
    let dir = std::env::var_os("DEEPSEEK_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/deepseek-v3-tokenizer")
        });
    if !dir.join("tokenizer.json").is_file() {
        println!(
            "SKIP: no DeepSeek-V3 tokenizer in {} (run scripts/fetch-tokenizer.sh)",
            dir.display()
        );
        return None;
    }
    Some(Tokenizer::from_dir(&dir).unwrap())
}

#[test]
fn encodes_and_decodes_a_known_string() {
    let Some(tok) = tokenizer() else { return };
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_id(), Some(1));
    let text = "Hello, world! DeepSeek-V3 says 1+1=2.";
    let ids = tok.encode(text).unwrap();
    // BOS comes from add_bos_token, not from the post-processor.
    assert_eq!(ids[0], 0);
    assert_eq!(tok.encode_plain(text).unwrap(), ids[1..]);
    assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
    // Multi-byte text round-trips.
    let zh = "深度求索 🚀";
    assert_eq!(tok.decode(&tok.encode_plain(zh).unwrap()).unwrap(), zh);
}

#[test]
fn chat_template_gives_one_bos_and_the_r1_think_prefill() {
    let Some(tok) = tokenizer() else { return };
    let msgs = [Message::new("user", "What is 2+2?")];
    let text = tok
        .apply_chat_template(
            &msgs,
            ChatOptions {
                add_generation_prompt: true,
                think_prefill: true,
                ..ChatOptions::default()
            },
        )
        .unwrap();
    assert_eq!(
        text,
        "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    );
    let ids = tok
        .encode_chat(
            &msgs,
            ChatOptions {
                add_generation_prompt: true,
                think_prefill: true,
                ..ChatOptions::default()
            },
        )
        .unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == 0).count(), 1);
    assert_eq!(ids[0], 0);
    let plain = tok
        .apply_chat_template(&msgs, ChatOptions::default())
        .unwrap();
    assert!(plain.ends_with("<｜Assistant｜>"), "{plain}");
}

/// Every case of `tests/fixtures/chat_templates.json` (HF transformers' renders, written by
/// `tests/reference/chat_templates.py`) renders the same through `Tokenizer::apply_chat_template`
/// (the tiny tokenizer with the case's template): trim_blocks / lstrip_blocks, Python methods,
/// HF's `tojson`, loop controls, macros, `namespace`, `raise_exception`, `strftime_now`,
/// DeepSeek-V3's own template (with tool calls and outputs in the history too), and the
/// repository's function-calling template with `tools` (which renders plain conversations as
/// V3's own does).
#[test]
fn chat_templates_render_as_hf_renders_them() {
    let fixtures = fixtures::fixtures_dir();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("chat_templates.json")).unwrap(),
    )
    .unwrap();
    let tiny = fixtures.join("tiny_tokenizer");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["bos_token"], fixture["bos_token"]);
    assert_eq!(config["eos_token"], fixture["eos_token"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 45, "{} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        config["chat_template"] = case["template"].clone();
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let tools = case["tools"].as_array().map(Vec::as_slice);
        let opts = ChatOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            think_prefill: false,
            continue_final_message: case["continue_final_message"] == true,
        };
        let extras = ChatExtras {
            tools,
            kwargs: case["kwargs"].as_object(),
        };
        let got = tok.render_chat(&messages, extras, opts);
        match (&case["rendered"], &case["error"]) {
            (serde_json::Value::String(want), _) => assert_eq!(&got.unwrap(), want, "{name}"),
            (_, serde_json::Value::String(want)) => {
                let e = got.expect_err(name).to_string();
                // A continued message's error is worded as ours, not as transformers'.
                assert!(
                    opts.continue_final_message || e.contains(want.as_str()),
                    "{name}: {e}"
                );
            }
            _ => panic!("{name}: neither rendered nor error"),
        }
    }
}

/// A template with a syntax error is refused when the tokenizer is read, naming the file.
#[test]
fn a_broken_chat_template_is_an_error_at_load() {
    let tiny = fixtures::fixtures_dir().join("tiny_tokenizer");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}{{ m.content }",
    )
    .unwrap();
    let e = Tokenizer::from_dir(dir.path())
        .err()
        .expect("loaded")
        .to_string();
    assert!(
        e.contains("chat_template.jinja") && e.contains("syntax error"),
        "{e}"
    );
}
