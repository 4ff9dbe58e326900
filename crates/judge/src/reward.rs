//! GRPO rewards for R1-style training: accuracy, format, language consistency, their
//! weighted sum, and a batch API.
//!
//! # The rewards
//!
//! Each component is in `[0, 1]`:
//!
//! * **accuracy**: 1.0 when [`Judge::check`] says the final answer is correct, else 0.0
//!   ([`Judge::accuracy_reward`]).
//! * **format**: 1.0 when the response follows the R1 think format
//!   ([`crate::response::ThinkFormat::is_valid`]), else 0.0 ([`Judge::format_reward`]).
//! * **language consistency** (DeepSeek-R1, section 2.3.2): the proportion of words of the
//!   chain of thought that are in the target [`Language`] ([`Judge::language_reward`],
//!   [`language_consistency`], word counting in [`count_words`]).
//!
//! [`RewardBreakdown::total`] is their weighted sum under [`RewardWeights`] (default 1, 1, 1:
//! R1 adds the language reward to the accuracy reward, R1-Zero the format reward).
//!
//! # Which text the language reward reads
//!
//! The reasoning: the text before `</think>` (without the opening tag). When a response
//! has no closing tag (no tags at all, or reasoning cut off before `</think>`) its whole
//! text is the chain of thought.
//!
//! # Words
//!
//! Script detection, not a language model ([`count_words`]):
//!
//! * every CJK ideograph, kana and hangul syllable is one CJK word (Chinese has no spaces);
//! * a run of two or more Latin letters (ASCII, accented and fullwidth Latin letters,
//!   apostrophes inside the run) is one Latin word; a single letter is not counted, because
//!   in reasoning it is nearly always a variable (`x`, `n`), not a word;
//! * a run of letters of any other script except Greek (Cyrillic, Arabic, Thai...) is one
//!   word of neither language; Greek letters are left out as math symbols (`π`, `θ`);
//! * digits, punctuation, symbols and whitespace are not words, and neither is math:
//!   `$...$`, `$$...$$`, `\(...\)`, `\[...\]`, math environments (`\begin{align} ...
//!   \end{align}`, `equation`, `gather`, `cases`, the matrices...), LaTeX commands
//!   (`\frac`, `\quad`) and the think tags (`<think>`, `</think>`, `<|...|>`) are skipped.
//!   An opening delimiter without its closer is skipped alone (a `$5` price is not math).
//!
//! # Empty reasoning
//!
//! Reasoning with no words at all (empty, or only math and digits) mixes no languages and
//! gets a language reward of **1.0**. Empty or missing reasoning is the format reward's
//! business, which gives it 0.0.
//!
//! # Example
//!
//! ```
//! use judge::reward::{score_batch, Completion, Language, RewardConfig, RewardWeights};
//! use judge::{Judge, Kind};
//!
//! let judge = Judge::default();
//! let gold = "4".into();
//! let english = "<think>Two plus two makes four.</think>The answer is $\\boxed{4}$.";
//! let mixed = "<think>Two plus two 等于四.</think>\\boxed{4}";
//! assert_eq!(judge.language_reward(english, Language::English), 1.0);
//! // "Two", "plus", "two" against 等, 于, 四: 3 of 6 words are English.
//! assert_eq!(judge.language_reward(mixed, Language::English), 0.5);
//!
//! let config = RewardConfig {
//!     weights: RewardWeights { accuracy: 1.0, format: 0.5, language: 1.0 },
//!     language: Language::English,
//! };
//! let batch = [Completion::new(Kind::Math, &gold, english), Completion::new(Kind::Math, &gold, mixed)];
//! let r = score_batch(&judge, &batch, &config);
//! assert_eq!((r[0].accuracy, r[0].format, r[0].language, r[0].total), (1.0, 1.0, 1.0, 2.5));
//! assert_eq!((r[1].accuracy, r[1].format, r[1].language, r[1].total), (1.0, 1.0, 0.5, 2.0));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::JudgeError;
use crate::grader::{Gold, Judge, Kind};
use crate::response::{split_with, SplitOptions, ThinkFormat};

/// The target language of the language-consistency reward, by script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Latin-script words (English and other Latin-alphabet languages).
    #[default]
    English,
    /// CJK words: ideographs, kana and hangul, one word per character.
    Chinese,
}

impl Language {
    /// The language most of `text`'s words are in (ties go to English), `None` when the
    /// text has no Latin or CJK words; for instance the target language of a prompt.
    ///
    /// ```
    /// use judge::reward::Language;
    /// assert_eq!(Language::dominant("求 x 的值"), Some(Language::Chinese));
    /// assert_eq!(Language::dominant("Find the value of x."), Some(Language::English));
    /// assert_eq!(Language::dominant("$1 + 1$"), None);
    /// ```
    pub fn dominant(text: &str) -> Option<Language> {
        let c = count_words(text);
        if c.cjk > c.latin {
            Some(Language::Chinese)
        } else if c.latin > 0 {
            Some(Language::English)
        } else {
            None
        }
    }

    /// The name used in files and on the command line: `english` or `chinese`.
    pub fn name(self) -> &'static str {
        match self {
            Language::English => "english",
            Language::Chinese => "chinese",
        }
    }
}

impl FromStr for Language {
    type Err = JudgeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "english" | "en" | "latin" => Ok(Language::English),
            "chinese" | "zh" | "cjk" => Ok(Language::Chinese),
            _ => Err(JudgeError::UnknownLanguage(s.to_string())),
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Words of a text by script (see the module documentation for what counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct WordCounts {
    /// Latin-script words (runs of two or more letters).
    pub latin: usize,
    /// CJK ideographs, kana and hangul (one word each).
    pub cjk: usize,
    /// Words in other scripts (Cyrillic, Arabic...; not Greek).
    pub other: usize,
}

impl WordCounts {
    /// All words.
    pub fn total(&self) -> usize {
        self.latin + self.cjk + self.other
    }

    /// The words in `language`.
    pub fn of(&self, language: Language) -> usize {
        match language {
            Language::English => self.latin,
            Language::Chinese => self.cjk,
        }
    }

    /// The proportion of words in `language`; `None` when there are no words.
    pub fn proportion(&self, language: Language) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.of(language) as f64 / total as f64)
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF      // CJK Unified Ideographs Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x3134F  // Extensions B-H, compatibility supplement
        | 0x3040..=0x309F    // Hiragana
        | 0x30A0..=0x30FF    // Katakana
        | 0x31F0..=0x31FF    // Katakana Phonetic Extensions
        | 0xFF66..=0xFF9D    // Halfwidth Katakana
        | 0x3100..=0x312F    // Bopomofo
        | 0x31A0..=0x31BF    // Bopomofo Extended
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0x3130..=0x318F    // Hangul Compatibility Jamo
        | 0xAC00..=0xD7AF    // Hangul Syllables
    ) && c != '\u{30FB}' // katakana middle dot (punctuation)
        && c != '\u{30FC}' // prolonged sound mark
}

fn is_latin_letter(c: char) -> bool {
    c.is_ascii_alphabetic()
        || matches!(c as u32,
            0x00C0..=0x00D6 | 0x00D8..=0x00F6 | 0x00F8..=0x024F // Latin-1 letters, Extended-A/B
            | 0x1E00..=0x1EFF                                   // Latin Extended Additional
            | 0xFF21..=0xFF3A | 0xFF41..=0xFF5A                 // fullwidth Latin
        )
}

fn is_greek(c: char) -> bool {
    matches!(c as u32, 0x0370..=0x03FF | 0x1F00..=0x1FFF)
}

fn is_combining(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF)
}

/// Math environments whose body is skipped like `$...$`.
const MATH_ENVS: &[&str] = &[
    "equation",
    "align",
    "alignat",
    "gather",
    "multline",
    "eqnarray",
    "flalign",
    "math",
    "displaymath",
    "array",
    "matrix",
    "pmatrix",
    "bmatrix",
    "vmatrix",
    "Vmatrix",
    "smallmatrix",
    "cases",
    "split",
    "aligned",
    "gathered",
    "tabular",
];

/// Closers searched for from increasing positions: once a search fails, every later one
/// would too, which keeps the scan linear.
#[derive(Default)]
struct Closers {
    dollar: bool,
    double_dollar: bool,
    paren: bool,
    bracket: bool,
    envs: Vec<String>,
}

/// Finds `pat` in `text[from..]`, remembering a failure in `failed`.
fn find_from(text: &str, from: usize, pat: &str, failed: &mut bool) -> Option<usize> {
    if *failed {
        return None;
    }
    let r = text[from..].find(pat).map(|p| from + p);
    *failed = r.is_none();
    r
}

/// The end of a `{name}` argument starting at `at` (which must be `{`), and the name.
fn brace_arg(text: &str, at: usize) -> Option<(usize, &str)> {
    let rest = text.get(at..)?;
    if !rest.starts_with('{') {
        return None;
    }
    let window = &rest.as_bytes()[..rest.len().min(40)];
    let close = window.iter().position(|&b| b == b'}')?;
    Some((at + close + 1, &rest[1..close]))
}

/// Counts the words of `text` by script, skipping math, LaTeX commands, think tags,
/// digits and punctuation (the rules are in the module documentation). Linear in the
/// length of `text`.
///
/// ```
/// use judge::reward::count_words;
/// let c = count_words("Let $x^2 = 4$, so x = 2 or 我们得到 \\(x=-2\\).");
/// assert_eq!((c.latin, c.cjk, c.other), (3, 4, 0)); // Let, so, or; 我, 们, 得, 到
/// ```
pub fn count_words(text: &str) -> WordCounts {
    #[derive(PartialEq, Clone, Copy)]
    enum Run {
        None,
        Latin(usize),
        Other,
    }
    let mut counts = WordCounts::default();
    let mut closers = Closers::default();
    let mut run = Run::None;
    let bytes = text.as_bytes();
    let mut i = 0;
    let end_run = |run: &mut Run, counts: &mut WordCounts| {
        match *run {
            Run::Latin(n) if n >= 2 => counts.latin += 1,
            Run::Other => counts.other += 1,
            _ => {}
        }
        *run = Run::None;
    };
    while i < text.len() {
        let b = bytes[i];
        // Math, commands and tags (all start with an ASCII byte).
        let skip_to = match b {
            b'$' => {
                if bytes.get(i + 1) == Some(&b'$') {
                    find_from(text, i + 2, "$$", &mut closers.double_dollar)
                        .map(|p| p + 2)
                        .or(Some(i + 2))
                } else {
                    find_from(text, i + 1, "$", &mut closers.dollar)
                        .map(|p| p + 1)
                        .or(Some(i + 1))
                }
            }
            b'\\' => match bytes.get(i + 1) {
                Some(b'(') => find_from(text, i + 2, "\\)", &mut closers.paren)
                    .map(|p| p + 2)
                    .or(Some(i + 2)),
                Some(b'[') => find_from(text, i + 2, "\\]", &mut closers.bracket)
                    .map(|p| p + 2)
                    .or(Some(i + 2)),
                Some(c) if c.is_ascii_alphabetic() => {
                    let name_end = i
                        + 1
                        + bytes[i + 1..]
                            .iter()
                            .take_while(|b| b.is_ascii_alphabetic())
                            .count();
                    let name = &text[i + 1..name_end];
                    match (name, brace_arg(text, name_end)) {
                        ("begin", Some((arg_end, env)))
                            if MATH_ENVS.contains(&env.trim_end_matches('*')) =>
                        {
                            let close = format!("\\end{{{env}}}");
                            let missing = closers.envs.iter().any(|e| e == env);
                            let found = if missing {
                                None
                            } else {
                                text[arg_end..].find(&close).map(|p| arg_end + p)
                            };
                            match found {
                                Some(p) => Some(p + close.len()),
                                None => {
                                    if !missing {
                                        closers.envs.push(env.to_string());
                                    }
                                    Some(arg_end)
                                }
                            }
                        }
                        ("begin" | "end", Some((arg_end, _))) => Some(arg_end),
                        _ => Some(name_end),
                    }
                }
                // `\$`, `\{`, `\\`...: an escaped character.
                Some(_) => Some(i + 2),
                None => Some(i + 1),
            },
            b'<' => {
                let rest = &text[i..];
                if rest.starts_with("<think>") {
                    Some(i + "<think>".len())
                } else if rest.starts_with("</think>") {
                    Some(i + "</think>".len())
                } else if rest.starts_with("<|") {
                    let window = &rest.as_bytes()[..rest.len().min(64)];
                    window
                        .windows(2)
                        .position(|w| w == b"|>")
                        .map(|p| i + p + 2)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(next) = skip_to {
            end_run(&mut run, &mut counts);
            i = next.min(text.len());
            while !text.is_char_boundary(i) {
                i += 1;
            }
            continue;
        }
        // ASCII fast path: letters extend a Latin run, everything else but `'` ends it.
        if b.is_ascii_alphabetic() {
            match &mut run {
                Run::Latin(n) => *n += 1,
                _ => {
                    end_run(&mut run, &mut counts);
                    run = Run::Latin(1);
                }
            }
            i += 1;
            continue;
        }
        if b.is_ascii() && b != b'\'' {
            end_run(&mut run, &mut counts);
            i += 1;
            continue;
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        let len = c.len_utf8();
        if is_latin_letter(c) {
            match &mut run {
                Run::Latin(n) => *n += 1,
                _ => {
                    end_run(&mut run, &mut counts);
                    run = Run::Latin(1);
                }
            }
        } else if is_cjk(c) {
            end_run(&mut run, &mut counts);
            counts.cjk += 1;
        } else if (c == '\'' || c == '\u{2019}')
            && matches!(run, Run::Latin(_))
            && text[i + len..].chars().next().is_some_and(is_latin_letter)
        {
            // An apostrophe inside a word (`don't`) keeps the run going.
        } else if is_combining(c) {
            // Accents stay with their letter.
        } else if c.is_alphabetic() && !is_greek(c) {
            if run != Run::Other {
                end_run(&mut run, &mut counts);
                run = Run::Other;
            }
        } else {
            end_run(&mut run, &mut counts);
        }
        i += len;
    }
    end_run(&mut run, &mut counts);
    counts
}

/// The proportion of `text`'s words in `target`, as a reward in `[0, 1]`; 1.0 when the
/// text has no words (see the module documentation).
///
/// ```
/// use judge::reward::{language_consistency, Language};
/// assert_eq!(language_consistency("首先计算 the sum", Language::Chinese), 4.0 / 6.0);
/// assert_eq!(language_consistency("", Language::Chinese), 1.0);
/// ```
pub fn language_consistency(text: &str, target: Language) -> f32 {
    let c = count_words(text);
    match c.total() {
        0 => 1.0,
        total => c.of(target) as f32 / total as f32,
    }
}

/// The text the language reward reads: the reasoning before `</think>`, or the whole
/// response when it has no closing tag.
pub fn chain_of_thought(response: &str, options: SplitOptions) -> &str {
    let parts = split_with(response, options);
    match parts.format {
        ThinkFormat::NoTags | ThinkFormat::Unterminated => response,
        _ => parts.reasoning,
    }
}

/// The weights of the reward components in [`RewardBreakdown::total`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardWeights {
    /// Weight of the accuracy reward.
    pub accuracy: f32,
    /// Weight of the format reward.
    pub format: f32,
    /// Weight of the language-consistency reward.
    pub language: f32,
}

impl Default for RewardWeights {
    /// 1, 1, 1: the plain sum of the three rewards.
    fn default() -> Self {
        RewardWeights {
            accuracy: 1.0,
            format: 1.0,
            language: 1.0,
        }
    }
}

/// Options of a reward computation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardConfig {
    /// The weights of the total.
    #[serde(default)]
    pub weights: RewardWeights,
    /// The target language of the language reward, unless a [`Completion`] gives its own
    /// (default English).
    #[serde(default)]
    pub language: Language,
}

/// One completion to reward: the response, its reference answer and checker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion<'a> {
    /// The checker.
    pub kind: Kind,
    /// The reference answer.
    pub gold: &'a Gold,
    /// The model's response (reasoning and answer).
    pub response: &'a str,
    /// The target language for this completion (for instance the prompt's own), instead of
    /// [`RewardConfig::language`].
    pub language: Option<Language>,
}

impl<'a> Completion<'a> {
    /// A completion with the configuration's target language.
    pub fn new(kind: Kind, gold: &'a Gold, response: &'a str) -> Self {
        Completion {
            kind,
            gold,
            response,
            language: None,
        }
    }
}

/// The rewards of one completion: each component in `[0, 1]`, and their weighted sum.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardBreakdown {
    /// 1.0 for a correct final answer.
    pub accuracy: f32,
    /// 1.0 for a response in the R1 think format.
    pub format: f32,
    /// The proportion of the chain of thought's words in the target language.
    pub language: f32,
    /// `weights.accuracy * accuracy + weights.format * format + weights.language * language`.
    pub total: f32,
}

impl RewardBreakdown {
    /// Combines components computed elsewhere (for instance an accuracy from running code)
    /// under `weights`.
    pub fn compose(accuracy: f32, format: f32, language: f32, weights: &RewardWeights) -> Self {
        RewardBreakdown {
            accuracy,
            format,
            language,
            total: weights.accuracy * accuracy
                + weights.format * format
                + weights.language * language,
        }
    }
}

impl Judge {
    /// The language-consistency reward of `response`: the proportion of its chain of
    /// thought's words in `target` (1.0 when it has none). See the [module
    /// documentation](crate::reward).
    pub fn language_reward(&self, response: &str, target: Language) -> f32 {
        let options = SplitOptions {
            think_prefilled: self.config().think_prefilled,
        };
        language_consistency(chain_of_thought(response, options), target)
    }

    /// All rewards of one completion under `config`.
    pub fn rewards(&self, completion: &Completion<'_>, config: &RewardConfig) -> RewardBreakdown {
        let accuracy = self.accuracy_reward(completion.kind, completion.gold, completion.response);
        let format = self.format_reward(completion.response);
        let language = self.language_reward(
            completion.response,
            completion.language.unwrap_or(config.language),
        );
        RewardBreakdown::compose(accuracy, format, language, &config.weights)
    }
}

/// The rewards of many completions, in order: with the `parallel` feature on rayon's
/// current thread pool (install a pool to choose the number of threads), otherwise one
/// after the other. The results are the same either way: each is
/// [`Judge::rewards`] of its completion.
pub fn score_batch(
    judge: &Judge,
    completions: &[Completion<'_>],
    config: &RewardConfig,
) -> Vec<RewardBreakdown> {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        completions
            .par_iter()
            .with_min_len(4)
            .map(|c| judge.rewards(c, config))
            .collect()
    }
    #[cfg(not(feature = "parallel"))]
    {
        completions
            .iter()
            .map(|c| judge.rewards(c, config))
            .collect()
    }
}

/// Means of many [`RewardBreakdown`]s (all zero for none).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardSummary {
    /// Mean accuracy reward.
    pub accuracy: f64,
    /// Mean format reward.
    pub format: f64,
    /// Mean language-consistency reward.
    pub language: f64,
    /// Mean total reward.
    pub total: f64,
}

impl RewardSummary {
    /// The means of `rewards`.
    pub fn of<'a>(rewards: impl IntoIterator<Item = &'a RewardBreakdown>) -> Self {
        let mut sum = RewardSummary::default();
        let mut n = 0usize;
        for r in rewards {
            sum.accuracy += f64::from(r.accuracy);
            sum.format += f64::from(r.format);
            sum.language += f64::from(r.language);
            sum.total += f64::from(r.total);
            n += 1;
        }
        if n > 0 {
            let n = n as f64;
            sum.accuracy /= n;
            sum.format /= n;
            sum.language /= n;
            sum.total /= n;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(t: &str) -> (usize, usize, usize) {
        let c = count_words(t);
        (c.latin, c.cjk, c.other)
    }

    #[test]
    fn pure_english_and_pure_chinese() {
        let en = "First, compute the sum of the divisors: it's twenty-eight.";
        assert_eq!(words(en), (10, 0, 0));
        assert_eq!(language_consistency(en, Language::English), 1.0);
        assert_eq!(language_consistency(en, Language::Chinese), 0.0);
        let zh = "首先，计算因数之和：二十八。";
        assert_eq!(words(zh), (0, 11, 0));
        assert_eq!(language_consistency(zh, Language::Chinese), 1.0);
        assert_eq!(language_consistency(zh, Language::English), 0.0);
        // Kana and hangul are CJK words too; Cyrillic is neither language.
        assert_eq!(words("ひらがな カタカナ 한국어"), (0, 11, 0));
        assert_eq!(words("Привет мир"), (0, 0, 2));
    }

    #[test]
    fn mixed_half_and_half() {
        // 4 Latin words (single letters are variables, not words) and 4 CJK characters.
        let t = "We need 所以 the answer 是三 x";
        assert_eq!(words(t), (4, 4, 0));
        assert_eq!(language_consistency(t, Language::English), 0.5);
        assert_eq!(language_consistency(t, Language::Chinese), 0.5);
        // A Latin run stops at a CJK character.
        assert_eq!(words("sum是ab"), (2, 1, 0));
    }

    #[test]
    fn math_is_not_words() {
        let t = "所以 $\\frac{a+b}{\\sqrt{ab}} \\geq 2$ 成立，且 \\(x^2 + y^2 = r^2\\)，\
                 \\[\\int_0^1 f(x)\\,dx = \\text{area}\\] 以及 $$\\sum_{n=1}^{N} n$$ 和 \
                 \\begin{align} a &= b \\\\ c &= d \\end{align} 还有 \\frac{1}{2} 与 123, 45.6 π θ";
        // 所以 成立 且 以及 和 还有 与: 11 characters; nothing else.
        assert_eq!(words(t), (0, 11, 0));
        assert_eq!(language_consistency(t, Language::Chinese), 1.0);
        // An unmatched dollar is a price, not math.
        assert_eq!(words("It costs $5 in total"), (4, 0, 0));
        assert_eq!(
            words("<think>reasoning here</think><|end_of_thought|>"),
            (2, 0, 0)
        );
    }

    #[test]
    fn empty_reasoning_is_neutral() {
        assert_eq!(language_consistency("", Language::English), 1.0);
        assert_eq!(language_consistency("$1+1=2$ 2 3", Language::Chinese), 1.0);
        let j = Judge::default();
        assert_eq!(
            j.language_reward("<think></think>\\boxed{2}", Language::English),
            1.0
        );
        assert_eq!(j.format_reward("<think></think>\\boxed{2}"), 0.0);
    }

    #[test]
    fn reasoning_only_is_read() {
        let j = Judge::default();
        // The answer after </think> is not part of the chain of thought.
        let r = "<think>Simple addition here.</think>答案是 \\boxed{4}";
        assert_eq!(j.language_reward(r, Language::English), 1.0);
        // No tags: the whole response is the chain of thought.
        assert_eq!(j.language_reward("答案 is four", Language::English), 0.5);
        // Unterminated: the reasoning so far.
        assert_eq!(
            j.language_reward("<think>思考 thinking", Language::Chinese),
            2.0 / 3.0
        );
    }

    #[test]
    fn weights_compose() {
        let w = RewardWeights {
            accuracy: 2.0,
            format: 0.5,
            language: 0.25,
        };
        let r = RewardBreakdown::compose(1.0, 1.0, 0.5, &w);
        assert_eq!(r.total, 2.0 + 0.5 + 0.125);
        let zero = RewardWeights {
            accuracy: 1.0,
            format: 0.0,
            language: 0.0,
        };
        assert_eq!(RewardBreakdown::compose(0.0, 1.0, 1.0, &zero).total, 0.0);
        assert_eq!(RewardWeights::default().accuracy, 1.0);
        let s = RewardSummary::of(&[r, RewardBreakdown::compose(0.0, 0.0, 1.0, &w)]);
        assert_eq!((s.accuracy, s.format, s.language), (0.5, 0.5, 0.75));
        assert_eq!(RewardSummary::of(&[]), RewardSummary::default());
    }

    #[test]
    fn language_names() {
        assert_eq!("zh".parse::<Language>(), Ok(Language::Chinese));
        assert_eq!("English".parse::<Language>(), Ok(Language::English));
        assert!("klingon".parse::<Language>().is_err());
        assert_eq!(Language::Chinese.to_string(), "chinese");
    }
}
