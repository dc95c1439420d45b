#![no_main]
//! The fnmatch-style matcher for `modules.alias` patterns: pattern and alias split at the
//! first NUL. Hangs show up as libFuzzer timeouts.
use libfuzzer_sys::fuzz_target;
use netboot_init::modules::glob;

fuzz_target!(|text: &str| {
    let (pattern, alias) = text.split_once('\0').unwrap_or((text, ""));
    let _ = glob::is_glob(pattern);
    let _ = glob::matches(pattern, alias);
});
