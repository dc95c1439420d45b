//! The module resolver and decompressor against the real Debian kernels the harness fetches
//! (target/netboot/kernels/{6.1,6.12}: 6.1 ships plain `.ko`, 6.12 `.ko.xz`), checked against
//! kmod's own `modprobe --show-depends` and `xz -dc`.

use netboot_init::modules::decompress::{self, Compression};
use netboot_init::modules::index::{ModulesIndex, Resolved};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/netboot/kernels");

/// (unpacked root, release, `<root>/lib/modules/<release>`); fails when the harness has not
/// fetched the kernel.
fn kernel(version: &str) -> (PathBuf, String, PathBuf) {
    let root = Path::new(KERNELS).join(version);
    let release = std::fs::read_to_string(root.join("version")).unwrap_or_else(|e| {
        panic!(
            "{}/version: {e}: the Debian {version} kernel is missing; run `cargo xtask setup`",
            root.display()
        )
    });
    let release = release.trim().to_string();
    let dir = root.join("lib/modules").join(&release);
    assert!(
        dir.join("modules.dep").is_file(),
        "{}/modules.dep is missing; run `cargo xtask setup`",
        dir.display()
    );
    (root, release, dir)
}

fn resolve_one(index: &ModulesIndex, query: &str) -> String {
    match index.resolve(query) {
        Ok(Resolved::Modules(ms)) => {
            assert_eq!(ms.len(), 1, "{query}: {ms:?}");
            ms[0].clone()
        }
        other => panic!("{query}: {other:?}"),
    }
}

/// kmod's answer: the module names modprobe would insmod, and the builtins it names.
fn modprobe_show_depends(
    root: &Path,
    release: &str,
    query: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new("modprobe")
        .args(["--show-depends", "-d"])
        .arg(root)
        .args(["-S", release, query])
        .output()
        .unwrap_or_else(|e| panic!("modprobe: {e} (the kmod package provides it)"));
    assert!(
        out.status.success(),
        "modprobe --show-depends {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut insmod = BTreeSet::new();
    let mut builtin = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("insmod"), Some(path)) => {
                insmod.insert(netboot_init::modules::index::name_from_path(path));
            }
            (Some("builtin"), Some(name)) => {
                builtin.insert(name.replace('-', "_"));
            }
            _ => {}
        }
    }
    (insmod, builtin)
}

fn softdep_lines(dir: &Path, module: &str) -> usize {
    let text = std::fs::read_to_string(dir.join("modules.softdep")).unwrap_or_default();
    text.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("softdep")
                && w.next().map(|m| m.replace('-', "_")) == Some(module.to_string())
        })
        .count()
}

fn check_kernel(version: &str, suffix: &str) {
    let (root, release, dir) = kernel(version);
    let index = ModulesIndex::load(&dir).unwrap_or_else(|e| panic!("{e}"));

    // The netboot modules by name, by `fs-` alias and by another alias kind.
    for (query, want) in [
        ("squashfs", "squashfs"),
        ("overlay", "overlay"),
        ("loop", "loop"),
        ("fs-squashfs", "squashfs"),
        ("fs_squashfs", "squashfs"),
        ("fs-overlay", "overlay"),
        ("devname:loop-control", "loop"),
        ("hid-generic", "hid_generic"),
    ] {
        assert_eq!(resolve_one(&index, query), want, "{version}: {query}");
    }
    for name in ["squashfs", "overlay", "loop"] {
        let path = index.path_of(name).unwrap();
        assert!(
            path.to_string_lossy().ends_with(suffix),
            "{}",
            path.display()
        );
        assert!(dir.join(path).is_file(), "{}", path.display());
        assert!(!index.is_builtin(name));
    }

    // Builtins: every module in modules.builtin is skipped, e.g. the ones the kernel cannot
    // boot without.
    let builtin_list = std::fs::read_to_string(dir.join("modules.builtin")).unwrap();
    let first_builtin = builtin_list.lines().next().unwrap();
    let name = netboot_init::modules::index::name_from_path(first_builtin);
    assert_eq!(
        index.resolve(&name).unwrap(),
        Resolved::Builtin(name.clone()),
        "{version}"
    );
    assert!(index.closure(&[name]).unwrap().is_empty());

    // The closure of the netboot modules is exactly those three, no dependencies.
    let netboot: Vec<String> = ["loop", "fs-squashfs", "overlay"]
        .map(String::from)
        .to_vec();
    let closure = index.closure(&netboot).unwrap();
    let names: Vec<&str> = closure.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["loop", "squashfs", "overlay"], "{version}");

    // Against kmod: the same modules for names and aliases with dependencies and softdeps,
    // in an order where every module follows what it needs.
    for query in [
        "squashfs",
        "overlay",
        "loop",
        "fs-squashfs",
        "ext4",
        "fs-vfat",
        "hid-generic",
        "xfs",
        "btrfs",
        "nfsv4",
        "virtio_net",
        "fs-fuseblk",
        "amd-uncore",
        "crypto-sha256",
        "zpool-zbud",
    ] {
        let (want, want_builtin) = modprobe_show_depends(&root, &release, query);
        let got = index
            .closure(&[query.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let got_set: BTreeSet<String> = got.iter().map(|e| e.name.clone()).collect();
        // kmod uses only the first `softdep` line of a module; depmod writes one line per
        // MODULE_SOFTDEP (btrfs has four), and we honour them all. Anything beyond kmod's set
        // must come from such a module.
        assert!(
            got_set.is_superset(&want),
            "{version}: {query}: ours {got_set:?} vs modprobe --show-depends {want:?}"
        );
        if got_set != want {
            let multi: Vec<&str> = got
                .iter()
                .map(|e| e.name.as_str())
                .filter(|n| softdep_lines(&dir, n) > 1)
                .collect();
            assert!(
                !multi.is_empty(),
                "{version}: {query}: ours {got_set:?} vs modprobe --show-depends {want:?}"
            );
        }
        if got.is_empty() {
            assert!(!want_builtin.is_empty(), "{version}: {query}");
            assert!(matches!(index.resolve(query), Ok(Resolved::Builtin(_))));
        }
        for (i, e) in got.iter().enumerate() {
            for d in &e.deps {
                let j = got.iter().position(|x| &x.name == d).unwrap();
                assert!(j < i, "{version}: {query}: {d} after {}", e.name);
            }
        }
    }

    let e = index
        .resolve("no-such-module-anywhere")
        .unwrap_err()
        .to_string();
    assert!(e.contains(&dir.display().to_string()), "{e}");
}

#[test]
fn resolves_against_debian_6_1() {
    check_kernel("6.1", ".ko");
}

#[test]
fn resolves_against_debian_6_12() {
    check_kernel("6.12", ".ko.xz");
}

/// Every module the netboot set and a few bigger closures resolve to, decompressed by our
/// decoder and by xz itself: identical, and ELF.
#[test]
fn decompresses_the_6_12_modules_like_xz() {
    let (_, _, dir) = kernel("6.12");
    let index = ModulesIndex::load(&dir).unwrap();
    let wanted: Vec<String> = [
        "loop",
        "squashfs",
        "overlay",
        "ext4",
        "fs-vfat",
        "hid-generic",
    ]
    .map(String::from)
    .to_vec();
    let closure = index.closure(&wanted).unwrap();
    assert!(closure.len() >= 10, "{closure:?}");
    for entry in &closure {
        let file = dir.join(&entry.path);
        assert!(
            file.to_string_lossy().ends_with(".ko.xz"),
            "{}",
            file.display()
        );
        let data = std::fs::read(&file).unwrap();
        let (ours, format) =
            decompress::decompress(&data).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(format, Compression::Xz);
        assert_eq!(&ours[..4], decompress::ELF_MAGIC, "{}", file.display());
        let reference = Command::new("xz")
            .arg("-dc")
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("xz: {e} (the xz-utils package provides it)"));
        assert!(reference.status.success(), "xz -dc {}", file.display());
        assert!(
            ours == reference.stdout,
            "{}: our output ({} bytes) differs from xz -dc ({} bytes)",
            file.display(),
            ours.len(),
            reference.stdout.len()
        );
    }
}
