//! Table-driven tests of math equivalence, grouped by topic; each case states its reason.

use judge::math::answers_match;

/// (gold, prediction, expected, reason)
type Case = (&'static str, &'static str, bool, &'static str);

fn run(topic: &str, cases: &[Case]) {
    let mut failures = Vec::new();
    for (gold, pred, want, why) in cases {
        let got = answers_match(gold, pred);
        if got != *want {
            failures.push(format!(
                "  {gold:?} vs {pred:?}: expected {want}, got {got} ({why})"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{topic}: {} failure(s)\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn numbers_and_formatting() {
    run(
        "numbers",
        &[
            ("1000", "1,000", true, "thousands separator"),
            (
                "7425000",
                "7{,}425{,}000",
                true,
                "LaTeX thousands separator",
            ),
            ("32348", "\\$32,\\!348", true, "currency and \\! separator"),
            ("0.5", ".5", true, "leading point"),
            ("7", "007", true, "leading zeros"),
            ("18", "18.00", true, "trailing zeros"),
            (
                "\\frac{1}{2}",
                "0.50",
                true,
                "decimal equals fraction exactly (Hendrycks misses it)",
            ),
            ("\\frac{1}{3}", "0.333", false, "no loose tolerance"),
            (
                "\\frac{1}{3}",
                "0.\\overline{3}",
                true,
                "repeating decimal is exact",
            ),
            ("50", "0.5", false, "no percentage guessing (Qwen accepts)"),
            ("50", "50\\%", true, "percent sign dropped"),
            ("30", "30^\\circ", true, "degree sign dropped"),
            ("30^\\circ", "30^{\\circ}", true, "degree spelling"),
            ("5", "5\\text{ cm}", true, "text unit"),
            ("864", "864 \\mbox{ inches}^2", true, "squared text unit"),
            ("15", "15\\mbox{ cm}^2", true, "mbox unit"),
            ("36", "\\$36", true, "currency"),
            ("\\text{(C)}", "C", true, "text wrapper vs letter"),
            ("\\text{Navin}", "\\text{navin}", true, "word answer, case"),
            (
                "\\text{Navin}",
                "Navin",
                true,
                "word answer without wrapper",
            ),
            ("2516_8", "2516_{8}", true, "base subscript"),
            (
                "2516_8",
                "1358",
                false,
                "base-8 numeral is not its decimal value",
            ),
            ("-3", "- 3", true, "spacing"),
            ("1.25", "\\frac{5}{4}", true, "decimal vs fraction"),
            (
                ".0000672",
                "6.72 \\times 10^{-5}",
                true,
                "scientific notation exact",
            ),
        ],
    );
}

#[test]
fn fractions_roots_and_powers() {
    run(
        "fractions",
        &[
            (
                "\\frac{1}{2}",
                "\\dfrac12",
                true,
                "dfrac with single-digit arguments",
            ),
            ("\\frac9{19}", "\\frac{9}{19}", true, "mixed brace forms"),
            ("\\frac{5}{2}", "2\\frac{1}{2}", true, "mixed number"),
            (
                "\\frac{2x}{3}",
                "2\\frac{x}{3}",
                true,
                "juxtaposition multiplies non-numeric fractions",
            ),
            (
                "3\\sqrt{13}",
                "\\sqrt{117}",
                true,
                "surd simplification by evaluation",
            ),
            (
                "\\frac{\\sqrt{3}}{3}",
                "\\frac{1}{\\sqrt{3}}",
                true,
                "rationalised denominator",
            ),
            ("2\\sqrt{2}", "\\sqrt{8}", true, "equal irrationals"),
            (
                "\\sqrt{2}",
                "1.414213562",
                false,
                "a decimal approximation is not the irrational",
            ),
            ("\\pi", "3.14159", false, "approximate pi"),
            (
                "\\frac{1}{2^{99}}",
                "\\frac{1}{2^{98}}",
                false,
                "tiny difference (math-verify rounds to equal)",
            ),
            (
                "\\frac{1}{2004!}",
                "\\frac{1}{2006!}",
                false,
                "tiny factorial difference",
            ),
            ("2^{10}", "1024", true, "power"),
            ("2^10", "1024", true, "plain-text exponent"),
            ("5!", "120", true, "factorial"),
            ("\\binom{5}{2}", "10", true, "binomial"),
            ("\\sqrt[3]{27}", "3", true, "cube root"),
            ("\\frac{\\pi}{6}", "\\pi/6", true, "plain slash"),
            (
                "-\\frac{\\pi}{6}",
                "-\\frac{1}{6}\\pi",
                true,
                "coefficient order",
            ),
            ("e^2", "\\exp(2)", true, "e is Euler's number"),
            ("\\log_2 8", "3", true, "exact logarithm"),
            (
                "\\ln 2 + \\ln 3",
                "\\ln 6",
                true,
                "log identity numerically",
            ),
            ("\\sin \\frac{\\pi}{6}", "\\frac12", true, "trig value"),
            (
                "\\cot x",
                "\\frac{\\cos x}{\\sin x}",
                true,
                "trig identity at random points",
            ),
            (
                "10^{10^{10}}",
                "10^{10^{10}}",
                true,
                "identical huge expression",
            ),
            (
                "10^{10^{10}}",
                "10^{10^{10}}+1",
                false,
                "huge values are not comparable, not equal",
            ),
        ],
    );
}

#[test]
fn symbolic_expressions() {
    run(
        "symbolic",
        &[
            ("2k+2", "2(k+1)", true, "factorised"),
            ("6r^2-4r-24", "2(3r^2-2r-12)", true, "common factor"),
            ("-13x+3", "3-13x", true, "term order"),
            ("5r^5", "5r^4 \\cdot r", true, "power rules"),
            ("x^2+1", "x^2-1", false, "different polynomial"),
            ("3R^2", "3r^2", false, "case of variables matters"),
            ("6+9i", "9i+6", true, "complex number as polynomial in i"),
            ("\\frac{x}{2}", "0.5x", true, "decimal coefficient exact"),
            ("p - q", "q - p", false, "sign"),
        ],
    );
}

#[test]
fn structures() {
    run(
        "structures",
        &[
            (
                "\\left( 3, \\frac{\\pi}{2} \\right)",
                "(3, \\pi/2)",
                true,
                "point with \\left/\\right",
            ),
            ("(2,4)", "(4,2)", false, "tuples are ordered"),
            ("\\{1,2\\}", "\\{2,1\\}", true, "sets are order-free"),
            ("1, 2", "2, 1", true, "bare lists are sets"),
            (
                "\\{1\\pm\\sqrt{5},-2\\}",
                "-2, 1+\\sqrt5, 1-\\sqrt5",
                true,
                "plus-minus inside a set",
            ),
            (
                "3 \\pm 2 \\sqrt{2}",
                "3+2\\sqrt2, 3-2\\sqrt2",
                true,
                "plus-minus expands to a pair",
            ),
            (
                "3 \\pm 2 \\sqrt{2}",
                "3+2\\sqrt2",
                false,
                "only one of the pair",
            ),
            (
                "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
                "(0.6, 8/3]",
                true,
                "half-open interval",
            ),
            (
                "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
                "[0.6, 8/3]",
                false,
                "closed end differs",
            ),
            (
                "(0,9) \\cup (9,36)",
                "(9,36) \\cup (0,9)",
                true,
                "union order-free",
            ),
            ("(0,9) \\cup (9,36)", "(0,36)", false, "a point missing"),
            (
                "(-\\sqrt{3}, \\sqrt{3})",
                "-\\sqrt3 < x < \\sqrt3",
                true,
                "inequality as interval",
            ),
            ("x \\in [-2,7]", "[-2,7]", true, "membership"),
            ("[-2,7]", "-2 \\le x \\le 7", true, "closed chain"),
            ("(3, \\infty)", "x > 3", true, "one-sided inequality"),
            ("[3, \\infty)", "x > 3", false, "strictness matters"),
            (
                "(-\\infty, 1) \\cup (2, \\infty)",
                "x < 1 \\text{ or } x > 2",
                true,
                "union of inequalities",
            ),
            (
                "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
                "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}",
                true,
                "matrix delimiters",
            ),
            (
                "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}",
                "(-7, 16, 5)",
                true,
                "column vector as tuple",
            ),
            (
                "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
                "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}",
                false,
                "transpose",
            ),
            ("\\infty", "\\infty", true, "infinity"),
            ("\\infty", "-\\infty", false, "signed infinity"),
        ],
    );
}

#[test]
fn relations() {
    run(
        "relations",
        &[
            ("x=5", "5", true, "x = 5 vs 5"),
            ("5", "x = 5", true, "5 vs x = 5"),
            ("x=5", "x=6", false, "different value"),
            (
                "y = 2x + 3",
                "2x - y + 3 = 0",
                true,
                "same line, different form",
            ),
            ("y = 2x + 3", "2y = 4x + 6", true, "non-zero factor"),
            ("y = 2x + 3", "y = 2x - 3", false, "different line"),
            (
                "5x - 7y + 11z + 4 = 0",
                "-5x + 7y - 11z - 4 = 0",
                true,
                "plane times -1",
            ),
            ("x < 3", "3 > x", true, "mirrored inequality"),
            ("x+y<3", "y < 3-x", true, "rearranged inequality"),
            ("x+y<3", "x+y>3", false, "reversed inequality"),
        ],
    );
}

#[test]
fn grader_weak_spots_regressions() {
    run(
        "weak spots",
        &[
            (
                "\\frac{1}{2^{99}}",
                "\\frac{1}{2^{98}}",
                false,
                "math-verify: rounding zeroes tiny differences",
            ),
            (
                "2m",
                "2",
                false,
                "math-verify/Qwen: unit stripping eats the variable m",
            ),
            ("5 \\text{ m}", "5", true, "a \\text unit is a unit"),
            (
                "\\text{Bandana}",
                "\\text{Banana}",
                false,
                "Qwen strip_string deletes 'and' inside words",
            ),
            ("50", "0.5", false, "Qwen: x100 percentage guessing"),
            ("1/3", "0.3333", false, "Qwen: relative tolerance"),
            (
                "(1, 5)",
                "[1, 5]",
                false,
                "Qwen: brackets dropped before interval comparison",
            ),
            (
                "\\frac{1}{2}",
                "0.50",
                true,
                "Hendrycks is_equiv misses 0.50 vs 1/2",
            ),
            (
                "\\left(-\\infty, 2\\right)",
                "(-\\infty,2)",
                true,
                "minerva unit removal corrupts \\left and \\infty",
            ),
            ("18", "18.00", true, "lm-eval gsm8k: 18.00 != 18"),
        ],
    );
}
