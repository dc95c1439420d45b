#![no_main]
//! `modules.builtin` (text) and `modules.builtin.modinfo` (NUL-separated bytes).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = netboot_init::modules::index::parse_builtin_modinfo(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = netboot_init::modules::index::parse_builtin(text);
    }
});
