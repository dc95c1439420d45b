#![no_main]
//! NixOS mount options, one per line.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let options: Vec<&str> = text.split('\n').collect();
    if let Ok(o) = netboot_init::mounts::options::parse(&options) {
        let _ = o.data_string();
    }
});
