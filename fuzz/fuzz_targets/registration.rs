#![no_main]
//! `nix-path-registration`: never panics; what parses writes back to the same entries.
use libfuzzer_sys::fuzz_target;
use netboot_init::registration::parse::{parse, write};

fuzz_target!(|text: &str| {
    if let Ok(infos) = parse(text) {
        assert_eq!(parse(&write(&infos)), Ok(infos));
    }
});
