//! The R1 reasoning split: text before `</think>` is `reasoning_content`, the rest `content`.
//!
//! It follows vLLM's `deepseek_r1` reasoning parser: R1's template prefills `<think>\n`, so
//! the output starts inside the reasoning and usually never says `<think>` (R1-0528 may,
//! and the tag is dropped); the first `</think>` ends the reasoning; an output that never
//! closes it is all reasoning, with `content` `null`. Streams and whole responses go through
//! the same [`ReasoningSplit`], so concatenated deltas equal the whole response. The tags are
//! matched in the decoded text (not by token id), so the split also works for tokenizers
//! without `<think>` tokens; a tail that could still become a tag is held back.
//!
//! Whether a reply starts inside the reasoning is read off the template's generation prompt
//! ([`generation_think`]): R1's newer templates open the block, R1's first template says
//! nothing (the server then prefills `<think>\n`, as DeepSeek recommends), and hybrid
//! templates (V3.1's non-thinking mode) close it, so the reply is all content.

use crate::tokenizer::Tokenizer;

const OPEN: &str = "<think>";
pub(crate) const CLOSE: &str = "</think>";

/// True when the tokenizer's chat template speaks R1's think tags: the server then prefills
/// `<think>\n` and splits replies. No template: false.
pub fn template_thinks(tokenizer: &Tokenizer) -> bool {
    tokenizer
        .chat_template_source()
        .is_some_and(|t| t.contains(OPEN) || t.contains(CLOSE))
}

/// How a template's generation prompt leaves the think block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Think {
    /// It ends inside `<think>`: the reply starts with reasoning.
    Open,
    /// It closes the block (`</think>` last): the reply is content.
    Closed,
    /// It says nothing: prefill `<think>\n`.
    Silent,
}

/// The think state the generation prompt leaves: the text the template adds when asked to
/// open the reply (`with` less its prefix `without`; the whole of `with` if the template
/// does not render that way).
pub(crate) fn generation_think(with: &str, without: &str) -> Think {
    let suffix = with.strip_prefix(without).unwrap_or(with);
    match (suffix.rfind(OPEN), suffix.rfind(CLOSE)) {
        (None, None) => Think::Silent,
        (Some(open), Some(close)) if close > open => Think::Closed,
        (None, Some(_)) => Think::Closed,
        (Some(_), _) => Think::Open,
    }
}

/// Text split into its reasoning and content parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Split {
    pub reasoning: String,
    pub content: String,
}

/// Splits a reply that arrives in pieces.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReasoningSplit {
    /// `</think>` seen: everything now is content.
    closed: bool,
    /// Reasoning text not handed out yet (a possible tag prefix at its end).
    held: String,
}

impl ReasoningSplit {
    /// Adds a piece of the reply; returns what is now known to be reasoning or content.
    pub fn push(&mut self, piece: &str) -> Split {
        if self.closed {
            return Split {
                reasoning: String::new(),
                content: piece.to_string(),
            };
        }
        self.held.push_str(piece);
        // Drop complete opening tags: R1-0528 writes one although the template opened it.
        while let Some(at) = self.held.find(OPEN) {
            self.held.replace_range(at..at + OPEN.len(), "");
        }
        if let Some(at) = self.held.find(CLOSE) {
            self.closed = true;
            let content = self.held[at + CLOSE.len()..].to_string();
            self.held.truncate(at);
            return Split {
                reasoning: std::mem::take(&mut self.held),
                content,
            };
        }
        let keep = partial_tag_len(&self.held);
        let reasoning = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Split {
            reasoning,
            content: String::new(),
        }
    }

    /// The reply ended: the held tail is reasoning after all.
    pub fn finish(&mut self) -> Split {
        Split {
            reasoning: std::mem::take(&mut self.held),
            content: String::new(),
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of a tag.
fn partial_tag_len(text: &str) -> usize {
    [OPEN, CLOSE]
        .iter()
        .flat_map(|tag| (1..tag.len()).map(move |n| &tag[..n]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// Splits a whole reply at once: `(reasoning, content)`, content `None` when empty (the
/// tests' view of a whole reply; the server reads through [`super::reply::ReplyReader`]).
#[cfg(test)]
fn split_whole(text: &str) -> (String, Option<String>) {
    let mut split = ReasoningSplit::default();
    let mut a = split.push(text);
    let b = split.finish();
    a.reasoning.push_str(&b.reasoning);
    let content = Some(a.content).filter(|c| !c.is_empty());
    (a.reasoning, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `pieces` and returns the concatenated reasoning and content.
    fn stream(pieces: &[&str]) -> (String, String) {
        let mut split = ReasoningSplit::default();
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            let s = split.push(p);
            r += &s.reasoning;
            c += &s.content;
        }
        let s = split.finish();
        (r + &s.reasoning, c + &s.content)
    }

    #[test]
    fn splits_like_vllm_deepseek_r1() {
        assert_eq!(
            split_whole("Let me think.\n</think>\n\nThe answer is 4."),
            (
                "Let me think.\n".into(),
                Some("\n\nThe answer is 4.".into())
            )
        );
        // R1-0528 opens the tag itself.
        assert_eq!(
            split_whole("<think>\nhmm</think>42"),
            ("\nhmm".into(), Some("42".into()))
        );
        // Never closed: all reasoning, content null.
        assert_eq!(
            split_whole("still thinking"),
            ("still thinking".into(), None)
        );
        // Stopped right after the tag: content null.
        assert_eq!(split_whole("done</think>"), ("done".into(), None));
        assert_eq!(split_whole(""), (String::new(), None));
        // Only the first closing tag splits.
        assert_eq!(
            split_whole("a</think>b</think>c"),
            ("a".into(), Some("b</think>c".into()))
        );
    }

    #[test]
    fn streaming_holds_back_partial_tags_and_matches_whole() {
        let text = "I think <thin k> is not a tag; 3 < 4.\n</think>\nAnswer: <b>4</b>";
        let whole = split_whole(text);
        // Every way of cutting the text into two and three pieces.
        for i in 0..=text.len() {
            for j in i..=text.len() {
                if !(text.is_char_boundary(i) && text.is_char_boundary(j)) {
                    continue;
                }
                let (r, c) = stream(&[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(
                    (r.as_str(), c.as_str()),
                    (whole.0.as_str(), whole.1.as_deref().unwrap())
                );
            }
        }
        let mut split = ReasoningSplit::default();
        assert_eq!(split.push("abc</th").reasoning, "abc");
        let s = split.push("ink>xyz");
        assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("", "xyz"));
        assert_eq!(split.push("<think>").content, "<think>");
        // A held prefix that turns out not to be a tag is released.
        let mut split = ReasoningSplit::default();
        assert_eq!(split.push("x <").reasoning, "x ");
        assert_eq!(split.push("y").reasoning, "<y");
        assert_eq!(split.push("</").reasoning, "");
        assert_eq!(split.finish().reasoning, "</");
    }

    #[test]
    fn generation_prompts_open_close_or_leave_the_think_block() {
        let history = "<User>Hi</think>?<Assistant>old</think>answer<EOS><User>Q";
        let with = |gen: &str| format!("{history}{gen}");
        assert_eq!(
            generation_think(&with("<Assistant><think>\n"), history),
            Think::Open
        );
        assert_eq!(
            generation_think(&with("<Assistant></think>"), history),
            Think::Closed
        );
        assert_eq!(
            generation_think(&with("<Assistant>"), history),
            Think::Silent
        );
        // Tags in earlier turns do not count; without a common prefix the whole text does.
        assert_eq!(generation_think("x</think>", "y"), Think::Closed);
    }

    #[test]
    fn detects_think_templates() {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny_tokenizer");
        let dir = std::env::temp_dir().join(format!("think-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(tiny.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        let thinks = |template: Option<&str>| {
            let cfg = serde_json::json!({ "chat_template": template }).to_string();
            std::fs::write(dir.join("tokenizer_config.json"), cfg).unwrap();
            template_thinks(&Tokenizer::from_dir(&dir).unwrap())
        };
        assert!(!thinks(None));
        assert!(thinks(Some("{{ x }}<think>\n")));
        assert!(!thinks(Some("{{ x }}")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
