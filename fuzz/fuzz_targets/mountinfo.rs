#![no_main]
//! `/proc/self/mountinfo` (and the escapes it shares with `/proc/mounts`).
use libfuzzer_sys::fuzz_target;
use netboot_init::mounts::mountinfo;

fuzz_target!(|text: &str| {
    let table = mountinfo::parse(text);
    if let Some(first) = table.mounts.first() {
        let _ = table.find(&first.mount_point);
    }
    let _ = mountinfo::unescape(text);
});
