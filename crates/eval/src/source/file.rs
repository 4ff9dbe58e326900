//! Responses from a file: JSONL lines `{"id", "sample", "text"}` (optionally `"task"`, to
//! keep several tasks in one file, `"reasoning"` and `"finish_reason"`), such as saved
//! model output or the bundled suite's reference responses. What CI uses.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{BoxFuture, Generation, Request, ResponseSource};

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    task: Option<String>,
    id: serde_json::Value,
    #[serde(default)]
    sample: usize,
    #[serde(alias = "response")]
    text: String,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Responses read from a file.
#[derive(Debug, Default)]
pub struct ResponseFile {
    name: String,
    map: HashMap<(Option<String>, String, usize), Generation>,
}

fn id_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ResponseFile {
    /// Parses JSONL text; `name` is used in errors. A repeated key is an error.
    pub fn parse(text: &str, name: &str) -> Result<ResponseFile> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: Line =
                serde_json::from_str(line).with_context(|| format!("{name}:{}", i + 1))?;
            let key = (l.task, id_text(&l.id), l.sample);
            let g = Generation {
                text: l.text,
                reasoning: l.reasoning,
                finish_reason: l.finish_reason,
                ..Generation::default()
            };
            if map.insert(key.clone(), g).is_some() {
                bail!(
                    "{name}:{}: duplicate response for id {:?} sample {}",
                    i + 1,
                    key.1,
                    key.2
                );
            }
        }
        Ok(ResponseFile {
            name: name.to_string(),
            map,
        })
    }

    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<ResponseFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ResponseFile::parse(&text, &path.display().to_string())
    }

    /// The number of samples in the file for `(task, id)`.
    pub fn samples_for(&self, task: &str, id: &str) -> usize {
        self.map
            .keys()
            .filter(|(t, i, _)| i == id && t.as_deref().is_none_or(|t| t == task))
            .count()
    }

    /// The response for a key, if the file has it (a line without `task` matches any task).
    pub fn get(&self, task: &str, id: &str, sample: usize) -> Option<&Generation> {
        self.map
            .get(&(Some(task.to_string()), id.to_string(), sample))
            .or_else(|| self.map.get(&(None, id.to_string(), sample)))
    }
}

impl ResponseSource for ResponseFile {
    fn describe(&self) -> String {
        format!("responses from {}", self.name)
    }
    fn wants_cache(&self) -> bool {
        false
    }
    fn generate<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Generation>> {
        Box::pin(async move {
            self.get(&req.task, &req.id, req.sample)
                .cloned()
                .with_context(|| format!("{}: no response for {}", self.name, req.key()))
        })
    }
}
