//! Property tests for this phase's parsers: no panic on any input, and round trips where a
//! format has a writer (overlay escaping, mountinfo octal escapes, the squashfs superblock).

use super::*;
use proptest::prelude::*;

/// What the kernel's `mangle()` does to a mountinfo path: octal escapes for space, tab,
/// newline and backslash.
fn mangle(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(
        text in "\\PC{0,400}",
        opts in prop::collection::vec("\\PC{0,40}", 0..12),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = mountinfo::parse(&text);
        let _ = mountinfo::unescape(&text);
        let _ = options::parse(&opts);
        let _ = squashfs::parse(&bytes);
        let _ = overlay::split_lowerdir(&text);
        let _ = memory::parse_meminfo(&text);
        let _ = resolve_device(Path::new("/initrd"), &text);
        let _ = under_root(Path::new("/mnt-root"), &text);
    }

    #[test]
    fn lowerdirs_round_trip(dirs in prop::collection::vec("/[^\\x00]{1,20}", 1..6)) {
        let joined = dirs.iter().map(|d| overlay::escape(d)).collect::<Vec<_>>().join(":");
        prop_assert_eq!(overlay::split_lowerdir(&joined), dirs.clone());
        for d in &dirs {
            prop_assert_eq!(overlay::unescape(&overlay::escape(d)), d.clone());
        }
    }

    #[test]
    fn mountinfo_paths_round_trip(point in "/[^\\x00]{0,30}", source in "[^\\x00]{1,20}") {
        let line = format!("40 1 0:40 / {} rw - tmpfs {} rw", mangle(&point), mangle(&source));
        let t = mountinfo::parse(&line);
        prop_assert_eq!(t.mounts.len(), 1);
        prop_assert_eq!(&t.mounts[0].mount_point, &point);
        prop_assert_eq!(&t.mounts[0].source, &source);
    }

    #[test]
    fn superblock_fields_read_back(comp in 1u16..=6, used in any::<u64>()) {
        let sb = squashfs::parse(&squashfs::synthetic(comp, used));
        if comp == 2 {
            prop_assert!(sb.is_err());
        } else {
            let sb = sb.unwrap();
            prop_assert_eq!(sb.compression, comp);
            prop_assert_eq!(sb.bytes_used, used);
        }
    }

    #[test]
    fn resolved_devices_stay_in_the_root(device in "[a-z./]{0,30}") {
        let p = resolve_device(Path::new("/initrd"), &device);
        if !device.starts_with('/') {
            prop_assert!(p.starts_with("/initrd"), "{}", p.display());
        }
    }
}
