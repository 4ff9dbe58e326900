//! Conversions from the publishers' files to the JSONL (or CSV) that the built-in task
//! YAMLs read. Every output is loaded back through its task's dataset reader before it is
//! returned, so a fetched file always works with `eval run --task NAME`.
//!
//! | converter | input | output rows |
//! |---|---|---|
//! | `Copy` | the file as published | unchanged (MATH-500, GSM8K, HumanEval, SimpleQA) |
//! | `Aime` | JSONL with `problem`, `answer` (and maybe `id`, `url`) | `id, problem, answer[, url]`; with several files the id is `LABEL-N` (`2025-I-3`) |
//! | `Gpqa` | the CSV (`Question`, `Correct Answer`, `Incorrect Answer 1..3`, `Record ID`, `High-level domain`) | `id, question, A, B, C, D, answer, domain, shuffle_seed`: options shuffled by splitmix64 seeded with (seed, row) |
//! | `Mmlu` | simple-evals' CSV (`,Question,A,B,C,D,Answer,Subject`) | `id, question, A, B, C, D, answer, subject` |
//! | `Mbpp` | `sanitized-mbpp.json` (a JSON array) | `task_id, text, code, test_list, test_setup_code` (the sanitized `prompt` and `test_imports`) |
//! | `LiveCodeBench` | `code_generation_lite` JSONL files | stdin problems to `livecodebench`, functional ones to `livecodebench_functional`: `question_id, question_title, question_content, platform, contest_date, difficulty, starter_code, tests, release[, entry_point]` |
//!
//! LiveCodeBench's private tests are stored as base64 of zlib of a Python pickle of a
//! JSON string; the pickle is read by a decoder that accepts exactly that shape (a single
//! string) and names any other opcode. Function-call inputs (one JSON value per line) are
//! turned into one JSON array of arguments.

use std::io::Read;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::{DataError, FetchOptions, Remote, Source};
use crate::task::builtin;

/// How a source's downloads become its tasks' files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// The file is the task's file.
    Copy,
    /// AIME JSONL files to `id, problem, answer`.
    Aime,
    /// GPQA CSV to shuffled A–D JSONL.
    Gpqa,
    /// simple-evals MMLU CSV to JSONL.
    Mmlu,
    /// MBPP sanitized JSON to JSONL.
    Mbpp,
    /// LiveCodeBench release files to the stdin and functional task files.
    LiveCodeBench,
}

/// One converted output: the task, the file's bytes and its row count.
pub type Output = (&'static str, Vec<u8>, usize);

fn bad(file: &str, message: impl Into<String>) -> DataError {
    DataError::Convert {
        file: file.to_string(),
        message: message.into(),
    }
}

fn jsonl(rows: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(r.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn json_rows(f: &Remote, bytes: &[u8]) -> Result<Vec<Map<String, Value>>, DataError> {
    crate::dataset::parse_records(bytes, crate::task::Format::Jsonl, &[], f.name)
        .map_err(|e| bad(f.name, format!("{e:#}")))
}

fn csv_rows(f: &Remote, bytes: &[u8]) -> Result<Vec<Map<String, Value>>, DataError> {
    crate::dataset::parse_records(bytes, crate::task::Format::Csv, &[], f.name)
        .map_err(|e| bad(f.name, format!("{e:#}")))
}

fn field<'a>(
    f: &Remote,
    row: usize,
    r: &'a Map<String, Value>,
    names: &[&str],
) -> Result<&'a Value, DataError> {
    names.iter().find_map(|n| r.get(*n)).ok_or_else(|| {
        bad(
            f.name,
            format!("row {}: no field {}", row + 1, names.join(" or ")),
        )
    })
}

fn text(v: &Value) -> String {
    crate::prompt::value_text(v)
}

impl Converter {
    /// The conversion parameters recorded in the provenance file.
    pub fn params(self, opts: &FetchOptions) -> Vec<String> {
        match self {
            Converter::Gpqa => vec![format!("shuffle_seed={}", opts.gpqa_seed)],
            Converter::LiveCodeBench => vec![format!("release=release_v{}", opts.lcb_release)],
            _ => Vec::new(),
        }
    }

    /// Converts verified downloads into each task's file, checked by loading it back.
    pub fn convert(
        self,
        source: &Source,
        downloads: &[(Remote, Vec<u8>)],
        opts: &FetchOptions,
    ) -> Result<Vec<Output>, DataError> {
        let outputs: Vec<(&'static str, Vec<u8>)> = match self {
            Converter::Copy => {
                let [(_, bytes)] = downloads else {
                    return Err(bad(source.name, "expected exactly one file"));
                };
                vec![(source.tasks[0], bytes.clone())]
            }
            Converter::Aime => vec![(source.tasks[0], jsonl(&aime(downloads)?))],
            Converter::Gpqa => vec![(source.tasks[0], jsonl(&gpqa(downloads, opts.gpqa_seed)?))],
            Converter::Mmlu => vec![(source.tasks[0], jsonl(&mmlu(downloads)?))],
            Converter::Mbpp => vec![(source.tasks[0], jsonl(&mbpp(downloads)?))],
            Converter::LiveCodeBench => {
                let (stdin, functional) = livecodebench(downloads, opts.lcb_release)?;
                vec![
                    ("livecodebench", jsonl(&stdin)),
                    ("livecodebench_functional", jsonl(&functional)),
                ]
            }
        };
        outputs
            .into_iter()
            .map(|(task, bytes)| {
                let rows = check_output(task, &bytes)?;
                Ok((task, bytes, rows))
            })
            .collect()
    }
}

/// Loads a converted file through its task's reader; returns the row count.
fn check_output(task: &str, bytes: &[u8]) -> Result<usize, DataError> {
    let t = builtin(task).ok_or_else(|| bad(task, "not a built-in task"))?;
    let name = format!("{task} (converted)");
    let records =
        crate::dataset::parse_records(bytes, t.dataset.format(), &t.dataset.csv_columns, &name)
            .map_err(|e| bad(task, format!("{e:#}")))?;
    let n = records.len();
    let ps = crate::dataset::problems(records, &t.dataset.fields, &name)
        .map_err(|e| bad(task, format!("{e:#}")))?;
    if let Some(p) = ps.first() {
        crate::prompt::render(&t.prompt, &p.record)
            .map_err(|e| bad(task, format!("the task's prompt: {e}")))?;
        for f in crate::prompt::fields(&t.prompt) {
            if !p.record.contains_key(&f) {
                return Err(bad(
                    task,
                    format!("rows have no field `{f}` for the prompt"),
                ));
            }
        }
    }
    Ok(n)
}

fn aime(downloads: &[(Remote, Vec<u8>)]) -> Result<Vec<Value>, DataError> {
    let several = downloads.len() > 1;
    let mut out = Vec::new();
    for (f, bytes) in downloads {
        let label = f.name.trim_start_matches("test").trim_end_matches(".jsonl");
        for (i, r) in json_rows(f, bytes)?.iter().enumerate() {
            let local = r.get("id").map(text).unwrap_or_else(|| (i + 1).to_string());
            let id = if several {
                format!("{label}-{local}")
            } else {
                local
            };
            let mut row = json!({
                "id": id,
                "problem": text(field(f, i, r, &["problem", "question", "Problem"])?),
                "answer": text(field(f, i, r, &["answer", "Answer"])?),
            });
            if let Some(u) = r.get("url") {
                row["url"] = u.clone();
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// splitmix64: a tiny, well-known generator, so the shuffle is reproducible from the
/// recorded seed in any language.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The order of the four GPQA options of row `row` (0-based) under `seed`: index 0 is
/// the correct answer. Fisher–Yates with splitmix64 seeded by `seed ^ (row * φ)`.
pub fn gpqa_permutation(seed: u64, row: usize) -> [usize; 4] {
    let mut st = seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut p = [0, 1, 2, 3];
    for i in (1..4).rev() {
        let j = (splitmix64(&mut st) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

fn gpqa(downloads: &[(Remote, Vec<u8>)], seed: u64) -> Result<Vec<Value>, DataError> {
    let (f, bytes) = &downloads[0];
    let mut out = Vec::new();
    for (i, r) in csv_rows(f, bytes)?.iter().enumerate() {
        let options = [
            field(f, i, r, &["Correct Answer"])?,
            field(f, i, r, &["Incorrect Answer 1"])?,
            field(f, i, r, &["Incorrect Answer 2"])?,
            field(f, i, r, &["Incorrect Answer 3"])?,
        ];
        let perm = gpqa_permutation(seed, i);
        let letter = ["A", "B", "C", "D"][perm.iter().position(|&o| o == 0).expect("0 is in")];
        let opt = |k: usize| text(options[perm[k]]).trim().to_string();
        out.push(json!({
            "id": r.get("Record ID").map(text).unwrap_or_else(|| i.to_string()),
            "question": text(field(f, i, r, &["Question"])?),
            "A": opt(0), "B": opt(1), "C": opt(2), "D": opt(3),
            "answer": letter,
            "domain": r.get("High-level domain").map(text).unwrap_or_default(),
            "shuffle_seed": seed,
        }));
    }
    Ok(out)
}

fn mmlu(downloads: &[(Remote, Vec<u8>)]) -> Result<Vec<Value>, DataError> {
    let (f, bytes) = &downloads[0];
    let mut out = Vec::new();
    for (i, r) in csv_rows(f, bytes)?.iter().enumerate() {
        let id = r
            .get("")
            .or_else(|| r.get("Unnamed: 0"))
            .map(text)
            .unwrap_or_else(|| i.to_string());
        let mut row = json!({"id": id});
        for (out_key, names) in [
            ("question", &["Question"][..]),
            ("A", &["A"]),
            ("B", &["B"]),
            ("C", &["C"]),
            ("D", &["D"]),
            ("answer", &["Answer"]),
            ("subject", &["Subject"]),
        ] {
            row[out_key] = Value::String(text(field(f, i, r, names)?));
        }
        out.push(row);
    }
    Ok(out)
}

fn mbpp(downloads: &[(Remote, Vec<u8>)]) -> Result<Vec<Value>, DataError> {
    let (f, bytes) = &downloads[0];
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(f.name, e.to_string()))?;
    let Value::Array(items) = v else {
        return Err(bad(f.name, "expected a JSON array of problems"));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(r) = item else {
            return Err(bad(f.name, format!("item {}: not an object", i + 1)));
        };
        let setup = match r.get("test_imports").or_else(|| r.get("test_setup_code")) {
            Some(v) => text(v),
            None => String::new(),
        };
        out.push(json!({
            "task_id": field(f, i, r, &["task_id"])?,
            "text": text(field(f, i, r, &["prompt", "text"])?),
            "code": text(field(f, i, r, &["code"])?),
            "test_list": field(f, i, r, &["test_list"])?,
            "test_setup_code": setup,
        }));
    }
    Ok(out)
}

/// Reads a pickle that holds one string (protocols 2–5: `PROTO`, `FRAME`, one of the
/// unicode opcodes, `MEMOIZE`, `STOP`).
pub fn unpickle_str(bytes: &[u8]) -> Result<String, String> {
    let mut i = 0;
    let mut out: Option<String> = None;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = bytes
            .get(*i..*i + n)
            .ok_or_else(|| format!("pickle ends inside an argument at byte {}", *i))?;
        *i += n;
        Ok(s)
    };
    let len = |b: &[u8]| b.iter().rev().fold(0usize, |a, &x| (a << 8) | x as usize);
    loop {
        let op = *take(&mut i, 1)?.first().expect("one byte");
        match op {
            0x80 => i += 1, // PROTO n
            0x95 => i += 8, // FRAME len
            0x94 => {}      // MEMOIZE
            b'.' => return out.ok_or_else(|| "pickle holds no string".to_string()),
            0x8c | b'X' | 0x8d => {
                let width = match op {
                    0x8c => 1,
                    b'X' => 4,
                    _ => 8,
                };
                let n = len(take(&mut i, width)?);
                let s = take(&mut i, n)?;
                out = Some(String::from_utf8(s.to_vec()).map_err(|e| e.to_string())?);
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    i - 1
                ))
            }
        }
    }
}

/// LiveCodeBench's private tests: plain JSON, or base64(zlib(pickle(JSON string))).
pub fn decode_lcb_tests(s: &str) -> Result<Value, String> {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Ok(v);
    }
    let z = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("base64: {e}"))?;
    let mut p = Vec::new();
    flate2::read::ZlibDecoder::new(&z[..])
        .read_to_end(&mut p)
        .map_err(|e| format!("zlib: {e}"))?;
    let json = unpickle_str(&p)?;
    serde_json::from_str(&json).map_err(|e| format!("JSON inside the pickle: {e}"))
}

/// A function-call test input (one JSON value per line) as one JSON array of arguments.
fn call_args(input: &str) -> Result<String, String> {
    let args: Result<Vec<Value>, _> = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str::<Value>)
        .collect();
    Ok(Value::Array(args.map_err(|e| format!("test input {input:?}: {e}"))?).to_string())
}

fn livecodebench(
    downloads: &[(Remote, Vec<u8>)],
    release: usize,
) -> Result<(Vec<Value>, Vec<Value>), DataError> {
    let (mut stdin, mut functional) = (Vec::new(), Vec::new());
    for (f, bytes) in downloads {
        for (i, r) in json_rows(f, bytes)?.iter().enumerate() {
            let at = |m: String| bad(f.name, format!("row {}: {m}", i + 1));
            let as_tests = |v: &Value| -> Result<Vec<Value>, DataError> {
                let v = match v {
                    Value::String(s) => decode_lcb_tests(s).map_err(&at)?,
                    other => other.clone(),
                };
                match v {
                    Value::Array(a) => Ok(a),
                    _ => Err(at("tests are not a list".into())),
                }
            };
            let mut tests = as_tests(field(f, i, r, &["public_test_cases"])?)?;
            if let Some(p) = r.get("private_test_cases") {
                tests.extend(as_tests(p)?);
            }
            let is_functional = tests
                .first()
                .and_then(|t| t.get("testtype"))
                .and_then(Value::as_str)
                == Some("functional");
            let metadata: Value = match r.get("metadata") {
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
                Some(v) => v.clone(),
                None => Value::Null,
            };
            let tests: Vec<Value> = tests
                .iter()
                .map(|t| {
                    let input = t.get("input").map(text).unwrap_or_default();
                    let input = if is_functional {
                        call_args(&input).map_err(&at)?
                    } else {
                        input
                    };
                    Ok(json!({"input": input, "output": t.get("output").map(text).unwrap_or_default()}))
                })
                .collect::<Result<_, DataError>>()?;
            let mut row = json!({
                "question_id": text(field(f, i, r, &["question_id"])?),
                "question_title": r.get("question_title").map(text).unwrap_or_default(),
                "question_content": text(field(f, i, r, &["question_content"])?),
                "platform": r.get("platform").map(text).unwrap_or_default(),
                "contest_date": r.get("contest_date").map(text).unwrap_or_default(),
                "difficulty": r.get("difficulty").map(text).unwrap_or_default(),
                "starter_code": r.get("starter_code").map(text).unwrap_or_default(),
                "tests": tests,
                "release": format!("release_v{release}"),
            });
            if is_functional {
                let name = metadata
                    .get("func_name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| at("functional problem without metadata.func_name".into()))?;
                row["entry_point"] = Value::String(name.to_string());
                functional.push(row);
            } else {
                stdin.push(row);
            }
        }
    }
    Ok((stdin, functional))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-4 pickle of one string, as Python's `pickle.dumps(s)` writes it.
    fn pickle_str(s: &str) -> Vec<u8> {
        let mut body = vec![0x8c, s.len() as u8];
        body.extend_from_slice(s.as_bytes());
        body.extend_from_slice(&[0x94, b'.']);
        let mut p = vec![0x80, 4, 0x95];
        p.extend_from_slice(&(body.len() as u64).to_le_bytes());
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn unpickles_python_strings_and_names_other_opcodes() {
        assert_eq!(unpickle_str(&pickle_str("[1]")).unwrap(), "[1]");
        // Protocol 2 with BINUNICODE (4-byte length).
        let mut p = vec![0x80, 2, b'X', 2, 0, 0, 0];
        p.extend_from_slice(b"hi");
        p.push(b'.');
        assert_eq!(unpickle_str(&p).unwrap(), "hi");
        let e = unpickle_str(&[0x80, 4, b'K', 1, b'.']).unwrap_err();
        assert!(e.contains("0x4b"), "{e}");
        assert!(unpickle_str(&[0x80, 4, 0x8c, 9, b'a']).is_err());
    }

    #[test]
    fn gpqa_shuffle_is_a_permutation_that_depends_on_seed_and_row() {
        let mut seen = std::collections::HashSet::new();
        for row in 0..64 {
            let p = gpqa_permutation(0, row);
            let mut s = p;
            s.sort();
            assert_eq!(s, [0, 1, 2, 3]);
            seen.insert(p);
        }
        assert!(seen.len() > 12, "only {} orders in 64 rows", seen.len());
        assert_eq!(gpqa_permutation(7, 3), gpqa_permutation(7, 3));
        assert!((0..16).any(|r| gpqa_permutation(0, r) != gpqa_permutation(1, r)));
        // The correct answer lands on every letter.
        let letters: std::collections::HashSet<usize> = (0..64)
            .map(|r| gpqa_permutation(0, r).iter().position(|&o| o == 0).unwrap())
            .collect();
        assert_eq!(letters.len(), 4);
    }

    #[test]
    fn function_call_inputs_become_one_argument_array() {
        assert_eq!(call_args("[1, 2]\n3\n").unwrap(), "[[1,2],3]");
        assert!(call_args("[1,").is_err());
    }
}
