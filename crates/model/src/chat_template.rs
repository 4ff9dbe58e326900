//! A checkpoint's chat template (`tokenizer_config.json`'s `chat_template`), rendered as HF
//! transformers renders it.
//!
//! HF compiles templates in a jinja2 sandbox with `trim_blocks` and `lstrip_blocks` on, loop
//! controls (`{% break %}`, `{% continue %}`), Python's string / dict / list methods
//! (`.strip()`, `.split()`, `.items()`, ...), its own `tojson` (`json.dumps` with
//! `ensure_ascii=False`: no HTML escaping, optional `indent`), and the globals
//! `raise_exception(message)` and `strftime_now(format)` (`transformers.utils.
//! chat_template_utils`). This environment gives minijinja the same, so a template renders the
//! prompt the model was trained on: without `trim_blocks` a multi-line template keeps a newline
//! after every block tag, and without the methods most templates on the Hub fail.
//! `tests/fixtures/chat_templates.json` holds HF's renders of templates exercising each of
//! these (written by `tests/reference/chat_templates.py`).
//!
//! A template is untrusted input: rendering runs on a fuel budget ([`FUEL`]), so one that loops
//! for ever (or for 10^10 steps) is an error, not a hung request.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// Template instructions one render may run: about a second of work, and far more than any
/// real template needs for a long conversation (DeepSeek-V3's spends ~60 per message).
pub const FUEL: u64 = 50_000_000;

/// A chat template, checked for syntax when it is read.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
}

impl ChatTemplate {
    /// Parses `source` (a syntax error names the line).
    pub fn new(source: &str) -> Result<Self> {
        let template = Self {
            source: source.to_string(),
        };
        template.environment()?;
        Ok(template)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template with `context` (`messages`, `add_generation_prompt`, the special
    /// tokens...); a template's `raise_exception` comes back as the error's message.
    pub fn render(&self, context: impl Serialize) -> Result<String> {
        let env = self.environment()?;
        env.get_template("chat")
            .and_then(|t| t.render(context))
            .map_err(|e| template_error(&e))
    }

    /// A fresh environment holding the template (compiling a template takes microseconds; a
    /// fresh one also starts each render with the whole fuel budget).
    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template("chat", &self.source)
            .map_err(|e| template_error(&e))?;
        Ok(env)
    }
}

fn template_error(e: &Error) -> ModelError {
    ModelError::Tokenizer(format!("chat_template: {e}"))
}

/// HF's `raise_exception(message)`: the render fails with the template's own message.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// HF's `strftime_now(format)`: the local time formatted by C's `strftime`, as Python's
/// `datetime.now().strftime` does on Linux.
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    let bad = |why: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {why}"));
    let c_format = std::ffi::CString::new(format).map_err(|_| bad("NUL in the format"))?;
    // SAFETY: `time` with a null argument only returns the time; `localtime_r` writes the
    // zeroed `tm` we own; `strftime` writes at most `buf.len()` bytes into `buf` and returns
    // how many (0 when the result does not fit).
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad("no local time"));
        }
        let mut buf = vec![0u8; 512];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c_format.as_ptr(), &tm);
        buf.truncate(n);
        String::from_utf8(buf).map_err(|_| bad("not UTF-8"))
    }
}

/// HF's `tojson`: Python's `json.dumps(value, ensure_ascii=False, indent=indent)`: `", "` and
/// `": "` between items (`","` before a newline when indented), non-ASCII kept, no HTML
/// escaping, maps in their own order.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be a number or a string",
                ))
            }
        },
    };
    let mut out = String::new();
    write_json(&mut out, &value, indent.as_deref(), 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<&str>,
    depth: usize,
) -> std::result::Result<(), Error> {
    let unsupported = || {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: cannot serialize a {} value", v.kind()),
        )
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let x = f64::try_from(v.clone()).map_err(|_| unsupported())?;
            out.push_str(&python_float(x));
        }
        ValueKind::String => out.push_str(&json_string(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_items(
                out,
                &items,
                indent,
                depth,
                ('[', ']'),
                |out, item, depth| write_json(out, item, indent, depth),
            )?;
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            write_items(out, &keys, indent, depth, ('{', '}'), |out, key, depth| {
                out.push_str(&json_string(&key.to_string()));
                out.push_str(": ");
                write_json(out, &v.get_item(key)?, indent, depth)
            })?;
        }
        _ => return Err(unsupported()),
    }
    Ok(())
}

/// `open item, item close` or, indented, one item per line at `depth + 1`.
fn write_items(
    out: &mut String,
    items: &[Value],
    indent: Option<&str>,
    depth: usize,
    (open, close): (char, char),
    mut item: impl FnMut(&mut String, &Value, usize) -> std::result::Result<(), Error>,
) -> std::result::Result<(), Error> {
    out.push(open);
    if !items.is_empty() {
        for (i, x) in items.iter().enumerate() {
            match indent {
                Some(pad) => {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.push_str(&pad.repeat(depth + 1));
                }
                None if i > 0 => out.push_str(", "),
                None => {}
            }
            item(out, x, depth + 1)?;
        }
        if let Some(pad) = indent {
            out.push('\n');
            out.push_str(&pad.repeat(depth));
        }
    }
    out.push(close);
    Ok(())
}

/// A JSON string literal with Python's escapes (`"`, `\`, and control characters only).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Python's `float.__repr__` for JSON: `1.0`, `2.5`, `1e-05`, `1e+20`, `NaN`, `Infinity`.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let exponent = if x == 0.0 {
        0
    } else {
        x.abs().log10().floor() as i32
    };
    if (-4..16).contains(&exponent) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        // Rust writes `1e-5` / `1e20`; Python `1e-05` / `1e+20`.
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').expect("an exponent");
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        format!("{mantissa}e{sign}{digits:0>2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_prints_them() {
        for (x, want) in [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1e20, "1e+20"),
            (-1.5e-7, "-1.5e-07"),
            (123456.789, "123456.789"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(x), want, "{x}");
        }
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = t.render(()).unwrap_err().to_string();
        assert!(e.contains("fuel"), "{e}");
    }

    #[test]
    fn syntax_errors_are_found_when_the_template_is_read() {
        let e = ChatTemplate::new("{% for m in messages %}{{ m }").unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
    }
}
