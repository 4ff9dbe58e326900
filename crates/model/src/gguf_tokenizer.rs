//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`, `tokenizer.chat_template`), rebuilt
//! as the HF `tokenizer.json` + `tokenizer_config.json` it was converted from, so a GGUF file
//! runs text prompts and chat with no other file (as in llama.cpp).
//!
//! llama.cpp's converter writes DeepSeek's byte-level BPE tokenizers as `tokenizer.ggml.model
//! = "gpt2"`: every id's token (`tokens`, byte-level symbols), its type (`token_type`: 1
//! normal, 3 control, 4 user-defined, 5 unused padding), the merges (`"a b"` strings), the
//! special ids, `add_bos_token`, and the name of the pre-tokenizer (`tokenizer.ggml.pre`),
//! which is code in llama.cpp, not data. Every token but the padding becomes the BPE
//! vocabulary, control and user-defined ones the added tokens too (special and not), and the
//! pre-tokenizer is the HF one of that family:
//!
//! - `deepseek-v3` (V3, R1, V3.2; `joyai-llm` is the same regex set in llama.cpp, and what its
//!   converter names DeepSeek-V3's tokenizer when the hash of the files matches JoyAI's): the
//!   three `Split` regexes of DeepSeek-V3's `tokenizer.json`, then `ByteLevel`;
//! - `deepseek-llm` (V2, V2-Lite, V2.5): llama.cpp's six regexes for it, then `ByteLevel`.
//!
//! Any other pre-tokenizer is an error asking for `--tokenizer DIR`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

/// GGUF token types (`llama_token_type`).
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// DeepSeek-V3's pre-tokenizer regexes (its `tokenizer.json`; llama.cpp's `DEEPSEEK3_LLM`).
const DEEPSEEK_V3: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// DeepSeek-LLM / V2's pre-tokenizer regexes (llama.cpp's `DEEPSEEK_LLM`).
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];

/// The HF files a GGUF file's tokenizer metadata describes: `tokenizer.json` text and the
/// `tokenizer_config.json` fields the [`crate::Tokenizer`] reads. `Ok(None)` when the file
/// carries no tokenizer (converted without a vocabulary); an error names the key it cannot
/// use.
pub(crate) fn tokenizer_files(
    md: &HashMap<String, Value>,
) -> Result<Option<(String, serde_json::Value)>, String> {
    let text = |key: &str| match md.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let Some(model) = text("tokenizer.ggml.model") else {
        return Ok(None);
    };
    if model == "none" {
        return Ok(None);
    }
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model is '{model}'; only byte-level BPE ('gpt2', DeepSeek's) is \
             rebuilt from GGUF (pass --tokenizer DIR)"
        ));
    }
    let pre = text("tokenizer.ggml.pre").unwrap_or_default();
    let regexes = match pre.as_str() {
        "deepseek-v3" | "joyai-llm" => DEEPSEEK_V3,
        "deepseek-llm" => DEEPSEEK_LLM,
        other => {
            return Err(format!(
                "tokenizer.ggml.pre is '{other}'; the DeepSeek pre-tokenizers (deepseek-v3, \
                 deepseek-llm) are rebuilt from GGUF (pass --tokenizer DIR)"
            ))
        }
    };
    let tokens = strings(md, "tokenizer.ggml.tokens")?;
    let types = integers(md, "tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        ));
    }
    let merges = strings(md, "tokenizer.ggml.merges")?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
        // Added tokens stay in the model's vocabulary too (as in DeepSeek's tokenizer.json):
        // the tokenizers crate renumbers an added token its model does not know.
        if matches!(ty, NORMAL | CONTROL | USER_DEFINED) {
            vocab.insert(token.clone(), json!(id));
        }
        match ty {
            CONTROL | USER_DEFINED => added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": ty == USER_DEFINED, "special": ty == CONTROL,
            })),
            _ => {} // unused padding ids
        }
    }
    let splits: Vec<serde_json::Value> = regexes
        .iter()
        .map(|r| {
            json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                        "invert": false})
        })
        .chain([
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                       "use_regex": false}),
        ])
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let token_of = |key: &str| {
        let id = match md.get(key) {
            Some(Value::U32(id)) => *id as usize,
            Some(Value::I32(id)) if *id >= 0 => *id as usize,
            _ => return None,
        };
        tokens.get(id).cloned()
    };
    let add_bos = matches!(
        md.get("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    let config = json!({
        "bos_token": token_of("tokenizer.ggml.bos_token_id"),
        "eos_token": token_of("tokenizer.ggml.eos_token_id"),
        "add_bos_token": add_bos,
        "chat_template": text("tokenizer.chat_template"),
    });
    Ok(Some((tokenizer.to_string(), config)))
}

/// A metadata array of strings.
fn strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    array(md, key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(format!("{key}: expected strings")),
        })
        .collect()
}

/// A metadata array of integers.
fn integers(md: &HashMap<String, Value>, key: &str) -> Result<Vec<i64>, String> {
    array(md, key)?
        .iter()
        .map(|v| match v {
            Value::I32(x) => Ok(i64::from(*x)),
            Value::U32(x) => Ok(i64::from(*x)),
            Value::I8(x) => Ok(i64::from(*x)),
            Value::U8(x) => Ok(i64::from(*x)),
            _ => Err(format!("{key}: expected integers")),
        })
        .collect()
}

fn array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match md.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{key}: expected an array")),
        None => Err(format!("{key}: missing")),
    }
}
