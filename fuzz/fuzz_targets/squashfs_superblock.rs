#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = netboot_init::mounts::squashfs::parse(data) {
        let _ = (sb.compressor_name(), sb.compressor_config());
    }
});
