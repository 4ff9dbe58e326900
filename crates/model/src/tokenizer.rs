//! `tokenizer.json` through the `tokenizers` crate and the chat template of
//! `tokenizer_config.json` rendered with minijinja.
//!
//! DeepSeek's tokenizers do not add BOS in their post-processor; `add_bos_token: true` in
//! `tokenizer_config.json` asks the caller to. [`Tokenizer::encode`] prepends it for raw text;
//! the chat template writes `{{bos_token}}` itself, so [`Tokenizer::encode_chat`] does not add a
//! second one. R1 checkpoints expect the answer to open with `<think>\n`: newer R1 templates
//! append it, and [`ChatOptions::think_prefill`] appends it for templates that do not.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat_template::ChatTemplate;
use crate::error::{ModelError, Result};

/// One chat message, as chat templates see it (the fields of OpenAI's and HF's messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text; `None` only for an assistant turn that just calls tools (DeepSeek's
    /// templates test `content is none`).
    pub content: Option<String>,
    /// The tool calls of an assistant turn (left out of the template's message when empty,
    /// as HF passes messages without the key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: Some(content.to_string()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A function call in OpenAI's shape (`{"id", "type": "function", "function": {"name",
/// "arguments"}}`), as templates render it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (a `tool` message answering it names it).
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// The function a [`ToolCall`] calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as the model wrote them (JSON text, not checked).
    pub arguments: String,
}

/// How a conversation is turned into a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatOptions {
    /// Append the assistant header so the model answers (HF's `add_generation_prompt`).
    pub add_generation_prompt: bool,
    /// End the prompt with `<think>\n` (R1) unless the template already does (not with
    /// `continue_final_message`, whose prompt ends inside a message).
    pub think_prefill: bool,
    /// End the prompt inside the final message, so the model continues it (HF's and vLLM's
    /// `continue_final_message`: an assistant reply prefilled by the caller). The template
    /// renders the conversation with a tag after that message's text and the prompt is cut
    /// where the tag starts (before any whitespace the template trimmed from the message's
    /// end), as transformers does. Not with `add_generation_prompt`.
    pub continue_final_message: bool,
}

impl Default for ChatOptions {
    fn default() -> Self {
        Self {
            add_generation_prompt: true,
            think_prefill: false,
            continue_final_message: false,
        }
    }
}

/// What a chat template sees besides the messages and the options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatExtras<'a> {
    /// The JSON schemas of the functions the model may call (OpenAI's `tools` array, HF's
    /// `tools` argument), for templates that show them to the model.
    pub tools: Option<&'a [Value]>,
    /// More variables for the template (HF's extra `apply_chat_template` arguments, vLLM's
    /// and SGLang's `chat_template_kwargs`): DeepSeek-V3.1's `thinking`, say. They may
    /// replace `bos_token` / `eos_token`, not the messages, tools, documents or
    /// `add_generation_prompt`.
    pub kwargs: Option<&'a serde_json::Map<String, Value>>,
}

impl ChatExtras<'_> {
    /// An error naming a kwarg that would replace a variable the caller may not set.
    pub fn check(&self) -> Result<()> {
        match self
            .kwargs
            .into_iter()
            .flat_map(|k| k.keys())
            .find(|k| RESERVED_TEMPLATE_VARIABLES.contains(&k.as_str()))
        {
            Some(key) => Err(ModelError::Input(format!(
                "the chat template variable `{key}` cannot be set as an extra argument"
            ))),
            None => Ok(()),
        }
    }
}

/// Template variables the caller's [`ChatExtras::kwargs`] may not set: HF passes them as
/// named arguments, so a second value is an error there too.
const RESERVED_TEMPLATE_VARIABLES: [&str; 4] =
    ["messages", "tools", "documents", "add_generation_prompt"];

/// What [`ChatOptions::continue_final_message`] appends to the final message before
/// rendering (transformers' tag, trailing space included: a template that trims the
/// message also trims the space, which tells the two cases apart).
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// A tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

/// The chat template: `chat_template.jinja` beside the tokenizer when present (how
/// transformers 5 saves it), else `tokenizer_config.json`'s ([`chat_template`]). A syntax
/// error names the file.
fn read_chat_template(dir: &Path, cfg: &Value) -> Result<Option<ChatTemplate>> {
    let jinja = dir.join("chat_template.jinja");
    let (source, from) = if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?;
        (text, jinja)
    } else {
        match chat_template(cfg) {
            Some(source) => (source, dir.join("tokenizer_config.json")),
            None => return Ok(None),
        }
    };
    ChatTemplate::new(&source)
        .map(Some)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", from.display())))
}

/// `tokenizer_config.json`'s `chat_template`: a string, or a list of named templates (the one
/// named `default`).
fn chat_template(cfg: &Value) -> Option<String> {
    match &cfg["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and (if present) `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| {
                ModelError::Tokenizer(format!("{}: invalid JSON: {e}", cfg_path.display()))
            })?
        } else {
            Value::Null
        };
        let chat_template = read_chat_template(dir, &cfg)?;
        Ok(Self::from_parts(inner, &cfg, chat_template))
    }

    /// The tokenizer a llama.cpp GGUF file carries (`tokenizer.ggml.*` and its chat template;
    /// DeepSeek's byte-level BPE with the `deepseek-v3` or `deepseek-llm` pre-tokenizer),
    /// rebuilt as the HF tokenizer it was converted from; `None` when the file has none.
    pub fn from_gguf(path: &Path) -> Result<Option<Self>> {
        let Some((json, cfg)) = crate::gguf::embedded_tokenizer(path)? else {
            return Ok(None);
        };
        let in_file = |e: String| ModelError::Tokenizer(format!("{}: {e}", path.display()));
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| in_file(e.to_string()))?;
        let chat_template = chat_template(&cfg)
            .map(|t| ChatTemplate::new(&t))
            .transpose()
            .map_err(|e| in_file(e.to_string()))?;
        Ok(Some(Self::from_parts(inner, &cfg, chat_template)))
    }

    /// The tokenizer for the checkpoint at `model`: `dir`'s when given (it must have one);
    /// otherwise `tokenizer.json` beside the checkpoint (in its directory, or the GGUF file's),
    /// else the tokenizer a GGUF file carries; `None` when there is none.
    pub fn for_model(model: &Path, dir: Option<&Path>) -> Result<Option<Self>> {
        if let Some(dir) = dir {
            return Self::from_dir(dir).map(Some);
        }
        let is_gguf = crate::gguf::is_gguf_file(model);
        let beside = if is_gguf {
            model.parent().unwrap_or(Path::new("."))
        } else {
            model
        };
        if beside.join("tokenizer.json").is_file() {
            return Self::from_dir(beside).map(Some);
        }
        if is_gguf {
            return Self::from_gguf(model);
        }
        Ok(None)
    }

    /// A tokenizer from its model and its `tokenizer_config.json` fields.
    fn from_parts(
        inner: tokenizers::Tokenizer,
        cfg: &Value,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        let special = |key: &str| -> Option<(String, u32)> {
            // Either a plain string or an AddedToken object with "content".
            let text = match &cfg[key] {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            let id = inner.token_to_id(&text)?;
            Some((text, id))
        };
        Self {
            bos: special("bos_token"),
            eos: special("eos_token"),
            add_bos: cfg["add_bos_token"].as_bool().unwrap_or(false),
            chat_template,
            inner,
        }
    }

    /// The BOS token id, if the config names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.1)
    }

    /// The EOS token id, if the config names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|b| b.1)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes raw text, prepending BOS when `add_bos_token` is set.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_plain(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Encodes text as is (special-token strings in it become their ids; nothing is added).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text (special tokens kept, so think tags stay visible).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The same tokenizer with `source` as its chat template instead of its own (vLLM's and
    /// llama-server's `--chat-template`: a template that shows tools to the model, say).
    pub fn with_chat_template(mut self, source: &str) -> Result<Self> {
        self.chat_template = Some(ChatTemplate::new(source)?);
        Ok(self)
    }

    /// The tokenizer as HF's `tokenizer.json` (what [`crate::structured`] reads token bytes
    /// from).
    pub(crate) fn hf_json(&self) -> Result<Value> {
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The chat template's text, if the tokenizer has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_ref().map(ChatTemplate::source)
    }

    /// Renders the chat template over `messages`.
    pub fn apply_chat_template(&self, messages: &[Message], opts: ChatOptions) -> Result<String> {
        self.render_chat(messages, ChatExtras::default(), opts)
    }

    /// Renders the chat template over `messages` with `extras` (tools, template variables),
    /// as transformers' `apply_chat_template` renders it.
    pub fn render_chat(
        &self,
        messages: &[Message],
        extras: ChatExtras<'_>,
        opts: ChatOptions,
    ) -> Result<String> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            ModelError::Tokenizer("tokenizer_config.json has no chat_template".into())
        })?;
        extras.check()?;
        if !opts.continue_final_message {
            let mut text = self.render_with(template, messages, extras, opts)?;
            if opts.think_prefill && !text.ends_with("<think>\n") {
                text.push_str("<think>\n");
            }
            return Ok(text);
        }
        if opts.add_generation_prompt {
            return Err(ModelError::Input(
                "continue_final_message and add_generation_prompt cannot both be set: the \
                 first continues the final message, the second starts a new one"
                    .into(),
            ));
        }
        let Some(final_text) = messages.last().and_then(|m| m.content.as_deref()) else {
            return Err(ModelError::Input(
                "continue_final_message needs a final message with content to continue".into(),
            ));
        };
        let mut tagged = messages.to_vec();
        if let Some(last) = tagged.last_mut() {
            last.content = Some(format!("{final_text}{CONTINUE_TAG}"));
        }
        let text = self.render_with(template, &tagged, extras, opts)?;
        let tag = CONTINUE_TAG.trim();
        let at = match text.rfind(tag) {
            Some(at) if text.contains(final_text.trim()) => at,
            _ => {
                return Err(ModelError::Input(
                    "continue_final_message: the chat template drops part of the final \
                     message, so the prompt cannot end inside it"
                        .into(),
                ))
            }
        };
        Ok(if text[at..].starts_with(CONTINUE_TAG) {
            text[..at].to_string()
        } else {
            // The template trimmed the message's end: so is the prompt.
            text[..at].trim_end().to_string()
        })
    }

    /// One render of `template`, with HF's variables.
    fn render_with(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        extras: ChatExtras<'_>,
        opts: ChatOptions,
    ) -> Result<String> {
        // HF's `render_jinja_template` defines `tools` and `documents` as None when there are
        // none (templates test `tools is not none`). The caller's kwargs replace the special
        // tokens (HF merges them over its special-tokens map).
        let specials = minijinja::context! {
            bos_token => self.bos.as_ref().map_or("", |b| b.0.as_str()),
            eos_token => self.eos.as_ref().map_or("", |b| b.0.as_str()),
        };
        let named = minijinja::context! {
            messages => messages,
            tools => extras.tools,
            documents => (),
            add_generation_prompt => opts.add_generation_prompt,
        };
        // Later maps win.
        template.render(minijinja::value::merge_maps([
            specials,
            minijinja::Value::from_serialize(extras.kwargs),
            named,
        ]))
    }

    /// Renders and encodes a conversation (the template supplies BOS).
    pub fn encode_chat(&self, messages: &[Message], opts: ChatOptions) -> Result<Vec<u32>> {
        self.encode_plain(&self.apply_chat_template(messages, opts)?)
    }
}

/// Turns a growing list of generated ids into text pieces without splitting UTF-8 characters
/// that span several byte-level tokens.
///
/// Each step decodes only a short window (the tokens since the last emitted piece plus the
/// ones before it, for context), so a 32K-token generation costs O(tokens), not the O(tokens²)
/// of decoding everything again per token: the incremental decoding of HF's text-generation-
/// inference and vLLM.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the context window (tokens before it are final).
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        // A trailing U+FFFD is a character whose remaining bytes are still to come.
        if now.ends_with('\u{FFFD}')
            || now.len() <= before.len()
            || !now.is_char_boundary(before.len())
        {
            return Ok(None);
        }
        let piece = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(piece))
    }

    /// The text of the tokens not yet returned, as it decodes now (an incomplete character
    /// becomes U+FFFD): what is left when generation ends.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(match now.get(before.len()..) {
            Some(rest) if now.starts_with(&before) => rest.to_string(),
            _ => String::new(),
        })
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
