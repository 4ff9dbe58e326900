//! `deepseek_judge`: the [`judge`] crate for Python (PyO3, abi3, built with maturin).
//!
//! Functions (all batch functions take the GIL off while they score, on rayon's thread
//! pool, or on `threads` threads when given; results do not depend on the thread count):
//!
//! * `judge(response, gold, kind="math", policy="careful", think_prefilled=False)`:
//!   `{"correct", "extracted", "format", "format_ok"}`.
//! * `accuracy_reward(completions, golds=None, kind="math", ...)`, `format_reward(completions)`,
//!   `language_reward(completions, language="english", prompts=None)`: `list[float]`.
//! * `rewards(completions, golds=None, weights=None, language="english", ...)`:
//!   `list[dict]` with `accuracy`, `format`, `language`, `total`.
//! * `count_words(text)`: `{"latin", "cjk", "other"}`.
//!
//! They accept what TRL's `GRPOTrainer` passes to reward functions (`prompts=`,
//! `completions=`, dataset columns as keywords, anything else ignored): completions as
//! strings or as conversations (the last message's `content`); golds from `golds=` or
//! else a `gold`, `answer` or `solution` column; a gold may be a string, a number or a
//! list of accepted aliases. See `crates/judge-py/README.md`.

use judge::reward::{count_words as words, Completion, Language, RewardConfig, RewardWeights};
use judge::{score_batch, AnswerPolicy, Gold, Judge, JudgeConfig, Kind};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn judge_of(policy: &str, think_prefilled: bool) -> PyResult<Judge> {
    Ok(Judge::new(JudgeConfig {
        policy: policy.parse::<AnswerPolicy>().map_err(value_error)?,
        think_prefilled,
        ..JudgeConfig::default()
    }))
}

/// The text of a completion: a string, a message dict, or a conversation (its last
/// message's `content`).
fn text_of(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    if obj.is_instance_of::<PyString>() {
        return obj.extract::<String>();
    }
    if obj.is_instance_of::<PyDict>() {
        return match obj.get_item("content") {
            Ok(c) if !c.is_none() => text_of(&c),
            _ => Ok(String::new()),
        };
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let n = obj.len()?;
        if n == 0 {
            return Ok(String::new());
        }
        return text_of(&obj.get_item(n - 1)?);
    }
    if obj.is_none() {
        return Ok(String::new());
    }
    Err(PyTypeError::new_err(format!(
        "a completion must be a string or a list of messages, not {}",
        obj.get_type().name()?
    )))
}

/// A reference answer: a string, a number (its `str`), or a list of aliases.
fn gold_of(obj: &Bound<'_, PyAny>) -> PyResult<Gold> {
    if obj.is_instance_of::<PyString>() {
        return Ok(Gold::One(obj.extract()?));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut v = Vec::new();
        for x in obj.try_iter()? {
            v.push(x?.str()?.to_string());
        }
        return Ok(Gold::Aliases(v));
    }
    Ok(Gold::One(obj.str()?.to_string()))
}

fn texts(completions: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    completions.try_iter()?.map(|c| text_of(&c?)).collect()
}

/// The golds: `golds=` or else a `gold`, `answer` or `solution` keyword (TRL passes the
/// dataset's columns as keywords).
fn golds_of(
    golds: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyDict>>,
    n: usize,
) -> PyResult<Vec<Gold>> {
    let mut column = golds.cloned();
    if column.is_none() {
        if let Some(kw) = kwargs {
            for name in ["gold", "answer", "solution"] {
                if let Some(c) = kw.get_item(name)? {
                    column = Some(c);
                    break;
                }
            }
        }
    }
    let Some(column) = column else {
        return Err(PyTypeError::new_err(
            "give the reference answers as golds=[...] (or a `gold`, `answer` or `solution` column)",
        ));
    };
    let v: Vec<Gold> = column
        .try_iter()?
        .map(|g| gold_of(&g?))
        .collect::<PyResult<_>>()?;
    one_per_completion(v, n, "reference answers")
}

/// `v` when it holds one item per completion, else an error naming `what`.
fn one_per_completion<T>(v: Vec<T>, n: usize, what: &str) -> PyResult<Vec<T>> {
    if v.len() != n {
        return Err(value_error(format!(
            "{n} completions but {} {what}",
            v.len()
        )));
    }
    Ok(v)
}

/// One value or one per completion.
fn per_completion<T: Clone>(
    obj: &Bound<'_, PyAny>,
    n: usize,
    what: &str,
    parse: impl Fn(&str) -> PyResult<T>,
) -> PyResult<Vec<T>> {
    if obj.is_instance_of::<PyString>() {
        let one = parse(&obj.extract::<String>()?)?;
        return Ok(vec![one; n]);
    }
    let v: Vec<T> = obj
        .try_iter()?
        .map(|x| parse(&x?.extract::<String>()?))
        .collect::<PyResult<_>>()?;
    one_per_completion(v, n, &format!("values of {what}"))
}

fn kinds(kind: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<Kind>> {
    per_completion(kind, n, "kind", |s| {
        // "choice" and "numeric" are the eval task names of mc and gsm8k.
        match s {
            "choice" => Ok(Kind::Mc),
            "numeric" => Ok(Kind::Gsm8k),
            s => s.parse::<Kind>().map_err(value_error),
        }
    })
}

/// Target languages: a name, one per completion, or `"auto"` (the dominant script of each
/// prompt; English when a prompt has no words or no prompts are given).
fn languages(
    language: &Bound<'_, PyAny>,
    prompts: Option<&Bound<'_, PyAny>>,
    n: usize,
) -> PyResult<Vec<Language>> {
    if language.is_instance_of::<PyString>() && language.extract::<String>()? == "auto" {
        let Some(prompts) = prompts.filter(|p| !p.is_none()) else {
            return Ok(vec![Language::English; n]);
        };
        let p = one_per_completion(texts_of_prompts(prompts)?, n, "prompts")?;
        return Ok(p
            .iter()
            .map(|t| Language::dominant(t).unwrap_or_default())
            .collect());
    }
    per_completion(language, n, "language", |s| {
        s.parse::<Language>().map_err(value_error)
    })
}

/// Prompts as text: strings, or conversations (the last user message).
fn texts_of_prompts(prompts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let mut out = Vec::new();
    for p in prompts.try_iter()? {
        let p = p?;
        if p.is_instance_of::<PyList>() || p.is_instance_of::<PyTuple>() {
            let mut text = String::new();
            for m in p.try_iter()? {
                let m = m?;
                let user = m
                    .get_item("role")
                    .ok()
                    .and_then(|r| r.extract::<String>().ok())
                    .is_none_or(|r| r == "user");
                if user {
                    text = text_of(&m)?;
                }
            }
            out.push(text);
        } else {
            out.push(text_of(&p)?);
        }
    }
    Ok(out)
}

fn weights_of(weights: Option<&Bound<'_, PyAny>>) -> PyResult<RewardWeights> {
    let mut w = RewardWeights::default();
    let Some(obj) = weights.filter(|w| !w.is_none()) else {
        return Ok(w);
    };
    if let Ok(d) = obj.cast::<PyDict>() {
        for (k, v) in d.iter() {
            let k: String = k.extract()?;
            let v: f32 = v.extract()?;
            match k.as_str() {
                "accuracy" => w.accuracy = v,
                "format" => w.format = v,
                "language" => w.language = v,
                other => {
                    return Err(value_error(format!(
                        "unknown reward weight `{other}` (expected accuracy, format, language)"
                    )))
                }
            }
        }
        return Ok(w);
    }
    let (accuracy, format, language): (f32, f32, f32) = obj.extract().map_err(|_| {
        PyTypeError::new_err("weights: a dict {accuracy, format, language} or a 3-tuple")
    })?;
    Ok(RewardWeights {
        accuracy,
        format,
        language,
    })
}

/// Runs `f` without the GIL, on `threads` threads (all of rayon's pool when `None`).
fn batch<T: Send>(
    py: Python<'_>,
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    py.detach(|| match threads {
        None | Some(0) => Ok(f()),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(|pool| pool.install(f))
            .map_err(value_error),
    })
}

/// Judges one response: `{"correct", "extracted", "format", "format_ok"}`.
#[pyfunction]
#[pyo3(name = "judge", signature = (response, gold, kind="math", policy="careful", think_prefilled=false))]
fn judge_one<'py>(
    py: Python<'py>,
    response: &str,
    gold: &Bound<'py, PyAny>,
    kind: &str,
    policy: &str,
    think_prefilled: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let judge = judge_of(policy, think_prefilled)?;
    let kind = kinds(&PyString::new(py, kind).into_any(), 1)?[0];
    let gold = gold_of(gold)?;
    let v = py.detach(|| judge.check(kind, &gold, response));
    let d = PyDict::new(py);
    d.set_item("correct", v.correct)?;
    d.set_item("extracted", v.extracted)?;
    d.set_item("format", v.format.name())?;
    d.set_item("format_ok", v.format.is_valid())?;
    Ok(d)
}

/// Accuracy rewards: 1.0 for each correct final answer, else 0.0.
#[pyfunction]
#[pyo3(signature = (completions, golds=None, kind=None, policy="careful", think_prefilled=false, threads=None, **kwargs))]
#[allow(clippy::too_many_arguments)]
fn accuracy_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    golds: Option<&Bound<'_, PyAny>>,
    kind: Option<&Bound<'_, PyAny>>,
    policy: &str,
    think_prefilled: bool,
    threads: Option<usize>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let judge = judge_of(policy, think_prefilled)?;
    let texts = texts(completions)?;
    let n = texts.len();
    let golds = golds_of(golds, kwargs, n)?;
    let kinds = match kind {
        Some(k) => kinds(k, n)?,
        None => vec![Kind::Math; n],
    };
    batch(py, threads, || {
        use rayon::prelude::*;
        texts
            .par_iter()
            .zip(golds.par_iter())
            .zip(kinds.par_iter())
            .map(|((r, g), k)| f64::from(judge.accuracy_reward(*k, g, r)))
            .collect()
    })
}

/// Format rewards: 1.0 for each response in the R1 think format, else 0.0.
#[pyfunction]
#[pyo3(signature = (completions, think_prefilled=false, threads=None, **_kwargs))]
fn format_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    think_prefilled: bool,
    threads: Option<usize>,
    _kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let judge = judge_of("careful", think_prefilled)?;
    let texts = texts(completions)?;
    batch(py, threads, || {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|r| f64::from(judge.format_reward(r)))
            .collect()
    })
}

/// Language-consistency rewards: the share of each chain of thought's words in the
/// target language (`"english"`, `"chinese"`, one per completion, or `"auto"`: each
/// prompt's dominant script).
#[pyfunction]
#[pyo3(signature = (completions, language=None, prompts=None, think_prefilled=false, threads=None, **_kwargs))]
fn language_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    language: Option<&Bound<'_, PyAny>>,
    prompts: Option<&Bound<'_, PyAny>>,
    think_prefilled: bool,
    threads: Option<usize>,
    _kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let judge = judge_of("careful", think_prefilled)?;
    let texts = texts(completions)?;
    let langs = match language {
        Some(l) => languages(l, prompts, texts.len())?,
        None => vec![Language::English; texts.len()],
    };
    batch(py, threads, || {
        use rayon::prelude::*;
        texts
            .par_iter()
            .zip(langs.par_iter())
            .map(|(r, l)| f64::from(judge.language_reward(r, *l)))
            .collect()
    })
}

/// All rewards of each completion: `{"accuracy", "format", "language", "total"}`, the
/// total weighted by `weights` (a dict or a 3-tuple; default 1, 1, 1).
#[pyfunction]
#[pyo3(signature = (completions, golds=None, kind=None, weights=None, language=None, prompts=None, policy="careful", think_prefilled=false, threads=None, **kwargs))]
#[allow(clippy::too_many_arguments)]
fn rewards<'py>(
    py: Python<'py>,
    completions: &Bound<'py, PyAny>,
    golds: Option<&Bound<'py, PyAny>>,
    kind: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    language: Option<&Bound<'py, PyAny>>,
    prompts: Option<&Bound<'py, PyAny>>,
    policy: &str,
    think_prefilled: bool,
    threads: Option<usize>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let judge = judge_of(policy, think_prefilled)?;
    let texts = texts(completions)?;
    let n = texts.len();
    let golds = golds_of(golds, kwargs, n)?;
    let kinds = match kind {
        Some(k) => kinds(k, n)?,
        None => vec![Kind::Math; n],
    };
    let langs = match language {
        Some(l) => languages(l, prompts, n)?,
        None => vec![Language::English; n],
    };
    let config = RewardConfig {
        weights: weights_of(weights)?,
        language: Language::English,
    };
    let out = batch(py, threads, || {
        let items: Vec<Completion<'_>> = texts
            .iter()
            .zip(&golds)
            .zip(kinds.iter().zip(&langs))
            .map(|((r, g), (k, l))| Completion {
                language: Some(*l),
                ..Completion::new(*k, g, r)
            })
            .collect();
        score_batch(&judge, &items, &config)
    })?;
    out.iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("accuracy", f64::from(r.accuracy))?;
            d.set_item("format", f64::from(r.format))?;
            d.set_item("language", f64::from(r.language))?;
            d.set_item("total", f64::from(r.total))?;
            Ok(d)
        })
        .collect()
}

/// Words of a text by script: `{"latin", "cjk", "other"}` (math, commands, digits and
/// punctuation are not words).
#[pyfunction]
fn count_words<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyDict>> {
    let c = words(text);
    let d = PyDict::new(py);
    d.set_item("latin", c.latin)?;
    d.set_item("cjk", c.cjk)?;
    d.set_item("other", c.other)?;
    Ok(d)
}

/// The Python module.
#[pymodule]
fn deepseek_judge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(judge_one, m)?)?;
    m.add_function(wrap_pyfunction!(accuracy_reward, m)?)?;
    m.add_function(wrap_pyfunction!(format_reward, m)?)?;
    m.add_function(wrap_pyfunction!(language_reward, m)?)?;
    m.add_function(wrap_pyfunction!(rewards, m)?)?;
    m.add_function(wrap_pyfunction!(count_words, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
