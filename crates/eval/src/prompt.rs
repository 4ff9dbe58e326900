//! Prompt templates: `{field}` is replaced by the record's field; `{{` and `}}` are
//! literal braces. Strings are inserted as they are, lists one item a line, other JSON
//! values in their JSON form. A field missing from the record is an error naming it.
//!
//! ```
//! use eval::prompt::render;
//! let row = serde_json::json!({"problem": "1+1?"});
//! let p = render("{problem} Put it in \\boxed{{}}.", row.as_object().unwrap()).unwrap();
//! assert_eq!(p, "1+1? Put it in \\boxed{}.");
//! ```

use serde_json::{Map, Value};

enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    Field(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let b = template.as_bytes();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'{' | b'}' if b.get(i + 1) == Some(&b[i]) => {
                out.push(Piece::Text(&template[start..i]));
                out.push(Piece::Brace(b[i] as char));
                i += 2;
                start = i;
            }
            b'{' => {
                let end = template[i + 1..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' at byte {i}"))?;
                let name = &template[i + 1..i + 1 + end];
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    return Err(format!(
                        "bad field name {name:?} at byte {i} (write {{{{ for a literal brace)"
                    ));
                }
                out.push(Piece::Text(&template[start..i]));
                out.push(Piece::Field(name));
                i += end + 2;
                start = i;
            }
            b'}' => {
                return Err(format!(
                    "lone '}}' at byte {i} (write }}}} for a literal brace)"
                ))
            }
            _ => i += 1,
        }
    }
    out.push(Piece::Text(&template[start..]));
    Ok(out)
}

/// Checks a template's syntax.
pub fn check_template(template: &str) -> Result<(), String> {
    pieces(template).map(|_| ())
}

/// The field names a template uses.
pub fn fields(template: &str) -> Vec<String> {
    pieces(template)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p {
            Piece::Field(f) => Some(f.to_string()),
            _ => None,
        })
        .collect()
}

/// A JSON value as prompt text.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders `template` with the record's fields.
pub fn render(template: &str, record: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() * 2);
    for p in pieces(template)? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(c) => out.push(c),
            Piece::Field(f) => {
                let v = record
                    .get(f)
                    .ok_or_else(|| format!("the record has no field `{f}`"))?;
                out.push_str(&value_text(v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_lists_and_braces() {
        let r = json!({"q": "Q", "t": ["a", "b"], "n": 3});
        let r = r.as_object().unwrap();
        assert_eq!(render("{q}|{t}|{n}|{{x}}", r).unwrap(), "Q|a\nb|3|{x}");
        assert!(render("{missing}", r).unwrap_err().contains("missing"));
        assert!(check_template("\\boxed{}").is_err());
        assert!(check_template("a } b").is_err());
        assert_eq!(fields("{a} {{b}} {c}"), vec!["a", "c"]);
    }
}
