#![no_main]
//! `/proc/cmdline`: split and parse never panic, and quoting the quote-free words gives them
//! back.

use libfuzzer_sys::fuzz_target;
use netboot_init::cmdline::{quote, split, Cmdline};

fuzz_target!(|text: &str| {
    let words = split(text);
    let c = Cmdline::parse(text);
    assert!(c.problems.len() <= netboot_init::cmdline::MAX_PROBLEMS + 1);
    let plain: Vec<String> = words.into_iter().filter(|w| !w.contains('"')).collect();
    let line: Vec<String> = plain.iter().map(|w| quote(w)).collect();
    assert_eq!(split(&line.join(" ")), plain);
});
