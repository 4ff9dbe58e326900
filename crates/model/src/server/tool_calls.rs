//! DeepSeek's tool calls in a reply, turned into OpenAI's `tool_calls`.
//!
//! DeepSeek-V3 / R1 write calls after any content as
//!
//! ```text
//! <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
//! ```json
//! ARGUMENTS
//! ```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
//! ```
//!
//! (their chat template renders past calls the same way; vLLM's `deepseek_v3` parser reads
//! it), and V3.1 drops the type and the fence: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS
//! <｜tool▁call▁end｜>` (vLLM's `deepseek_v31`). Both are read. The markers are matched in the
//! decoded text, so a marker split over several tokens is found too.
//!
//! Nothing is lost: a reply whose call section does not parse (cut off by `max_tokens`, a
//! call without a name) is returned whole as content. Streams and whole responses go
//! through the same [`ToolCallSplit`]: content streams until the section starts (a tail
//! that could begin its marker is held back), and the calls go out in the final delta.
//!
//! With `parallel_tool_calls: false` ([`Calls::One`]) a forced call is exactly one, and a
//! reply read for calls keeps its first (vLLM's behaviour).

use serde_json::Value;

use crate::structured::{self, Structure};
use crate::tokenizer::FunctionCall;

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";

/// How many calls a reply may make (OpenAI's `parallel_tool_calls`, true by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Calls {
    /// Any number.
    #[default]
    Parallel,
    /// At most one.
    One,
}

/// A grammar ([`Structure::Lark`]) for a reply that is nothing but calls in V3's format:
/// one or more calls of any of `tools` (`tool_choice` `required`; exactly one with
/// [`Calls::One`]), or exactly one call of `only` (a named `tool_choice`), each function's
/// arguments valid under its `parameters` schema (any object when it has none).
pub(crate) fn forced_calls(
    tools: &[Value],
    only: Option<&str>,
    limit: Calls,
) -> crate::Result<Structure> {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut rules = Vec::new();
    let mut alternatives = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let function = &tool["function"];
        let name = function["name"].as_str().unwrap_or_default();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let schema = match function.get("parameters") {
            Some(p) if p.is_object() => p.clone(),
            _ => serde_json::json!({"type": "object"}),
        };
        let schema = structured::compact(schema)?;
        rules.push(format!(
            "call{i}: {} args{i} {}\nargs{i}: %json {schema}",
            quote(&format!("{CALL_BEGIN}function{SEP}{name}\n```json\n")),
            quote(&format!("\n```{CALL_END}"))
        ));
        alternatives.push(format!("call{i}"));
    }
    let call = alternatives.join(" | ");
    let repeat = if only.is_some() || limit == Calls::One {
        ""
    } else {
        " (\"\\n\" call)*"
    };
    Ok(Structure::Lark(format!(
        "start: {} call{repeat} {}\ncall: {call}\n{}\n",
        quote(CALLS_BEGIN),
        quote(CALLS_END),
        rules.join("\n")
    )))
}

/// Splits a reply that arrives in pieces into content and, at the end, its calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolCallSplit {
    /// Content not handed out yet: a possible start of [`CALLS_BEGIN`] at its end.
    held: String,
    /// The call section, from its marker on, once it has started.
    calls: Option<String>,
    /// The calls kept.
    limit: Calls,
}

/// What is left when a reply ends: content not yet handed out, and the calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Finished {
    pub content: String,
    pub calls: Vec<FunctionCall>,
}

impl ToolCallSplit {
    /// A reply's split, keeping `limit`'s number of calls.
    pub fn new(limit: Calls) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Adds a piece of the reply's content; returns the content now known not to be part of
    /// a call section.
    pub fn push(&mut self, piece: &str) -> String {
        if let Some(calls) = &mut self.calls {
            calls.push_str(piece);
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self.held.find(CALLS_BEGIN) {
            self.calls = Some(self.held.split_off(at));
            return std::mem::take(&mut self.held);
        }
        let keep = partial_marker_len(&self.held);
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }

    /// Ends the reply: the held content, and the calls (none, with the section returned as
    /// content, when it does not parse).
    pub fn finish(self) -> Finished {
        let Some(section) = self.calls else {
            return Finished {
                content: self.held,
                calls: Vec::new(),
            };
        };
        match parse_section(&section) {
            Some(mut calls) => {
                if self.limit == Calls::One {
                    calls.truncate(1);
                }
                Finished {
                    content: self.held,
                    calls,
                }
            }
            None => Finished {
                content: self.held + &section,
                calls: Vec::new(),
            },
        }
    }
}

/// A whole reply's content (before the calls) and its calls (as many as `limit` keeps): the
/// tests' view of a whole reply (the server reads through [`super::reply::ReplyReader`]).
#[cfg(test)]
fn split_whole(text: &str, limit: Calls) -> Finished {
    let mut split = ToolCallSplit::new(limit);
    let mut content = split.push(text);
    let rest = split.finish();
    content.push_str(&rest.content);
    Finished {
        content,
        calls: rest.calls,
    }
}

/// Bytes at the end of `text` that could be the start of [`CALLS_BEGIN`].
fn partial_marker_len(text: &str) -> usize {
    (1..CALLS_BEGIN.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && CALLS_BEGIN.is_char_boundary(n)
                && CALLS_BEGIN.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// The calls of a section that starts with [`CALLS_BEGIN`]: every call complete, at least
/// one, and nothing but whitespace between them and after the section's end.
fn parse_section(section: &str) -> Option<Vec<FunctionCall>> {
    let mut rest = section.strip_prefix(CALLS_BEGIN)?;
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(CALLS_END) {
            // What follows the section (EOS is not in the text) must be nothing.
            return (!calls.is_empty() && after.trim().is_empty()).then_some(calls);
        }
        if rest.is_empty() {
            // The model stopped after its last call without closing the section.
            return (!calls.is_empty()).then_some(calls);
        }
        let body = rest.strip_prefix(CALL_BEGIN)?;
        let end = body.find(CALL_END)?;
        calls.push(parse_call(&body[..end])?);
        rest = &body[end + CALL_END.len()..];
    }
}

/// One call between its markers: `function<sep>NAME\n```json\nARGS\n```` (V3) or
/// `NAME<sep>ARGS` (V3.1).
fn parse_call(body: &str) -> Option<FunctionCall> {
    let (head, tail) = body.split_once(SEP)?;
    let (name, arguments) = match tail.split_once('\n') {
        Some((name, fenced)) if head.trim() == "function" => (name, unfence(fenced)),
        _ => (head, tail),
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some(FunctionCall {
        name: name.to_string(),
        arguments: arguments.trim().to_string(),
    })
}

/// The text inside a Markdown code fence (```` ```json ```` ... ```` ``` ````), or the text
/// itself when it is not fenced.
fn unfence(text: &str) -> &str {
    let t = text.trim();
    let Some(open) = t.strip_prefix("```") else {
        return t;
    };
    let body = open.split_once('\n').map_or("", |(_lang, body)| body);
    body.strip_suffix("```").unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> FunctionCall {
        FunctionCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// V3's format, as its chat template renders an assistant's calls.
    fn v3(calls: &[(&str, &str)]) -> String {
        let body: Vec<String> = calls
            .iter()
            .map(|(n, a)| format!("{CALL_BEGIN}function{SEP}{n}\n```json\n{a}\n```{CALL_END}"))
            .collect();
        format!("{CALLS_BEGIN}{}{CALLS_END}", body.join("\n"))
    }

    /// The forced-call grammar accepts the calls DeepSeek writes, token by token as each
    /// tokenizer cuts them (the tiny byte-level one, and the real V3 one when fetched, where
    /// each marker is one token), and ends with the section; a call of another function or
    /// with arguments outside the schema is refused.
    #[test]
    fn forced_call_grammars_accept_the_format_as_tokenized() {
        use crate::structured::Grammars;
        use crate::tokenizer::Tokenizer;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut tokenizers = vec![root.join("tests/fixtures/tiny_tokenizer")];
        let real = root.join("target/deepseek-v3-tokenizer");
        if real.join("tokenizer.json").is_file() {
            tokenizers.push(real);
        } else {
            eprintln!("skipping the real V3 tokenizer: run scripts/fetch-tokenizer.sh");
        }
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": false}}}),
            serde_json::json!({"type": "function", "function": {"name": "now"}}),
        ];
        let two = v3(&[("get_weather", "{\"city\": \"Zürich\"}"), ("now", "{}")]);
        for dir in tokenizers {
            let tok = Tokenizer::from_dir(&dir).unwrap();
            let g = Grammars::new(&tok, tok.vocab_size().max(260), tok.eos_id().unwrap()).unwrap();
            let run = |structure: &Structure, text: &str| -> bool {
                let mut c = g.constraint(structure).unwrap();
                for t in tok.encode_plain(text).unwrap() {
                    if !c.allows(t) {
                        return false;
                    }
                    c.commit(t).unwrap();
                }
                c.finished()
            };
            let any = forced_calls(&tools, None, Calls::Parallel).unwrap();
            let named = forced_calls(&tools, Some("get_weather"), Calls::Parallel).unwrap();
            assert!(run(&any, &two), "{dir:?}");
            assert!(run(&any, &v3(&[("now", "{}")])));
            assert!(run(&named, &v3(&[("get_weather", "{\"city\": \"Oslo\"}")])));
            assert!(!run(&named, &two), "two calls where one is forced");
            let one = forced_calls(&tools, None, Calls::One).unwrap();
            assert!(run(&one, &v3(&[("now", "{}")])));
            assert!(!run(&one, &two), "two calls without parallel calls");
            assert!(!run(&named, &v3(&[("now", "{}")])));
            assert!(!run(&any, &v3(&[("get_weather", "{\"town\": \"Oslo\"}")])));
            assert!(
                !run(&any, &format!("Sure.{two}")),
                "content before the calls"
            );
        }
    }

    #[test]
    fn v3_and_v31_calls_are_read() {
        let text = format!(
            "Let me check.{}",
            v3(&[
                ("get_weather", "{\"city\": \"Paris\"}"),
                ("get_time", "{\"tz\": \"CET\"}")
            ])
        );
        let got = split_whole(&text, Calls::Parallel);
        assert_eq!(got.content, "Let me check.");
        assert_eq!(
            got.calls,
            vec![
                call("get_weather", "{\"city\": \"Paris\"}"),
                call("get_time", "{\"tz\": \"CET\"}")
            ]
        );
        let v31 =
            format!("{CALLS_BEGIN}{CALL_BEGIN}search{SEP}{{\"q\": \"rust\"}}{CALL_END}{CALLS_END}");
        let got = split_whole(&v31, Calls::Parallel);
        assert_eq!(
            (got.content.as_str(), got.calls),
            ("", vec![call("search", "{\"q\": \"rust\"}")])
        );
        // A section the model did not close is still read.
        let open = v3(&[("f", "{}")]).replace(CALLS_END, "");
        assert_eq!(
            split_whole(&open, Calls::Parallel).calls,
            vec![call("f", "{}")]
        );
    }

    #[test]
    fn one_call_is_kept_when_parallel_calls_are_off() {
        let text = format!("Sure.{}", v3(&[("a", "{}"), ("b", "{\"x\": 1}")]));
        assert_eq!(split_whole(&text, Calls::Parallel).calls.len(), 2);
        let one = split_whole(&text, Calls::One);
        assert_eq!(
            (one.content.as_str(), one.calls),
            ("Sure.", vec![call("a", "{}")])
        );
    }

    #[test]
    fn replies_without_calls_or_with_broken_ones_stay_content() {
        for text in [
            "No tools needed: 42.".to_string(),
            // Cut off inside the call (max_tokens).
            format!("Hm.{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n```json\n{{\"a\""),
            // No separator, an empty name, nothing but the markers, text after the section.
            format!("{CALLS_BEGIN}{CALL_BEGIN}f{CALL_END}{CALLS_END}"),
            format!("{CALLS_BEGIN}{CALL_BEGIN}{SEP}{{}}{CALL_END}{CALLS_END}"),
            format!("{CALLS_BEGIN}{CALLS_END}"),
            format!("{} and then more", v3(&[("f", "{}")])),
            // Half a marker at the very end.
            "Done <｜tool▁ca".to_string(),
        ] {
            let got = split_whole(&text, Calls::Parallel);
            assert_eq!((got.content, got.calls), (text.clone(), vec![]), "{text}");
        }
    }

    /// Every way of cutting a reply into pieces streams the same content and calls as the
    /// whole reply, and no piece of a marker is handed out as content before the calls.
    #[test]
    fn streamed_pieces_add_up_to_the_whole_reply() {
        let texts = [
            format!(
                "Sure — one moment.{}",
                v3(&[("get_weather", "{\"city\": \"Zürich\"}")])
            ),
            "Plain answer with a ｜ bar and a < sign.".to_string(),
            format!("x{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n```json\n{{"),
        ];
        for text in &texts {
            let whole = split_whole(text, Calls::Parallel);
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            for step in 1..=7 {
                let mut split = ToolCallSplit::default();
                let mut streamed = String::new();
                for piece in chars.chunks(step) {
                    let (start, last) = (piece[0].0, piece[piece.len() - 1]);
                    let out = split.push(&text[start..last.0 + last.1.len_utf8()]);
                    assert!(!out.contains('｜') || whole.calls.is_empty(), "{out:?}");
                    streamed.push_str(&out);
                }
                let rest = split.finish();
                streamed.push_str(&rest.content);
                assert_eq!(streamed, whole.content, "{text} in pieces of {step}");
                assert_eq!(rest.calls, whole.calls);
            }
        }
    }
}
