//! Dataset loaders for the public formats: JSONL, gzip-compressed JSONL and CSV (with
//! or without a header row), mapped to [`Problem`]s by the task's [`Fields`].
//!
//! ```
//! use eval::dataset::{parse_records, problems};
//! use eval::task::{Fields, Format};
//! let rows = parse_records(b"{\"id\": \"a\", \"answer\": \"2\"}\n", Format::Jsonl, &[], "x").unwrap();
//! let ps = problems(rows, &Fields::default(), "x").unwrap();
//! assert_eq!(ps[0].id, "a");
//! ```

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use judge::Gold;
use serde_json::{Map, Value};

use crate::task::{Fields, Format, Task};

/// One problem: its record (for the prompt) and the mapped fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Identifier (the record's id field, else the row number).
    pub id: String,
    /// The whole record, for prompt templates and code checkers.
    pub record: Map<String, Value>,
    /// Reference answer or aliases (empty for code tasks).
    pub gold: Gold,
    /// Tests for code checkers (`Null` otherwise).
    pub tests: Value,
    /// Entry point for HumanEval / function-call checkers.
    pub entry_point: Option<String>,
    /// Subject, for breakdowns.
    pub subject: Option<String>,
    /// Level, for breakdowns.
    pub level: Option<String>,
}

/// Parses a file's bytes into records; `name` is used in error messages.
pub fn parse_records(
    bytes: &[u8],
    format: Format,
    csv_columns: &[String],
    name: &str,
) -> Result<Vec<Map<String, Value>>> {
    let text;
    let jsonl = match format {
        Format::Jsonl => bytes,
        Format::JsonlGz => {
            let mut s = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut s)
                .with_context(|| format!("{name}: not valid gzip"))?;
            text = s;
            &text[..]
        }
        Format::Csv => return parse_csv(bytes, csv_columns, name),
    };
    let text = std::str::from_utf8(jsonl).with_context(|| format!("{name}: not UTF-8"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            Ok(_) => bail!("{name}:{}: expected a JSON object", i + 1),
            Err(e) => bail!("{name}:{}: {e}", i + 1),
        }
    }
    Ok(out)
}

fn parse_csv(bytes: &[u8], columns: &[String], name: &str) -> Result<Vec<Map<String, Value>>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(columns.is_empty())
        .flexible(false)
        .from_reader(bytes);
    let headers: Vec<String> = if columns.is_empty() {
        rdr.headers()
            .with_context(|| format!("{name}: reading the CSV header"))?
            .iter()
            .map(str::to_string)
            .collect()
    } else {
        columns.to_vec()
    };
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{name}: CSV row {}", i + 1))?;
        if rec.len() != headers.len() {
            bail!(
                "{name}: CSV row {}: expected {} columns, found {}",
                i + 1,
                headers.len(),
                rec.len()
            );
        }
        out.push(
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
                .collect(),
        );
    }
    Ok(out)
}

fn text_field(r: &Map<String, Value>, f: &str) -> Option<String> {
    match r.get(f)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// Maps records to problems; ids must be unique.
pub fn problems(
    records: Vec<Map<String, Value>>,
    fields: &Fields,
    name: &str,
) -> Result<Vec<Problem>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.into_iter().enumerate() {
        let id = text_field(&record, &fields.id).unwrap_or_else(|| i.to_string());
        if !seen.insert(id.clone()) {
            bail!("{name}: duplicate problem id {id:?} (row {})", i + 1);
        }
        let gold = match record.get(&fields.answer) {
            Some(Value::Array(a)) => {
                Gold::Aliases(a.iter().map(crate::prompt::value_text).collect())
            }
            Some(v) => Gold::One(crate::prompt::value_text(v)),
            None => Gold::One(String::new()),
        };
        let tests = match record.get(&fields.tests) {
            // Tests stored as a JSON string (LiveCodeBench) are decoded when they parse.
            Some(Value::String(s)) if s.trim_start().starts_with('[') => {
                serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
            }
            Some(v) => v.clone(),
            None => Value::Null,
        };
        out.push(Problem {
            id,
            gold,
            tests,
            entry_point: text_field(&record, &fields.entry_point),
            subject: text_field(&record, &fields.subject),
            level: text_field(&record, &fields.level),
            record,
        });
    }
    Ok(out)
}

/// Loads a task's problems from `path`, honouring `dataset.window` and `dataset.limit`.
pub fn load(task: &Task, path: &Path) -> Result<Vec<Problem>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("task {}: reading dataset {}", task.name, path.display()))?;
    load_bytes(task, &bytes, &path.display().to_string())
}

/// Like [`load`] for bytes already in memory (the embedded suite).
pub fn load_bytes(task: &Task, bytes: &[u8], name: &str) -> Result<Vec<Problem>> {
    let records = parse_records(
        bytes,
        task.dataset.format(),
        &task.dataset.csv_columns,
        name,
    )?;
    let mut ps = problems(records, &task.dataset.fields, name)?;
    if let Some(w) = &task.dataset.window {
        ps.retain(|p| {
            p.record
                .get(&w.field)
                .is_some_and(|v| w.contains(&crate::prompt::value_text(v)))
        });
    }
    if let Some(n) = task.dataset.limit {
        ps.truncate(n);
    }
    if let Some(p) = ps.first() {
        for f in crate::prompt::fields(&task.prompt) {
            if !p.record.contains_key(&f) {
                bail!(
                    "task {}: the prompt uses `{{{f}}}` but {name} has no field `{f}`",
                    task.name
                );
            }
        }
    }
    Ok(ps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_and_without_header() {
        let rows = parse_records(b"problem,answer\n\"a, b\",1\n", Format::Csv, &[], "t").unwrap();
        assert_eq!(rows[0]["problem"], "a, b");
        let cols: Vec<String> = ["q", "A", "answer"].iter().map(|s| s.to_string()).collect();
        let rows = parse_records(b"x,y,B\nz,w,C\n", Format::Csv, &cols, "t").unwrap();
        let ps = problems(rows, &Fields::default(), "t").unwrap();
        assert_eq!(
            (ps[1].id.as_str(), &ps[1].gold),
            ("1", &Gold::One("C".into()))
        );
    }

    #[test]
    fn gzip_jsonl_and_errors_name_the_line() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"id\":1,\"answer\":[\"x\",\"y\"]}\n")
            .unwrap();
        let rows = parse_records(&gz.finish().unwrap(), Format::JsonlGz, &[], "t").unwrap();
        let ps = problems(rows, &Fields::default(), "t").unwrap();
        assert_eq!(ps[0].gold, Gold::Aliases(vec!["x".into(), "y".into()]));
        let e = parse_records(b"{}\n{oops\n", Format::Jsonl, &[], "f.jsonl").unwrap_err();
        assert!(e.to_string().contains("f.jsonl:2"), "{e}");
        let dup = parse_records(b"{\"id\":1}\n{\"id\":1}\n", Format::Jsonl, &[], "d").unwrap();
        assert!(problems(dup, &Fields::default(), "d").is_err());
    }
}
