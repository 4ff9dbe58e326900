//! How a chat reply is read as its text arrives: R1's reasoning split first (when the reply
//! starts inside `<think>`), then DeepSeek's tool calls in what follows (when the request
//! has tools). Whole replies and streams of both chat APIs (`/v1/chat/completions`,
//! `/v1/responses`) read through the same [`ReplyReader`], so a stream's pieces add up to the
//! whole reply.

use super::reasoning::{ReasoningSplit, Split};
use super::tool_calls::{CallDelta, Calls, ToolCallSplit};
use crate::tokenizer::FunctionCall;

/// Reads one reply.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplyReader {
    reasoning: Option<ReasoningSplit>,
    calls: Option<ToolCallSplit>,
}

/// What a piece of the reply turned out to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Piece {
    pub reasoning: String,
    pub content: String,
    /// The calls' progress (names, then pieces of arguments) in this piece.
    pub deltas: Vec<CallDelta>,
    /// The calls, whole (only from [`ReplyReader::finish`]).
    pub calls: Vec<FunctionCall>,
}

impl ReplyReader {
    /// A reader that splits reasoning off (`reasoning`) and reads calls (`calls`, this many).
    pub fn new(reasoning: bool, calls: Option<Calls>) -> Self {
        Self {
            reasoning: reasoning.then(ReasoningSplit::default),
            calls: calls.map(ToolCallSplit::new),
        }
    }

    /// Adds a piece of the reply's text; returns what is now known.
    pub fn push(&mut self, text: &str) -> Piece {
        let Split { reasoning, content } = self.split(text);
        let (content, deltas) = match &mut self.calls {
            Some(calls) => {
                let pushed = calls.push(&content);
                (pushed.content, pushed.calls)
            }
            None => (content, Vec::new()),
        };
        Piece {
            reasoning,
            content,
            deltas,
            calls: Vec::new(),
        }
    }

    /// Adds the reply's last piece and ends it: the held text, and the calls.
    pub fn finish(&mut self, text: &str) -> Piece {
        let Split {
            mut reasoning,
            content,
        } = self.split(text);
        if let Some(split) = &mut self.reasoning {
            reasoning.push_str(&split.finish().reasoning);
        }
        let (content, deltas, calls) = match self.calls.take() {
            Some(mut split) => {
                let pushed = split.push(&content);
                let rest = split.finish();
                let mut deltas = pushed.calls;
                for delta in rest.rest {
                    CallDelta::merge_into(&mut deltas, delta);
                }
                (pushed.content + &rest.content, deltas, rest.calls)
            }
            None => (content, Vec::new(), Vec::new()),
        };
        Piece {
            reasoning,
            content,
            deltas,
            calls,
        }
    }

    fn split(&mut self, text: &str) -> Split {
        match &mut self.reasoning {
            Some(split) => split.push(text),
            None => Split {
                reasoning: String::new(),
                content: text.to_string(),
            },
        }
    }
}

/// A whole reply read: its reasoning (with the split on), its content (`None` when there is
/// none to show: a reply that is all reasoning or all calls) and its calls.
pub(crate) fn read_whole(
    text: &str,
    reasoning: bool,
    calls: Option<Calls>,
) -> (Option<String>, Option<String>, Vec<FunctionCall>) {
    let mut reader = ReplyReader::new(reasoning, calls);
    let Piece {
        reasoning: thought,
        content,
        calls,
        ..
    } = reader.finish(text);
    let content = if reasoning {
        (!content.is_empty()).then_some(content)
    } else {
        (!content.is_empty() || calls.is_empty()).then_some(content)
    };
    (reasoning.then_some(thought), content, calls)
}
