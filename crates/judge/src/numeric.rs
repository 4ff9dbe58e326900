//! GSM8K-style numeric answers.
//!
//! Policy: the reference is the text after `####` when present. The prediction is the
//! last box, else `#### N`, an answer anchor or a final statement (`So she pays $18.`),
//! else a short one-line answer section (see [`crate::extract`]). There is no
//! last-number fallback: a number that is not stated as the answer never counts.
//! Currency signs, thousands separators, trailing units and a trailing `.0`
//! are ignored (`$1,200.00` = 1200); values compare as exact rationals, so `18.00` = 18
//! and `0.5` = `1/2` but `33.3` != `100/3`.

use num_rational::BigRational;

use crate::extract::{final_answer, gsm8k_hashes, last_number, Place, Wanted};
use crate::math::{parse, value::exact};

/// The exact value of a numeric answer such as `$1,200`, `18.00`, `-3`, `\frac{5}{2}`.
pub fn number_value(s: &str) -> Option<BigRational> {
    let t = s.trim();
    if t.is_empty() || t.len() > 256 {
        return None;
    }
    let cleaned: String = t
        .replace("\\$", "")
        .replace(['$', ','], "")
        .replace("\\!", "");
    if let Ok(e) = parse(&cleaned) {
        if let Some(v) = exact(&e) {
            return Some(v);
        }
    }
    // Words around the number ("18 dollars per day"): use the last number.
    let n = last_number(t)?;
    let e = parse(&n.replace(',', "")).ok()?;
    exact(&e)
}

/// The reference number of a GSM8K answer field.
pub fn gold_value(gold: &str) -> Option<BigRational> {
    let g = gsm8k_hashes(gold).unwrap_or_else(|| gold.to_string());
    number_value(&g)
}

/// The numeric answer a response's answer section (after closed reasoning) gives, as
/// text, under the careful policy.
pub fn extract_numeric(section: &str) -> Option<String> {
    let want = Wanted {
        place: Place::Answer,
        boxed_only: false,
        list: false,
        gsm8k: true,
        short: true,
    };
    final_answer(section, want).answer()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let v = |s: &str| number_value(s);
        assert_eq!(v("18.00"), v("18"));
        assert_eq!(v("$5"), v("5"));
        assert_eq!(v("1,200"), v("1200"));
        assert_eq!(v("\\$1,200.50"), v("1200.5"));
        assert_eq!(v("18 dollars"), v("18"));
        assert_ne!(v("0.5"), v("50"));
    }
}
