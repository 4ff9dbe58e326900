//! Grades an R1-style response with the `judge` crate alone.

use judge::{Judge, Kind};

fn run() {
    let judge = Judge::default();
    let response = "<think>\nmaybe \\boxed{3}\n</think>\nSo $x = \\boxed{\\frac{1}{2}}$.";
    let verdict = judge.check(Kind::Math, &"0.5".into(), response);
    assert!(verdict.correct, "{verdict:?}");
    assert_eq!(verdict.extracted.as_deref(), Some("\\frac{1}{2}"));
    assert!(
        !judge
            .check(Kind::Math, &"1/3".into(), "</think>\\boxed{0.333}")
            .correct
    );
    println!("judge: 1/2 == 0.5, 0.333 != 1/3");
}

fn main() {
    run();
}

#[cfg(test)]
mod tests {
    #[test]
    fn grades() {
        super::run();
    }
}
