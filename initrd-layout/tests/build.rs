//! `initrd-layout build` against real kernel module trees, listed and unpacked with GNU cpio.

mod common;

use common::*;
use initrd_layout::build::{build, BuildOptions, BuildReport, ExtraFile};
use initrd_layout::Compression;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fixture {
    dir: tempfile::TempDir,
    opts: BuildOptions,
}

fn fixture(series: &str, kernel_modules: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (tree, _) = kernel(series);
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let opts = BuildOptions::new(
        &fake_init(&inputs),
        &config(&inputs, kernel_modules),
        &tree,
        &store_image(&inputs),
        &out.join("initrd"),
    );
    Fixture { dir, opts }
}

/// The two parts of a built initrd: the decompressed small archive and the store archive.
fn split(report: &BuildReport, tool: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let bytes = std::fs::read(&report.output).unwrap();
    assert_eq!(bytes.len() as u64, report.total_len);
    let compressed = &bytes[..report.compressed_len as usize];
    let small = decompress(tool, compressed);
    assert_eq!(small.len() as u64, report.small_archive_len);
    let store = report.store_archive_offset.map(|off| {
        assert_eq!(off % 4, 0, "the store archive must start 4-byte aligned");
        assert!(off >= report.compressed_len && off - report.compressed_len < 4);
        assert!(bytes[report.compressed_len as usize..off as usize]
            .iter()
            .all(|&b| b == 0));
        bytes[off as usize..].to_vec()
    });
    (small, store)
}

fn entry<'a>(list: &'a [Listed], name: &str) -> &'a Listed {
    list.iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not in the archive: {list:#?}"))
}

fn modules_dir(list: &[Listed]) -> String {
    let e = list
        .iter()
        .find(|e| e.name.starts_with("lib/modules/") && e.name.ends_with("/modules.dep"))
        .expect("modules.dep in the archive");
    e.name.trim_end_matches("/modules.dep").to_string()
}

/// Every module modules.dep names is in the unpacked tree, and nothing else is.
fn check_module_closure(root: &Path, mdir: &str, list: &[Listed], expect: &[&str], suffix: &str) {
    let dep = std::fs::read_to_string(root.join(mdir).join("modules.dep")).unwrap();
    let mut listed_paths = Vec::new();
    for line in dep.lines() {
        let (path, deps) = line.split_once(':').unwrap();
        assert!(path.ends_with(suffix), "{path} should end with {suffix}");
        listed_paths.push(path.to_string());
        for d in deps.split_whitespace().chain([path]) {
            assert!(
                root.join(mdir).join(d).is_file(),
                "{d} (from modules.dep) missing from the initrd"
            );
        }
    }
    let shipped: Vec<&Listed> = list.iter().filter(|e| e.name.contains(".ko")).collect();
    assert_eq!(
        shipped.len(),
        listed_paths.len(),
        "modules shipped vs modules.dep lines: {shipped:#?}"
    );
    for e in &shipped {
        assert_eq!(e.mode, "-rw-r--r--", "{}", e.name);
    }
    for m in expect {
        assert!(
            listed_paths.iter().any(|p| p
                .rsplit('/')
                .next()
                .unwrap()
                .starts_with(&format!("{m}.ko"))),
            "module {m} missing from {listed_paths:?}"
        );
    }
}

fn check_common(list: &[Listed], opts: &BuildOptions) {
    for e in list {
        assert_eq!(e.owner, "root:root", "{}", e.name);
    }
    let init = entry(list, "init");
    assert_eq!(init.mode, "-rwxr-xr-x");
    assert_eq!(
        init.size_or_dev,
        std::fs::metadata(&opts.init).unwrap().len().to_string()
    );
    assert_eq!(entry(list, "etc/netboot-init.json").mode, "-rw-r--r--");
    assert_eq!(entry(list, "dev").mode, "drwxr-xr-x");
    let console = entry(list, "dev/console");
    assert_eq!(console.mode, "crw-------");
    assert_eq!(console.size_or_dev, "5, 1");
    for d in ["proc", "sys", "run", "mnt-root"] {
        assert_eq!(entry(list, d).mode, "drwxr-xr-x", "{d}");
    }
    // Parents before children, in sorted order (cpio -t lists in archive order).
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(
        !names.contains(&"nix-store.squashfs"),
        "the store image belongs in the second archive"
    );
}

fn check_store_archive(store: &[u8], opts: &BuildOptions, dir: &Path) {
    let list = cpio_list(store);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].name, "nix-store.squashfs");
    assert_eq!(list[0].mode, "-r--r--r--");
    let out = dir.join("store-unpacked");
    cpio_extract(store, &out);
    assert_eq!(
        std::fs::read(out.join("nix-store.squashfs")).unwrap(),
        std::fs::read(&opts.store_image).unwrap()
    );
}

#[test]
fn kernel_6_12_zstd_layout_lists_with_gnu_cpio() {
    let f = fixture("6.12", &["virtio_net"]);
    let report = build(&f.opts).unwrap();
    let (small, store) = split(&report, "zstd");
    let list = cpio_list(&small);
    check_common(&list, &f.opts);
    let root = f.dir.path().join("unpacked");
    cpio_extract(&small, &root);
    assert_eq!(
        std::fs::read(root.join("init")).unwrap(),
        std::fs::read(&f.opts.init).unwrap()
    );
    assert_eq!(
        std::fs::read(root.join("etc/netboot-init.json")).unwrap(),
        std::fs::read(&f.opts.config).unwrap()
    );
    let mdir = modules_dir(&list);
    assert_eq!(mdir, format!("lib/modules/{}", report.kernel_release));
    // 6.12 ships .ko.xz; the initrd carries them decompressed.
    check_module_closure(
        &root,
        &mdir,
        &list,
        &["squashfs", "loop", "overlay", "virtio_net", "failover"],
        ".ko",
    );
    let (tree, _) = kernel("6.12");
    let original = run(Command::new("xz")
        .args(["-dc"])
        .arg(tree.join("kernel/fs/squashfs/squashfs.ko.xz")));
    assert_eq!(
        std::fs::read(root.join(&mdir).join("kernel/fs/squashfs/squashfs.ko")).unwrap(),
        original
    );
    // The alias index keeps only the closure's lines, and keeps them all.
    let alias = std::fs::read_to_string(root.join(&mdir).join("modules.alias")).unwrap();
    assert!(alias.lines().any(|l| l.ends_with(" virtio_net")), "{alias}");
    assert!(alias
        .lines()
        .all(|l| report.modules.iter().any(|m| l.ends_with(&format!(" {m}")))));
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        assert_eq!(
            std::fs::read(root.join(&mdir).join(f)).unwrap(),
            std::fs::read(tree.join(f)).unwrap(),
            "{f}"
        );
    }
    check_store_archive(&store.unwrap(), &f.opts, f.dir.path());
}

#[test]
fn kernel_6_1_plain_modules_are_shipped_unchanged() {
    let f = fixture("6.1", &["virtio_net"]);
    let report = build(&f.opts).unwrap();
    assert!(
        report.modules.contains(&"virtio_ring".to_string()),
        "{:?}",
        report.modules
    );
    let (small, store) = split(&report, "zstd");
    let list = cpio_list(&small);
    check_common(&list, &f.opts);
    let root = f.dir.path().join("unpacked");
    cpio_extract(&small, &root);
    let mdir = modules_dir(&list);
    check_module_closure(
        &root,
        &mdir,
        &list,
        &["squashfs", "loop", "overlay", "virtio_net", "virtio_ring"],
        ".ko",
    );
    let (tree, _) = kernel("6.1");
    assert_eq!(
        std::fs::read(root.join(&mdir).join("kernel/drivers/block/loop.ko")).unwrap(),
        std::fs::read(tree.join("kernel/drivers/block/loop.ko")).unwrap()
    );
    check_store_archive(&store.unwrap(), &f.opts, f.dir.path());
}

#[test]
fn keep_module_compression_ships_modules_as_packaged() {
    let mut f = fixture("6.12", &[]);
    f.opts.keep_module_compression = true;
    let report = build(&f.opts).unwrap();
    let (small, _) = split(&report, "zstd");
    let list = cpio_list(&small);
    let root = f.dir.path().join("unpacked");
    cpio_extract(&small, &root);
    let mdir = modules_dir(&list);
    check_module_closure(
        &root,
        &mdir,
        &list,
        &["squashfs", "loop", "overlay"],
        ".ko.xz",
    );
    let (tree, _) = kernel("6.12");
    assert_eq!(
        std::fs::read(root.join(&mdir).join("kernel/fs/overlayfs/overlay.ko.xz")).unwrap(),
        std::fs::read(tree.join("kernel/fs/overlayfs/overlay.ko.xz")).unwrap()
    );
}

#[test]
fn every_compressor_gives_a_listable_first_part() {
    for (c, tool) in [
        (Compression::Xz { level: 6 }, "xz"),
        (Compression::Gzip { level: 9 }, "gzip"),
        (Compression::None, "none"),
        (Compression::Zstd { level: 3 }, "zstd"),
    ] {
        let mut f = fixture("6.12", &[]);
        f.opts.compression = c;
        let report = build(&f.opts).unwrap();
        let bytes = std::fs::read(&report.output).unwrap();
        match tool {
            // Stream flags: check type 1 = CRC32, the only one the kernel's xz decoder verifies.
            "xz" => assert_eq!(&bytes[..8], b"\xfd7zXZ\0\0\x01"),
            "gzip" => assert_eq!(&bytes[..2], b"\x1f\x8b"),
            "zstd" => assert_eq!(&bytes[..4], b"\x28\xb5\x2f\xfd"),
            _ => assert_eq!(&bytes[..6], b"070701"),
        }
        let (small, store) = split(&report, tool);
        check_common(&cpio_list(&small), &f.opts);
        check_store_archive(&store.unwrap(), &f.opts, f.dir.path());
    }
}

#[test]
fn single_archive_mode_compresses_everything_together() {
    let mut f = fixture("6.12", &[]);
    f.opts.single_archive = true;
    let report = build(&f.opts).unwrap();
    assert_eq!(report.store_archive_offset, None);
    assert_eq!(report.compressed_len, report.total_len);
    let all = decompress("zstd", &std::fs::read(&report.output).unwrap());
    let list = cpio_list(&all);
    let img = entry(&list, "nix-store.squashfs");
    assert_eq!(img.mode, "-r--r--r--");
    assert_eq!(
        img.size_or_dev,
        std::fs::metadata(&f.opts.store_image)
            .unwrap()
            .len()
            .to_string()
    );
    assert_eq!(entry(&list, "init").mode, "-rwxr-xr-x");
}

#[test]
fn rebuild_is_byte_identical() {
    let a = fixture("6.12", &["virtio_net"]);
    let first = build(&a.opts).unwrap();
    // Same contents from other paths with other mtimes.
    let b = tempfile::tempdir().unwrap();
    let mut opts = a.opts.clone();
    for p in [&mut opts.init, &mut opts.config, &mut opts.store_image] {
        let copy = b.path().join(p.file_name().unwrap());
        std::fs::copy(&*p, &copy).unwrap();
        let f = std::fs::File::options().write(true).open(&copy).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(123_456))
            .unwrap();
        *p = copy;
    }
    opts.output = b.path().join("initrd");
    let second = build(&opts).unwrap();
    let (x, y) = (
        std::fs::read(&first.output).unwrap(),
        std::fs::read(&second.output).unwrap(),
    );
    assert!(x == y, "rebuild differs ({} vs {} bytes)", x.len(), y.len());
    // The fixed mtime is what makes it so: another one gives other bytes.
    opts.mtime = 1_700_000_000;
    opts.output = b.path().join("initrd-other-mtime");
    let third = build(&opts).unwrap();
    assert_ne!(std::fs::read(&third.output).unwrap(), x);
}

#[test]
fn shell_prebuilt_db_and_extra_files() {
    let mut f = fixture("6.12", &[]);
    let db = f.dir.path().join("db");
    std::fs::create_dir_all(db.join("db")).unwrap();
    std::fs::write(db.join("db/db.sqlite"), b"SQLite format 3\0").unwrap();
    let extra = f.dir.path().join("motd");
    std::fs::write(&extra, b"hi\n").unwrap();
    f.opts.shell = Some(PathBuf::from("/bin/busybox"));
    f.opts.prebuilt_db = Some(db);
    f.opts.extra_files = vec![ExtraFile::parse(&format!("{}=/etc/motd", extra.display())).unwrap()];
    let report = build(&f.opts).unwrap();
    let (small, _) = split(&report, "zstd");
    let list = cpio_list(&small);
    assert_eq!(entry(&list, "bin/busybox").mode, "-rwxr-xr-x");
    assert!(entry(&list, "bin/sh").mode.starts_with('l'));
    assert_eq!(entry(&list, "nix-db/db/db.sqlite").mode, "-rw-r--r--");
    assert_eq!(entry(&list, "etc/motd").size_or_dev, "3");
    let root = f.dir.path().join("unpacked");
    cpio_extract(&small, &root);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
}

/// Runs a build expected to fail; checks the message and that nothing was written.
fn expect_error(opts: &BuildOptions, needle: &str) {
    let out_dir = opts.output.parent().unwrap();
    let err = format!("{:#}", build(opts).unwrap_err());
    assert!(
        err.contains(needle),
        "error {err:?} should mention {needle:?}"
    );
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "a failed build left {left:?} behind");
}

#[test]
fn error_missing_init() {
    let mut f = fixture("6.12", &[]);
    f.opts.init = f.dir.path().join("no-such-init");
    expect_error(&f.opts, "init binary");
    expect_error(&f.opts, "no-such-init");
}

#[test]
fn error_missing_config() {
    let mut f = fixture("6.12", &[]);
    f.opts.config = f.dir.path().join("absent.json");
    expect_error(&f.opts, "absent.json");
}

#[test]
fn error_config_does_not_validate() {
    let f = fixture("6.12", &[]);
    let text = std::fs::read_to_string(&f.opts.config).unwrap();
    std::fs::write(
        &f.opts.config,
        text.replace("\"fsType\": \"squashfs\"", "\"fsType\": 7"),
    )
    .unwrap();
    expect_error(&f.opts, "fsType");
    std::fs::write(&f.opts.config, text.replacen('{', "{\"bogusField\": 1,", 1)).unwrap();
    expect_error(&f.opts, "bogusField");
}

#[test]
fn error_modules_tree_without_modules_dep() {
    let mut f = fixture("6.12", &[]);
    let (tree, _) = kernel("6.12");
    let fake = f.dir.path().join("modules").join(tree.file_name().unwrap());
    std::fs::create_dir_all(fake.join("kernel/fs/squashfs")).unwrap();
    std::fs::copy(
        tree.join("kernel/fs/squashfs/squashfs.ko.xz"),
        fake.join("kernel/fs/squashfs/squashfs.ko.xz"),
    )
    .unwrap();
    f.opts.modules_tree = fake;
    expect_error(&f.opts, "no modules.dep");
    f.opts.modules_tree = f.dir.path().join("no/such/tree");
    expect_error(&f.opts, "no/such/tree");
}

#[test]
fn error_module_the_config_needs_is_missing() {
    let f = fixture("6.12", &["no_such_module_anywhere"]);
    expect_error(&f.opts, "no_such_module_anywhere");
}

#[test]
fn error_module_file_listed_but_absent() {
    let mut f = fixture("6.1", &[]);
    // A tree whose modules.dep names squashfs.ko but the file is gone.
    let (tree, _) = kernel("6.1");
    let fake = f.dir.path().join("modules").join(tree.file_name().unwrap());
    std::fs::create_dir_all(&fake).unwrap();
    for idx in [
        "modules.dep",
        "modules.builtin",
        "modules.alias",
        "modules.softdep",
    ] {
        std::fs::copy(tree.join(idx), fake.join(idx)).unwrap();
    }
    f.opts.modules_tree = fake.clone();
    expect_error(&f.opts, "cannot be read");
    expect_error(
        &f.opts,
        &fake
            .join("kernel/drivers/block/loop.ko")
            .display()
            .to_string(),
    );
}

#[test]
fn error_missing_store_image() {
    let mut f = fixture("6.12", &[]);
    f.opts.store_image = f.dir.path().join("gone.squashfs");
    expect_error(&f.opts, "gone.squashfs");
}

#[test]
fn error_store_image_over_4_gib_names_file_and_size() {
    let mut f = fixture("6.12", &[]);
    let big = f.dir.path().join("huge.squashfs");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(4 * 1024 * 1024 * 1024).unwrap(); // sparse: 4 GiB, one byte over the limit
    f.opts.store_image = big;
    expect_error(&f.opts, "huge.squashfs is 4294967296 bytes");
    // The same file is refused in single-archive mode too.
    f.opts.single_archive = true;
    expect_error(&f.opts, "4294967296");
}

#[test]
fn error_prebuilt_mode_without_database() {
    let f = fixture("6.12", &[]);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&f.opts.config).unwrap()).unwrap();
    v["registration"] = serde_json::json!({"mode": "prebuilt"});
    std::fs::write(&f.opts.config, v.to_string()).unwrap();
    expect_error(&f.opts, "prebuilt");
}

#[test]
fn error_missing_shell() {
    let mut f = fixture("6.12", &[]);
    f.opts.shell = Some(f.dir.path().join("no-busybox"));
    expect_error(&f.opts, "no-busybox");
}

#[test]
fn cli_builds_and_reports_errors() {
    let f = fixture("6.12", &[]);
    let o = &f.opts;
    let mut args = words(&["build"]);
    args.extend(build_args(o));
    args.extend(words(&["--compress", "xz:3", "-o"]));
    args.push(o.output.clone().into());
    let (stdout, _) = cli_ok(&cli(&args, &[("SOURCE_DATE_EPOCH", "1000")]));
    assert!(stdout.contains("store image archive at offset"), "{stdout}");
    assert_eq!(&std::fs::read(&o.output).unwrap()[..6], b"\xfd7zXZ\0");

    cli_err(
        &cli(&words(&["build", "--compress", "zstd:22", "-o", "x"]), &[]),
        "zstd level 22",
    );
    cli_err(
        &cli(&words(&["build", "-o", "x"]), &[]),
        "--init is required",
    );
    cli_err(
        &cli(&words(&["frobnicate", "-o", "x"]), &[]),
        "unknown command",
    );
}
