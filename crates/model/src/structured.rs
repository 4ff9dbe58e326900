//! Structured outputs: generation constrained to a JSON Schema, any JSON object, a regular
//! expression or a list of choices (OpenAI's `response_format`, vLLM's `guided_json` /
//! `guided_regex` / `guided_choice`).
//!
//! The grammar engine is [llguidance](https://github.com/guidance-ai/llguidance), the one
//! llama.cpp, vLLM and SGLang use: before each token a [`Constraint`] computes the set of
//! tokens that keep the output a prefix of some word of the grammar, every other logit
//! becomes `-inf`, and the chosen token advances it. When the grammar is complete only EOS
//! is allowed. JSON is [`compact`].
//!
//! A [`Grammars`] indexes one tokenizer's vocabulary (the bytes of every token) once; it
//! compiles each request's [`Structure`] into a fresh [`Constraint`]. The last
//! [`COMPILED_KEPT`] compiled grammars are kept, so a structure seen again (the k samples of
//! an evaluation, a server checking a request before its engine admits it) costs a copy of
//! the compiled start state, not a compilation (about a millisecond for a small schema, far
//! more for a large one).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Structure {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid under this JSON Schema (`response_format: {"type": "json_schema"}`).
    JsonSchema(Value),
    /// Text matching this regular expression, whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text of a context-free grammar in llguidance's Lark syntax (rules may embed JSON
    /// Schemas as `%json { ... }`); vLLM's `guided_grammar`.
    Lark(String),
}

impl Structure {
    /// The llguidance grammar.
    fn grammar(&self) -> Result<TopLevelGrammar> {
        let schema = |schema: Value| Ok(TopLevelGrammar::from_json_schema(compact(schema)?));
        match self {
            Structure::JsonObject => schema(json!({"type": "object"})),
            Structure::JsonSchema(s) => schema(s.clone()),
            Structure::Regex(rx) => Ok(TopLevelGrammar::from_regex(rx)),
            Structure::Lark(grammar) => Ok(TopLevelGrammar::from_lark(grammar.clone())),
            Structure::Choice(choices) => {
                if choices.is_empty() {
                    return Err(ModelError::Input("the list of choices is empty".into()));
                }
                let alternatives: Vec<String> =
                    choices.iter().map(|c| regex_syntax::escape(c)).collect();
                Ok(TopLevelGrammar::from_regex(&alternatives.join("|")))
            }
        }
    }
}

/// `schema` with llguidance's compact-JSON options (unless it sets its own `x-guidance`):
/// `", "` and `": "` separators and no free whitespace, so a model cannot pad its output
/// with whitespace until its budget runs out. Also for `%json` rules of a
/// [`Structure::Lark`] grammar.
pub fn compact(mut schema: Value) -> Result<Value> {
    let Some(obj) = schema.as_object_mut() else {
        return Err(ModelError::Input("a JSON Schema must be an object".into()));
    };
    obj.entry("x-guidance").or_insert_with(
        || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
    );
    Ok(schema)
}

/// Compiled grammars a [`Grammars`] keeps, most recently used last.
pub const COMPILED_KEPT: usize = 64;

/// Grammars longer than this (as llguidance JSON) are not kept: 64 of them stay within a
/// few tens of MiB whatever clients send, and a grammar that long takes far longer to
/// generate under than to compile.
pub const KEPT_MAX_BYTES: usize = 64 << 10;

/// One tokenizer's vocabulary indexed for constraints.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    /// Recently compiled grammars by their llguidance JSON, at their start state.
    compiled: Mutex<VecDeque<(String, Constraint)>>,
}

impl Grammars {
    /// Indexes `tokenizer`'s tokens over a vocabulary of `vocab` ids (the model's: ids the
    /// tokenizer lacks are never allowed), with `eos` as the token that ends a complete
    /// output. Errors for tokenizers whose token bytes cannot be recovered (only byte-level
    /// and byte-fallback BPE can).
    pub fn new(tokenizer: &Tokenizer, vocab: usize, eos: u32) -> Result<Self> {
        let fail = |why: String| {
            ModelError::Tokenizer(format!(
                "structured outputs cannot use this tokenizer: {why}"
            ))
        };
        let json = tokenizer.hf_json()?;
        // The llguidance reader asserts on some malformed vocabularies: an error here, not
        // a panic.
        let words = catch_unwind(AssertUnwindSafe(|| {
            llguidance::token_bytes_from_tokenizer_json(&json)
        }))
        .map_err(|_| fail("its vocabulary could not be read".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let mut words = words;
        if words.len() > vocab {
            return Err(fail(format!(
                "it has {} tokens, the model {vocab}",
                words.len()
            )));
        }
        words.resize(vocab, Vec::new());
        let info = TokRxInfo::new(vocab as u32, eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| fail(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            compiled: Mutex::new(VecDeque::new()),
        })
    }

    /// A constraint for `structure`, at the start of the output; an error (naming the
    /// problem) for a schema or expression that does not compile.
    pub fn constraint(&self, structure: &Structure) -> Result<Constraint> {
        let grammar = structure.grammar()?;
        let key = serde_json::to_string(&grammar)
            .map_err(|e| ModelError::Input(format!("the grammar: {e}")))?;
        if let Some(hit) = self.kept(&key) {
            return Ok(hit);
        }
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ModelError::Input(format!("{e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ModelError::Input(e));
        }
        let constraint = Constraint { matcher };
        if key.len() > KEPT_MAX_BYTES {
            return Ok(constraint);
        }
        if let Ok(mut kept) = self.compiled.lock() {
            if kept.len() == COMPILED_KEPT {
                kept.pop_front();
            }
            kept.push_back((key, constraint.fork()));
        }
        Ok(constraint)
    }

    /// A copy of the kept constraint compiled from `key`, which becomes the most recent.
    fn kept(&self, key: &str) -> Option<Constraint> {
        let mut kept = self.compiled.lock().ok()?;
        let at = kept.iter().position(|(k, _)| k == key)?;
        let entry = kept.remove(at)?;
        let copy = entry.1.fork();
        kept.push_back(entry);
        Some(copy)
    }
}

/// One output's position in its grammar.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Sets the logit of every token the grammar does not allow next to `-inf`.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ModelError::Input(format!("structured output: {e}")))?;
        for (t, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(t as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Whether the grammar allows `token` next (after [`Constraint::mask`], only those are
    /// drawn).
    pub fn allows(&mut self, token: u32) -> bool {
        self.matcher
            .compute_mask_or_eos()
            .is_ok_and(|m| m.is_allowed(token))
    }

    /// Advances past `token`.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ModelError::Input(format!("structured output: {e}")))
    }

    /// The output is complete: the grammar allows nothing but its end.
    pub fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// An independent copy at the same position (another sample of the same prompt).
    pub fn fork(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> Tokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_tokenizer");
        Tokenizer::from_dir(&dir).unwrap()
    }

    /// Draws an output under `structure` with random logits (a model that could write
    /// anything): each step masks, picks the best allowed token, commits; up to 200 tokens,
    /// and whether the grammar was complete by then.
    fn walk(
        grammars: &Grammars,
        structure: &Structure,
        tok: &Tokenizer,
        seed: u64,
    ) -> (String, bool) {
        let mut c = grammars.constraint(structure).unwrap();
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut logits: Vec<f32> = (0..260)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 1000) as f32
                })
                .collect();
            c.mask(&mut logits).unwrap();
            let t = crate::sampling::argmax(&logits);
            assert!(
                logits[t as usize].is_finite(),
                "nothing allowed after {out:?}"
            );
            if t == 1 {
                break;
            }
            c.commit(t).unwrap();
            out.push(t);
            if c.finished() {
                break;
            }
        }
        (tok.decode(&out).unwrap(), c.finished() || out.len() < 200)
    }

    /// A whole output of a structure that cannot go on forever.
    fn bounded(grammars: &Grammars, structure: &Structure, tok: &Tokenizer, seed: u64) -> String {
        let (text, done) = walk(grammars, structure, tok, seed);
        assert!(done, "never finished: {text:?}");
        text
    }

    #[test]
    fn random_outputs_follow_the_structure() {
        let tok = tiny();
        let g = Grammars::new(&tok, 260, 1).unwrap();
        let schema = json!({"type": "object", "additionalProperties": false,
            "properties": {"ok": {"type": "boolean"},
                           "n": {"type": "integer", "minimum": 0, "maximum": 99},
                           "tag": {"enum": ["x", "y"]}},
            "required": ["ok", "n", "tag"]});
        for seed in 0..20 {
            let text = bounded(&g, &Structure::JsonSchema(schema.clone()), &tok, seed);
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(v["ok"].is_boolean() && ["x", "y"].contains(&v["tag"].as_str().unwrap()));
            assert!((0..=99).contains(&v["n"].as_i64().unwrap()), "{text}");
            assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
            // Compact separators: the text is its own canonical form.
            assert!(!text.contains("  ") && !text.contains('\n'), "{text:?}");

            let text = bounded(
                &g,
                &Structure::Regex("[0-9]{3}-[a-c]{1,4}".into()),
                &tok,
                seed,
            );
            let (digits, letters) = text.split_once('-').unwrap();
            assert!(
                digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()),
                "{text}"
            );
            assert!(
                !letters.is_empty() && letters.bytes().all(|b| b"abc".contains(&b)),
                "{text}"
            );

            let choices = vec!["yes".to_string(), "no (1+1)".into(), "maybe?".into()];
            let text = bounded(&g, &Structure::Choice(choices.clone()), &tok, seed);
            assert!(choices.contains(&text), "{text}");

            // Any object: random keys and strings may go on past the walk's 200 tokens, so
            // a complete output parses and an incomplete one is an object's beginning.
            let (text, done) = walk(&g, &Structure::JsonObject, &tok, seed);
            if done {
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert!(v.is_object(), "{text}");
            } else {
                assert!(text.starts_with('{'), "{text}");
            }
        }
    }

    #[test]
    fn structures_that_do_not_compile_are_errors() {
        let tok = tiny();
        let g = Grammars::new(&tok, 260, 1).unwrap();
        for bad in [
            Structure::JsonSchema(json!("not a schema")),
            Structure::JsonSchema(json!({"type": "no-such-type"})),
            Structure::Regex("[unclosed".into()),
            Structure::Choice(vec![]),
        ] {
            assert!(g.constraint(&bad).is_err(), "{bad:?}");
        }
        // A vocabulary smaller than the tokenizer's cannot hold its tokens.
        assert!(Grammars::new(&tok, 100, 1).is_err());
    }

    #[test]
    fn a_structure_seen_again_starts_at_its_beginning() {
        let tok = tiny();
        let g = Grammars::new(&tok, 260, 1).unwrap();
        let id = |s: &str| tok.encode_plain(s).unwrap()[0];
        let choice = |a: &str, b: &str| Structure::Choice(vec![a.into(), b.into()]);
        let mut first = g.constraint(&choice("ab", "cd")).unwrap();
        first.commit(id("a")).unwrap();
        // Kept: the copy starts afresh, whatever became of the first.
        let mut again = g.constraint(&choice("ab", "cd")).unwrap();
        assert!(again.allows(id("c")) && !first.allows(id("c")));
        again.commit(id("c")).unwrap();
        assert!(first.allows(id("b")) && !first.allows(id("d")));
        // More structures than are kept: the oldest is compiled again, the same.
        for i in 0..COMPILED_KEPT {
            g.constraint(&choice(&format!("x{i}"), "y")).unwrap();
        }
        let mut late = g.constraint(&choice("ab", "cd")).unwrap();
        assert!(late.allows(id("a")) && late.allows(id("c")) && !late.allows(id("x")));
        assert_eq!(g.compiled.lock().unwrap().len(), COMPILED_KEPT);
        // A long one is compiled every time, not kept.
        let long = choice(&"z".repeat(KEPT_MAX_BYTES), "y");
        g.constraint(&long).unwrap();
        let kept = g.compiled.lock().unwrap();
        assert!(kept.iter().all(|(k, _)| k.len() <= KEPT_MAX_BYTES));
    }

    #[test]
    fn forks_are_independent() {
        let tok = tiny();
        let g = Grammars::new(&tok, 260, 1).unwrap();
        let mut a = g
            .constraint(&Structure::Choice(vec!["ab".into(), "cd".into()]))
            .unwrap();
        let mut b = a.fork();
        let id = |s: &str| tok.encode_plain(s).unwrap()[0];
        a.commit(id("a")).unwrap();
        assert!(b.allows(id("c")) && !a.allows(id("c")));
        b.commit(id("c")).unwrap();
        assert!(a.allows(id("b")) && !a.allows(id("d")) && b.allows(id("d")));
    }
}
