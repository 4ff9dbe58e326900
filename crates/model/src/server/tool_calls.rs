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
//! that could begin its marker is held back); then each call streams as vLLM's parsers
//! stream it: its name once its header is complete, then its arguments as they arrive
//! ([`CallDelta`]s; a tail that could be the closing fence or marker is held back, so the
//! pieces add up to exactly the arguments of the whole reply). A section that turns out not
//! to parse after some of it streamed as calls still comes back as content at the end.
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

/// Splits a reply that arrives in pieces into content and calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolCallSplit {
    /// Content not handed out yet: a possible start of [`CALLS_BEGIN`] at its end.
    held: String,
    /// The call section, from its marker on, once it has started.
    calls: Option<String>,
    /// The calls kept.
    limit: Calls,
    /// How far the section has streamed.
    streamed: Streamed,
}

/// A call's progress in a stream: its name (on its first delta only), then pieces of its
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallDelta {
    /// Which call of the reply.
    pub index: usize,
    /// The function's name, on the call's first delta.
    pub name: Option<String>,
    /// More of its arguments.
    pub arguments: String,
}

impl CallDelta {
    /// Appends `delta` to `out`, merged into the last delta when both are of one call (a
    /// name and the arguments after it go out together).
    pub fn merge_into(out: &mut Vec<CallDelta>, delta: CallDelta) {
        match out.last_mut() {
            Some(last) if last.index == delta.index && delta.name.is_none() => {
                last.arguments.push_str(&delta.arguments);
            }
            _ => out.push(delta),
        }
    }
}

/// What a piece of the reply turned out to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Content known not to be part of a call section.
    pub content: String,
    /// Calls' progress.
    pub calls: Vec<CallDelta>,
}

/// What is left when a reply ends: content not yet handed out, the calls, and the calls'
/// progress not streamed yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Finished {
    pub content: String,
    pub calls: Vec<FunctionCall>,
    pub rest: Vec<CallDelta>,
}

/// How far a call section has streamed.
#[derive(Debug, Clone, Default)]
struct Streamed {
    /// Per call whose name went out, the arguments sent.
    sent: Vec<String>,
    /// The open call's arguments: where they start in the section, and whether they sit in
    /// V3's Markdown fence.
    args: Option<(usize, bool)>,
    /// Where the next call is looked for.
    cursor: usize,
    /// The section stopped looking like calls: nothing more streams (the end decides).
    stuck: bool,
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
    /// a call section, and the calls' progress.
    pub fn push(&mut self, piece: &str) -> Pushed {
        if let Some(calls) = &mut self.calls {
            calls.push_str(piece);
            return Pushed {
                content: String::new(),
                calls: self.streamed.advance(calls, self.limit),
            };
        }
        self.held.push_str(piece);
        if let Some(at) = self.held.find(CALLS_BEGIN) {
            let section = self.held.split_off(at);
            let calls = self.streamed.advance(&section, self.limit);
            self.calls = Some(section);
            return Pushed {
                content: std::mem::take(&mut self.held),
                calls,
            };
        }
        let keep = partial_len(&self.held, CALLS_BEGIN);
        let rest = self.held.split_off(self.held.len() - keep);
        Pushed {
            content: std::mem::replace(&mut self.held, rest),
            calls: Vec::new(),
        }
    }

    /// Ends the reply: the held content, the calls (none, with the section returned as
    /// content, when it does not parse) and their progress not streamed yet.
    pub fn finish(self) -> Finished {
        let Some(section) = self.calls else {
            return Finished {
                content: self.held,
                ..Finished::default()
            };
        };
        let Some(mut calls) = parse_section(&section) else {
            return Finished {
                content: self.held + &section,
                ..Finished::default()
            };
        };
        if self.limit == Calls::One {
            calls.truncate(1);
        }
        let rest = calls
            .iter()
            .enumerate()
            .filter_map(|(index, call)| match self.streamed.sent.get(index) {
                // Streamed pieces are prefixes of the arguments as read whole.
                Some(sent) => call
                    .arguments
                    .strip_prefix(sent.as_str())
                    .filter(|more| !more.is_empty())
                    .map(|more| CallDelta {
                        index,
                        name: None,
                        arguments: more.to_string(),
                    }),
                None => Some(CallDelta {
                    index,
                    name: Some(call.name.clone()),
                    arguments: call.arguments.clone(),
                }),
            })
            .collect();
        Finished {
            content: self.held,
            calls,
            rest,
        }
    }
}

impl Streamed {
    /// The progress `section` (the call section so far) allows since the last call.
    fn advance(&mut self, section: &str, limit: Calls) -> Vec<CallDelta> {
        let mut out = Vec::new();
        self.cursor = self.cursor.max(CALLS_BEGIN.len());
        while !self.stuck {
            let Some((at, fenced)) = self.args else {
                if limit == Calls::One && !self.sent.is_empty() {
                    break;
                }
                let rest = section[self.cursor..].trim_start();
                let Some(body) = rest.strip_prefix(CALL_BEGIN) else {
                    // The section's end, part of a marker, or text the end will judge.
                    break;
                };
                let end = body.find(CALL_END);
                let call = end.map_or(body, |e| &body[..e]);
                let Some((name, args_at, fenced)) = header(call, end.is_some()) else {
                    break;
                };
                let Some(name) = call_name(name) else {
                    self.stuck = true;
                    break;
                };
                out.push(CallDelta {
                    index: self.sent.len(),
                    name: Some(name.to_string()),
                    arguments: String::new(),
                });
                self.sent.push(String::new());
                self.args = Some((section.len() - body.len() + args_at, fenced));
                continue;
            };
            let region = &section[at..];
            let end = region.find(CALL_END);
            let arguments = match end {
                Some(end) => call_arguments(&region[..end], fenced),
                None => settled_arguments(region, fenced),
            };
            let index = self.sent.len() - 1;
            let sent = &mut self.sent[index];
            match arguments.strip_prefix(sent.as_str()) {
                Some("") => {}
                Some(more) => {
                    let delta = CallDelta {
                        index,
                        name: None,
                        arguments: more.to_string(),
                    };
                    CallDelta::merge_into(&mut out, delta);
                    sent.push_str(more);
                }
                None => {
                    self.stuck = true;
                    break;
                }
            }
            let Some(end) = end else { break };
            self.cursor = at + end + CALL_END.len();
            self.args = None;
        }
        out
    }
}

/// A call's name as written (after [`CALL_BEGIN`]), where its arguments start in `call`,
/// and whether they sit in V3's fence: `function<sep>NAME\n` (V3) or `NAME<sep>` (V3.1).
/// `call` ends at [`CALL_END`] when `complete`, else it is what has arrived; `None` until
/// the header has.
fn header(call: &str, complete: bool) -> Option<(&str, usize, bool)> {
    let (head, tail) = call.split_once(SEP)?;
    let tail_at = head.len() + SEP.len();
    if head.trim() != "function" {
        return Some((head, tail_at, false));
    }
    match tail.find('\n') {
        Some(newline) => Some((&tail[..newline], tail_at + newline + 1, true)),
        // A whole call without a newline: V3.1's form of a function named `function`.
        None if complete => Some((head, tail_at, false)),
        None => None,
    }
}

/// A call's name, trimmed; `None` when it is not one (empty, or with whitespace inside).
fn call_name(raw: &str) -> Option<&str> {
    let name = raw.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
}

/// A whole call's arguments, from where [`header`] says they start to [`CALL_END`]: V3's
/// fence dropped, trimmed.
fn call_arguments(raw: &str, fenced: bool) -> &str {
    if fenced {
        unfence(raw).trim()
    } else {
        raw.trim()
    }
}

/// The part of an open call's arguments (`region`, from their start) that cannot change:
/// V3's opening fence dropped once complete, and a tail held back that could still be
/// trimmed at the call's end (whitespace, the closing fence, part of [`CALL_END`]).
fn settled_arguments(region: &str, fenced: bool) -> &str {
    let mut t = region.trim_start();
    if fenced {
        if let Some(open) = t.strip_prefix("```") {
            t = match open.split_once('\n') {
                Some((_lang, body)) => body,
                None => return "",
            };
        } else if "```".starts_with(t) {
            return "";
        }
    }
    let t = t.trim_start();
    let t = &t[..t.len() - partial_len(t, CALL_END)];
    let t = t.trim_end();
    let t = t.strip_suffix("```").unwrap_or(t.trim_end_matches('`'));
    t.trim_end()
}

/// A whole reply's content (before the calls) and its calls (as many as `limit` keeps): the
/// tests' view of a whole reply (the server reads through [`super::reply::ReplyReader`]).
#[cfg(test)]
fn split_whole(text: &str, limit: Calls) -> Finished {
    let mut split = ToolCallSplit::new(limit);
    let mut content = split.push(text).content;
    let rest = split.finish();
    content.push_str(&rest.content);
    Finished {
        content,
        calls: rest.calls,
        rest: Vec::new(),
    }
}

/// Bytes at the end of `text` that could be the start of `marker` (a proper prefix).
fn partial_len(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && marker.is_char_boundary(n)
                && marker.starts_with(&text[text.len() - n..])
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
    let (name, args_at, fenced) = header(body, true)?;
    Some(FunctionCall {
        name: call_name(name)?.to_string(),
        arguments: call_arguments(&body[args_at..], fenced).to_string(),
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
    /// whole reply: no piece of a marker is handed out as content before the calls, each
    /// call's name goes out once, before its arguments, and the argument pieces add up to
    /// the whole reply's arguments, streaming before the reply ends.
    #[test]
    fn streamed_pieces_add_up_to_the_whole_reply() {
        let texts = [
            format!(
                "Sure — one moment.{}",
                v3(&[("get_weather", "{\"city\": \"Zürich\"}")])
            ),
            "Plain answer with a ｜ bar and a < sign.".to_string(),
            format!("x{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n```json\n{{"),
            v3(&[
                ("search", "{\"q\": \"a `tick`, a ``` fence\", \"n\": 10}"),
                ("now", "{}"),
            ]),
            // V3.1's calls: no type, no fence.
            format!(
                "{CALLS_BEGIN}{CALL_BEGIN}search{SEP}{{\"q\": \"rust\"}}{CALL_END}\
                 {CALL_BEGIN}now{SEP}{{}}{CALL_END}{CALLS_END}"
            ),
            // Whitespace around the fence and the arguments, a backtick at a piece's end.
            format!(
                "{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n  ```json\n {{\"a\": \"x`\"}} \n``` \
                 {CALL_END}{CALLS_END}"
            ),
            // V3's type without the newline: read as V3.1's call of `function`, as whole.
            format!(
                "{CALLS_BEGIN}{CALL_BEGIN}function{SEP}{{\"a\": 1}}{CALL_END}\n\
                 {CALL_BEGIN}g{SEP}{{}}{CALL_END}{CALLS_END}"
            ),
            // Calls that stream, then text after the section: all content at the end.
            format!("{} and then more", v3(&[("f", "{\"long\": \"argument\"}")])),
        ];
        for text in &texts {
            let whole = split_whole(text, Calls::Parallel);
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            for step in 1..=7 {
                let mut split = ToolCallSplit::default();
                let mut streamed = String::new();
                let mut deltas = Vec::new();
                for piece in chars.chunks(step) {
                    let (start, last) = (piece[0].0, piece[piece.len() - 1]);
                    let out = split.push(&text[start..last.0 + last.1.len_utf8()]);
                    assert!(
                        !out.content.contains('｜') || whole.calls.is_empty(),
                        "{out:?}"
                    );
                    streamed.push_str(&out.content);
                    deltas.extend(out.calls);
                }
                let early: usize = deltas.iter().map(|d| d.arguments.len()).sum();
                let rest = split.finish();
                streamed.push_str(&rest.content);
                assert_eq!(streamed, whole.content, "{text} in pieces of {step}");
                assert_eq!(rest.calls, whole.calls);
                if whole.calls.is_empty() {
                    assert!(rest.rest.is_empty());
                    continue;
                }
                deltas.extend(rest.rest);
                let mut rebuilt: Vec<FunctionCall> = Vec::new();
                for d in deltas {
                    match d.name {
                        Some(name) => {
                            assert_eq!(d.index, rebuilt.len(), "{text}");
                            rebuilt.push(call(&name, &d.arguments));
                        }
                        None => rebuilt[d.index].arguments.push_str(&d.arguments),
                    }
                }
                assert_eq!(rebuilt, whole.calls, "{text} in pieces of {step}");
                assert!(early > 0, "nothing streamed before the end: {text}");
            }
        }
    }
}
