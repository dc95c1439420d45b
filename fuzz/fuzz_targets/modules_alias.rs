#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = netboot_init::modules::index::parse_alias(text);
});
