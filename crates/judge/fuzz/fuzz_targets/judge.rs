//! Fuzz extraction plus checking: the first byte picks the checker, the bytes up to the
//! first NUL are the reference, the rest is the response (raw bytes, possibly invalid
//! UTF-8). Run with `cargo +nightly fuzz run judge` from `crates/judge`.
#![no_main]

use judge::{math::answers_match, Judge, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_one(data);
});

fn fuzz_one(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = [Kind::Math, Kind::Mc, Kind::Gsm8k, Kind::Factual][(selector % 4) as usize];
    let (gold, response) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let gold = String::from_utf8_lossy(gold).into_owned();
    let judge = Judge::default();
    let _ = judge.check_bytes(kind, &gold.as_str().into(), response);
    let _ = answers_match(&gold, &String::from_utf8_lossy(response));
}
