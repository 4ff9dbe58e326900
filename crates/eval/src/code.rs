//! Code checkers: take the program from a response, assemble it with the problem's
//! tests, and run it in the [`crate::sandbox`].
//!
//! Extraction policy (LiveCodeBench's, made R1-aware):
//!
//! 1. Only the answer section counts (after `</think>`); an unterminated think block
//!    has no code.
//! 2. The last fenced block (```` ```python ````, ```` ```py ```` or a bare fence) is the
//!    program; an unclosed last fence runs to the end. Without a fence the whole answer
//!    section is the program (raw completions, HumanEval's canonical solutions).
//!
//! Assembly per checker:
//!
//! * HumanEval: `prompt + completion` when the completion is a function body; when it
//!   defines the entry point itself, `prompt + "\n" + code` (the prompt's imports are
//!   kept and the new definition replaces the stub). Then `test` and
//!   `check(entry_point)`.
//! * MBPP (`python_asserts`): the program, the record's `test_setup_code` if any, then
//!   every assert line.
//! * `stdio`: the program once per test with the test's input on stdin; outputs are
//!   compared line by line after stripping trailing whitespace and blank lines at the end.
//! * `function_call`: the program and a harness that calls `entry_point(*args)` (or the
//!   method of `Solution()`) for every test and compares with the JSON output.

use judge::response::split;
use serde_json::Value;

use crate::dataset::Problem;
use crate::sandbox::{run_python, Outcome, SandboxConfig};
use crate::task::Checker;

/// The verdict of a code check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeVerdict {
    /// Whether every test passed.
    pub correct: bool,
    /// `passed`, `no code`, `timeout`, or the first failure.
    pub detail: String,
}

/// The program in a response, under the module's policy; `None` without an answer.
pub fn extract_code(response: &str) -> Option<String> {
    let answer = split(response).answer?;
    let mut last: Option<String> = None;
    let mut rest = answer;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let body_start = after.find('\n').map(|i| i + 1).unwrap_or(after.len());
        let lang = after[..body_start].trim();
        let body = &after[body_start..];
        let ok_lang = lang.is_empty() || matches!(lang, "python" | "py" | "python3" | "Python");
        match body.find("```") {
            Some(close) => {
                if ok_lang {
                    last = Some(body[..close].to_string());
                }
                rest = &body[close + 3..];
            }
            None => {
                if ok_lang {
                    last = Some(body.to_string());
                }
                break;
            }
        }
    }
    let code = last.unwrap_or_else(|| answer.to_string());
    (!code.trim().is_empty()).then_some(code)
}

fn defines(code: &str, name: &str) -> bool {
    code.lines().any(|l| {
        let t = l.trim_start();
        t.strip_prefix("def ")
            .or_else(|| t.strip_prefix("async def "))
            .map(str::trim_start)
            .is_some_and(|r| r.starts_with(name) && r[name.len()..].trim_start().starts_with('('))
    })
}

fn text(v: &Value) -> String {
    crate::prompt::value_text(v)
}

/// The Python programs (with stdin) to run for a response; empty when it has no code.
pub fn programs(checker: Checker, problem: &Problem, response: &str) -> Vec<(String, String)> {
    let Some(code) = extract_code(response) else {
        return Vec::new();
    };
    let rec = &problem.record;
    let entry = problem.entry_point.clone().unwrap_or_default();
    match checker {
        Checker::Humaneval => {
            let prompt = rec.get("prompt").map(text).unwrap_or_default();
            let body = if !entry.is_empty() && defines(&code, &entry) {
                format!("{prompt}\n    pass\n\n{code}")
            } else {
                format!("{prompt}{code}")
            };
            vec![(
                format!("{body}\n\n{}\n\ncheck({entry})\n", text(&problem.tests)),
                String::new(),
            )]
        }
        Checker::PythonAsserts => {
            let setup = rec.get("test_setup_code").map(text).unwrap_or_default();
            vec![(
                format!("{code}\n\n{setup}\n{}\n", text(&problem.tests)),
                String::new(),
            )]
        }
        Checker::Stdio => tests(problem)
            .into_iter()
            .map(|(input, _)| (code.clone(), input))
            .collect(),
        Checker::FunctionCall => {
            let cases: Vec<Value> = tests(problem)
                .into_iter()
                .map(|(i, o)| Value::Array(vec![Value::String(i), Value::String(o)]))
                .collect();
            let harness = format!(
                r#"

import json as _json
_name = {name}
_f = globals().get(_name)
if _f is None and "Solution" in globals():
    _f = getattr(Solution(), _name)
for _i, (_inp, _out) in enumerate(_json.loads({cases})):
    _args = _json.loads(_inp)
    if not isinstance(_args, list):
        _args = [_args]
    _got = _f(*_args)
    _want = _json.loads(_out)
    if isinstance(_got, tuple):
        _got = list(_got)
    assert _got == _want, f"test {{_i}}: expected {{_want!r}}, got {{_got!r}}"
"#,
                name = Value::String(entry.clone()),
                cases = Value::String(Value::Array(cases).to_string()),
            );
            vec![(format!("{code}{harness}"), String::new())]
        }
        _ => Vec::new(),
    }
}

/// `(input, expected output)` pairs of a stdio / function-call problem.
fn tests(problem: &Problem) -> Vec<(String, String)> {
    match &problem.tests {
        Value::Array(items) => items
            .iter()
            .map(|t| {
                let f = |k: &str| match t.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                (f("input"), f("output"))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn same_output(got: &str, want: &str) -> bool {
    let norm = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s.lines().map(|l| l.trim_end().to_string()).collect();
        while v.last().is_some_and(|l| l.is_empty()) {
            v.pop();
        }
        v
    };
    norm(got) == norm(want)
}

/// Checks a response by running it; programs of one response run one after another and
/// stop at the first failure.
pub fn check(
    checker: Checker,
    problem: &Problem,
    response: &str,
    cfg: &SandboxConfig,
) -> CodeVerdict {
    let progs = programs(checker, problem, response);
    if progs.is_empty() {
        return CodeVerdict {
            correct: false,
            detail: "no code".into(),
        };
    }
    let expected = tests(problem);
    for (i, (src, stdin)) in progs.iter().enumerate() {
        let o: Outcome = run_python(cfg, src, stdin);
        if !o.passed() {
            return CodeVerdict {
                correct: false,
                detail: o.summary(),
            };
        }
        if checker == Checker::Stdio && !same_output(&o.stdout, &expected[i].1) {
            return CodeVerdict {
                correct: false,
                detail: format!("wrong output on test {i}"),
            };
        }
    }
    CodeVerdict {
        correct: true,
        detail: "passed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_takes_last_python_fence_after_think() {
        let r = "<think>```python\nx=1\n```</think>Here:\n```python\na=1\n```\nthen\n```py\nb=2\n```\n```text\nno\n```";
        assert_eq!(extract_code(r).as_deref(), Some("b=2\n"));
        assert_eq!(extract_code("<think>```python\nx=1\n```"), None);
        assert_eq!(
            extract_code("    return 1\n").as_deref(),
            Some("    return 1\n")
        );
        assert_eq!(
            extract_code("</think>```python\nopen=1").as_deref(),
            Some("open=1")
        );
        assert!(defines("def  f (x):", "f") && !defines("def fx(x):", "f"));
        assert!(same_output("1\n2  \n\n", "1\n2"));
    }
}
