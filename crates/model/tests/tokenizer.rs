//! The real DeepSeek-V3 tokenizer (fetched by scripts/fetch-tokenizer.sh; skipped if absent).

use std::path::PathBuf;

use model::{ChatOptions, Message, Tokenizer};

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
