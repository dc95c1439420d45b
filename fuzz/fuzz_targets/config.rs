#![no_main]
//! The JSON config: never panics; an accepted config serializes back to itself.

use libfuzzer_sys::fuzz_target;
use netboot_init::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::parse(text) {
        let again = serde_json::to_string(&config).expect("a config serializes");
        assert_eq!(Config::parse(&again), Ok(config));
    }
});
