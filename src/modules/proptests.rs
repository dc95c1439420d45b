//! Property tests for the module index parsers, the alias matcher and the decompressor: no
//! panic on any input, and round trips where a format has a writer.

use super::decompress;
use super::glob;
use super::index::*;
use proptest::prelude::*;
use std::path::Path;

/// Module-ish names: what depmod writes, `-` included.
fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,15}"
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z0-9_]{1,8}", 0..4),
        name(),
        prop::sample::select(vec![".ko", ".ko.xz", ".ko.zst", ".ko.gz"]),
    )
        .prop_map(|(dirs, n, ext)| {
            let mut p = String::from("kernel/");
            for d in dirs {
                p.push_str(&d);
                p.push('/');
            }
            p + &n + ext
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(text in "\\PC{0,400}", bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_dep(&text);
        let _ = parse_alias(&text);
        let _ = parse_builtin(&text);
        let _ = parse_softdep(&text);
        let _ = parse_builtin_modinfo(&bytes);
        let _ = parse_builtin_modinfo(text.as_bytes());
    }

    #[test]
    fn structured_garbage_never_panics(
        lines in prop::collection::vec(
            prop::sample::select(vec![
                "alias", "softdep", "pre:", "post:", ":", " ", "\t", "#", "a.ko", "x-y", "[", "]",
                "*", "?", "\\", "=", ".", "\0", "\n", "\r\n",
            ]),
            0..60,
        )
    ) {
        let text: String = lines.concat();
        let _ = parse_dep(&text);
        let _ = parse_alias(&text);
        let _ = parse_builtin(&text);
        let _ = parse_softdep(&text);
        let _ = parse_builtin_modinfo(text.as_bytes());
    }

    #[test]
    fn dep_round_trip(entries in prop::collection::vec((path(), prop::collection::vec(path(), 0..5)), 0..20)) {
        let text: String = entries
            .iter()
            .map(|(p, deps)| format!("{p}: {}\n", deps.join(" ")))
            .collect();
        let parsed = parse_dep(&text).unwrap();
        let back: Vec<(String, Vec<String>)> = parsed.into_iter().map(|d| (d.path, d.deps)).collect();
        prop_assert_eq!(back, entries);
    }

    #[test]
    fn alias_round_trip(entries in prop::collection::vec(("[a-z:*?0-9_-]{1,30}", name()), 0..20)) {
        let text: String = entries.iter().map(|(a, m)| format!("alias {a} {m}\n")).collect();
        let parsed = parse_alias(&text).unwrap();
        prop_assert_eq!(parsed.len(), entries.len());
        for (got, (pattern, module)) in parsed.iter().zip(&entries) {
            prop_assert_eq!(&got.pattern, &normalize_alias(pattern));
            prop_assert_eq!(&got.module, &normalize_name(module));
        }
    }

    #[test]
    fn softdep_round_trip(
        entries in prop::collection::vec(
            (name(), prop::collection::vec(name(), 0..4), prop::collection::vec(name(), 0..4)),
            0..10,
        )
    ) {
        let text: String = entries
            .iter()
            .map(|(m, pre, post)| format!("softdep {m} pre: {} post: {}\n", pre.join(" "), post.join(" ")))
            .collect();
        let parsed = parse_softdep(&text).unwrap();
        prop_assert_eq!(parsed.len(), entries.len());
        for (got, (m, pre, post)) in parsed.iter().zip(&entries) {
            prop_assert_eq!(&got.module, &normalize_name(m));
            prop_assert_eq!(&got.pre, &pre.iter().map(|p| normalize_alias(p)).collect::<Vec<_>>());
            prop_assert_eq!(&got.post, &post.iter().map(|p| normalize_alias(p)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn builtin_modinfo_round_trip(entries in prop::collection::vec((name(), "[a-z_]{1,10}", "[^\0]{0,40}"), 0..20)) {
        let mut data = Vec::new();
        for (m, k, v) in &entries {
            data.extend(format!("{m}.{k}={v}").as_bytes());
            data.push(0);
        }
        let parsed = parse_builtin_modinfo(&data).unwrap();
        prop_assert_eq!(parsed.len(), entries.len());
        for (got, (m, k, v)) in parsed.iter().zip(&entries) {
            prop_assert_eq!(&got.module, &normalize_name(m));
            prop_assert_eq!(&got.key, k);
            prop_assert_eq!(&got.value, v);
        }
    }

    #[test]
    fn closure_is_dependency_ordered_and_never_panics(
        edges in prop::collection::vec((0usize..12, prop::collection::vec(0usize..12, 0..4)), 0..12),
        roots in prop::collection::vec(0usize..14, 0..5),
    ) {
        let text: String = edges
            .iter()
            .map(|(m, deps)| {
                let deps: Vec<String> = deps.iter().map(|d| format!("m{d}.ko")).collect();
                format!("m{m}.ko: {}\n", deps.join(" "))
            })
            .collect();
        let index = ModulesIndex::from_parts(
            Path::new("/x"),
            Parts { dep: parse_dep(&text).unwrap(), ..Parts::default() },
        );
        let roots: Vec<String> = roots.iter().map(|r| format!("m{r}")).collect();
        // Cycles, missing modules and missing dependencies are errors, never panics.
        if let Ok(order) = index.closure(&roots) {
            for (i, e) in order.iter().enumerate() {
                for d in &e.deps {
                    let j = order.iter().position(|x| &x.name == d);
                    prop_assert!(j.is_some_and(|j| j < i), "{} before {}", d, e.name);
                }
            }
        }
    }

    #[test]
    fn glob_never_panics_and_literals_match_themselves(pattern in "\\PC{0,40}", text in "\\PC{0,40}") {
        let _ = glob::matches(&pattern, &text);
        if !glob::is_glob(&text) {
            prop_assert!(glob::matches(&text, &text));
        }
        prop_assert!(glob::matches("*", &text));
        let escaped: String = text.chars().flat_map(|c| ['\\', c]).collect();
        prop_assert!(glob::matches(&escaped, &text));
    }

    #[test]
    fn glob_star_and_question(prefix in "[a-z]{0,8}", middle in "[a-z:]{0,8}", suffix in "[a-z]{0,8}") {
        let text = format!("{prefix}{middle}{suffix}");
        let star = format!("{prefix}*{suffix}");
        prop_assert!(glob::matches(&star, &text));
        let qs = format!("{prefix}{}{suffix}", "?".repeat(middle.chars().count()));
        prop_assert!(glob::matches(&qs, &text));
    }

    #[test]
    fn decompress_never_panics(data in prop::collection::vec(any::<u8>(), 0..2000), kind in 0u8..4) {
        // Start with each format's magic so the decoders themselves see the junk.
        let magic: &[u8] = match kind {
            0 => &[0xfd, b'7', b'z', b'X', b'Z', 0],
            1 => &[0x28, 0xb5, 0x2f, 0xfd],
            2 => &[0x1f, 0x8b],
            _ => &[],
        };
        let mut input = magic.to_vec();
        input.extend(&data);
        let _ = decompress::decompress_with_limit(&input, 1 << 20);
    }
}
