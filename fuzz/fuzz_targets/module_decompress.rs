#![no_main]
//! Compressed kernel modules (xz, zstd, gzip), with a small output limit so a bomb is an
//! error rather than memory exhaustion.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = netboot_init::modules::decompress::decompress_with_limit(data, 1 << 20);
});
