//! The response cache: one JSONL line per generated sample, keyed by
//! `(task, problem id, sample index)`, appended, flushed and `fsync`ed before the sample
//! is scored.
//!
//! Crash safety: a process killed at any point (SIGKILL included) leaves at most one torn
//! last line (a line without its `\n`, or one that does not parse). [`Cache::open`]
//! truncates the file back to the end of the last complete line, so the next append
//! starts clean; a key that appears twice (two processes racing, say) keeps its first
//! line. A resumed run asks only for keys the cache lacks, so no sample is lost or
//! duplicated.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Generation;

#[derive(Serialize, Deserialize)]
struct Entry {
    task: String,
    id: String,
    sample: usize,
    #[serde(flatten)]
    generation: Generation,
}

/// An open cache file.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    file: Mutex<File>,
    entries: Mutex<HashMap<(String, String, usize), Generation>>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `path`, dropping a torn last line.
    pub fn open(path: &Path) -> Result<Cache> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening cache {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut entries = HashMap::new();
        let mut good = 0usize;
        let mut pos = 0usize;
        while let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') {
            let line = &bytes[pos..pos + nl];
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) => {
                    entries
                        .entry((e.task, e.id, e.sample))
                        .or_insert(e.generation);
                    good = pos + nl + 1;
                }
                Err(_) if line.iter().all(u8::is_ascii_whitespace) => good = pos + nl + 1,
                Err(e) => {
                    tracing::warn!(
                        "{}: dropping unreadable line at byte {pos}: {e}",
                        path.display()
                    );
                    good = pos + nl + 1;
                }
            }
            pos += nl + 1;
        }
        if good < bytes.len() {
            tracing::warn!(
                "{}: truncating a torn last line ({} bytes)",
                path.display(),
                bytes.len() - good
            );
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(Cache {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            entries: Mutex::new(entries),
        })
    }

    /// The cached response for a key.
    pub fn get(&self, task: &str, id: &str, sample: usize) -> Option<Generation> {
        self.entries
            .lock()
            .unwrap()
            .get(&(task.to_string(), id.to_string(), sample))
            .cloned()
    }

    /// The number of cached responses.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a response durably (write, flush, fsync) unless the key is present.
    pub fn append(&self, task: &str, id: &str, sample: usize, g: &Generation) -> Result<()> {
        let key = (task.to_string(), id.to_string(), sample);
        let mut entries = self.entries.lock().unwrap();
        if entries.contains_key(&key) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&Entry {
            task: key.0.clone(),
            id: key.1.clone(),
            sample,
            generation: g.clone(),
        })?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap();
        f.write_all(&line)
            .and_then(|_| f.flush())
            .and_then(|_| f.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        entries.insert(key, g.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(t: &str) -> Generation {
        Generation {
            text: t.into(),
            ..Default::default()
        }
    }

    #[test]
    fn torn_last_line_is_dropped_and_duplicates_keep_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        {
            let c = Cache::open(&p).unwrap();
            c.append("t", "a", 0, &gen("one")).unwrap();
            c.append("t", "a", 0, &gen("again")).unwrap();
            c.append("t", "b", 1, &gen("two")).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"task\":\"t\",\"id\":\"a\",\"sample\":0,\"text\":\"dup\"}\n{\"task\":\"t\",\"id\":\"c\",\"sam")
            .unwrap();
        drop(f);
        let c = Cache::open(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("t", "a", 0).unwrap().text, "one");
        c.append("t", "c", 0, &gen("three")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("\"text\":\"three\"}\n"), "{text}");
        assert_eq!(Cache::open(&p).unwrap().len(), 3);
    }
}
