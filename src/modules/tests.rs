//! The phase on the recording fake, against module trees built in temp dirs.

use super::*;
use crate::sys::Fake;
use std::path::PathBuf;

const RELEASE: &str = "6.99.0-test";

/// A module file: an ELF header-ish prefix and a `.modinfo`-style `name=`.
fn image(name: &str) -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\0".to_vec();
    v.extend(std::iter::repeat_n(0u8, 64));
    v.extend(format!("license=GPL\0name={name}\0vermagic={RELEASE}\0").as_bytes());
    v.extend((0..4000u32).map(|i| (i % 7) as u8));
    v
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lzma_rs::xz_compress(&mut &data[..], &mut out).unwrap();
    out
}

fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Tree {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

/// `<tmp>/lib/modules/<RELEASE>` with modules (`name`, relative path, deps as names) and
/// extra index files.
fn tree(modules: &[(&str, &str, &[&str])], extra: &[(&str, &str)]) -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib/modules").join(RELEASE);
    let mut dep = String::new();
    let path_of = |n: &str| {
        modules
            .iter()
            .find(|m| m.0 == n)
            .map(|m| m.1.to_string())
            .unwrap_or_else(|| format!("kernel/{n}.ko"))
    };
    for (name, path, deps) in modules {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let data = image(name);
        let data = match decompress::Compression::from_file_name(path) {
            decompress::Compression::Xz => xz(&data),
            decompress::Compression::Gzip => gz(&data),
            _ => data,
        };
        std::fs::write(&file, data).unwrap();
        let deps: Vec<String> = deps.iter().map(|d| path_of(d)).collect();
        dep.push_str(&format!("{path}: {}\n", deps.join(" ")));
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modules.dep"), dep).unwrap();
    for (file, text) in extra {
        std::fs::write(dir.join(file), text).unwrap();
    }
    Tree { _tmp: tmp, dir }
}

fn netboot_tree() -> Tree {
    tree(
        &[
            ("squashfs", "kernel/fs/squashfs/squashfs.ko.xz", &[]),
            ("overlay", "kernel/fs/overlayfs/overlay.ko.xz", &[]),
            ("loop", "kernel/drivers/block/loop.ko.xz", &[]),
            ("crc16", "kernel/lib/crc16.ko.xz", &[]),
            ("mbcache", "kernel/fs/mbcache.ko.xz", &[]),
            ("jbd2", "kernel/fs/jbd2/jbd2.ko.xz", &[]),
            ("crc32c_generic", "kernel/crypto/crc32c_generic.ko.gz", &[]),
            (
                "ext4",
                "kernel/fs/ext4/ext4.ko.xz",
                &["jbd2", "mbcache", "crc16"],
            ),
        ],
        &[
            (
                "modules.alias",
                "alias fs-squashfs squashfs\nalias fs-overlay overlay\nalias fs-ext4 ext4\nalias crypto-crc32c crc32c_generic\n",
            ),
            ("modules.softdep", "softdep ext4 pre: crypto-crc32c\n"),
            ("modules.builtin", "kernel/fs/fat/vfat.ko\n"),
            ("modules.builtin.modinfo", "vfat.alias=fs-vfat\0"),
        ],
    )
}

fn config(kernel_modules: &[&str], extra_fs: &str) -> Config {
    let json = format!(
        r#"{{
  "version": 1,
  "kernelModules": {modules},
  "moduleParams": {{ "loop": "max_loop=8" }},
  "fileSystems": [
    {{ "mountPoint": "/", "device": "tmpfs", "fsType": "tmpfs", "options": ["mode=0755"] }},
    {{ "mountPoint": "/nix/.ro-store", "device": "../nix-store.squashfs", "fsType": "squashfs",
       "options": ["loop", "threads=multi"] }},
    {{ "mountPoint": "/nix/.rw-store", "device": "tmpfs", "fsType": "tmpfs", "options": ["mode=0755"] }},
    {{ "mountPoint": "/nix/store", "device": "overlay", "fsType": "overlay",
       "overlay": {{ "lowerdir": ["/nix/.ro-store"], "upperdir": "/nix/.rw-store/store",
                    "workdir": "/nix/.rw-store/work" }} }}
    {extra_fs}
  ]
}}"#,
        modules = serde_json::to_string(kernel_modules).unwrap()
    );
    serde_json::from_str(&json).unwrap()
}

fn cmdline(text: &str) -> Cmdline {
    Cmdline::parse(text)
}

/// The phase on `t` with the fake.
fn boot(
    fake: &Fake,
    t: &Tree,
    config: &Config,
    cmdline_text: &str,
    options: LoadOptions,
) -> anyhow::Result<ModulesReport> {
    load_for_boot_with(
        fake,
        config,
        &cmdline(cmdline_text),
        &t.dir,
        RELEASE,
        options,
    )
}

fn sequential() -> LoadOptions {
    LoadOptions {
        parallelism: Parallelism::Sequential,
    }
}

fn parallel() -> LoadOptions {
    LoadOptions {
        parallelism: Parallelism::Parallel { max_threads: 4 },
    }
}

/// The module name a fake call line is about (`finit_module ext4.ko.xz ...` or
/// `init_module ext4 (...)`).
fn call_module(line: &str) -> String {
    let word = line.split_whitespace().nth(1).unwrap_or("");
    word.split('.').next().unwrap_or("").to_string()
}

#[test]
fn implied_modules_for_the_netboot_layout() {
    let c = config(&[], "");
    assert_eq!(
        implied_by_file_systems(&c),
        vec!["loop", "squashfs", "overlay"]
    );
    let c = config(
        &[],
        r#", { "mountPoint": "/data", "device": "/dev/vda1", "fsType": "ext4" },
           { "mountPoint": "/boot", "device": "/dev/vda2", "fsType": "vfat", "options": ["loop"] },
           { "mountPoint": "/proc2", "device": "proc", "fsType": "proc" }"#,
    );
    assert_eq!(
        implied_by_file_systems(&c),
        vec!["loop", "squashfs", "overlay", "fs-ext4", "fs-vfat"]
    );
}

#[test]
fn loads_the_netboot_modules_with_the_kernel_decompressing() {
    let t = netboot_tree();
    for options in [sequential(), parallel()] {
        let fake = Fake::new();
        let report = boot(&fake, &t, &config(&[], ""), "", options).unwrap();
        let mut calls = fake.calls();
        calls.sort();
        assert_eq!(
            calls,
            vec![
                "finit_module loop.ko.xz flags=compressed params=max_loop=8",
                "finit_module overlay.ko.xz flags=compressed params=",
                "finit_module squashfs.ko.xz flags=compressed params=",
            ]
        );
        let mut names: Vec<&str> = report.loaded().map(|l| l.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["loop", "overlay", "squashfs"]);
        assert!(report
            .loads
            .iter()
            .all(|l| l.method == Method::FinitCompressed(decompress::Compression::Xz)));
        assert!(report.loads.iter().all(|l| l.end_us >= l.start_us));
        assert!(report.end_us >= report.start_us);
        assert!(report.to_string().starts_with("loaded 3 modules ("));
        assert!(report
            .to_string()
            .ends_with("), 0 builtin, 0 already loaded"));
    }
}

#[test]
fn summary_line() {
    let t = netboot_tree();
    let fake = Fake::new();
    let report = boot(&fake, &t, &config(&["vfat"], ""), "", sequential()).unwrap();
    assert_eq!(
        report.to_string(),
        "loaded 3 modules (loop, squashfs, overlay), 1 builtin, 0 already loaded"
    );
}

#[test]
fn dependencies_load_first_in_both_modes() {
    let t = netboot_tree();
    for options in [sequential(), parallel()] {
        let fake = Fake::new();
        let report = boot(&fake, &t, &config(&["fs-ext4"], ""), "", options).unwrap();
        let calls: Vec<String> = fake.calls().iter().map(|c| call_module(c)).collect();
        let pos = |n: &str| {
            calls
                .iter()
                .position(|c| c == n)
                .unwrap_or_else(|| panic!("{n} not loaded: {calls:?}"))
        };
        for dep in ["jbd2", "mbcache", "crc16", "crc32c_generic"] {
            assert!(
                pos(dep) < pos("ext4"),
                "{options:?}: {dep} after ext4: {calls:?}"
            );
        }
        // ext4 started only after its dependencies had finished.
        let load = |n: &str| report.loads.iter().find(|l| l.name == n).unwrap();
        for dep in ["jbd2", "mbcache", "crc16", "crc32c_generic"] {
            assert!(load(dep).end_us <= load("ext4").start_us);
        }
        assert_eq!(report.loads.len(), 8, "{options:?}");
        if options == sequential() {
            // Config modules first, each after its dependencies, then the implied ones.
            let want = [
                "jbd2",
                "mbcache",
                "crc16",
                "crc32c_generic",
                "ext4",
                "loop",
                "squashfs",
                "overlay",
            ];
            assert_eq!(calls, want);
        }
    }
}

#[test]
fn already_loaded_is_success() {
    let t = netboot_tree();
    let fake = Fake::new();
    fake.fail_on("finit_module loop.ko.xz", Errno::EEXIST);
    let report = boot(&fake, &t, &config(&[], ""), "", sequential()).unwrap();
    assert_eq!(
        report.to_string(),
        "loaded 2 modules (squashfs, overlay), 0 builtin, 1 already loaded"
    );
    // EEXIST from init_module after userspace decompression counts too.
    let fake = Fake::new();
    fake.fail_on("finit_module", Errno::EOPNOTSUPP);
    fake.fail_on("init_module overlay", Errno::EEXIST);
    let report = boot(&fake, &t, &config(&[], ""), "", sequential()).unwrap();
    assert_eq!(report.already_loaded().count(), 1);
}

#[test]
fn falls_back_to_userspace_decompression_once_the_kernel_refuses() {
    let t = netboot_tree();
    let fake = Fake::new();
    fake.fail_on(
        "finit_module loop.ko.xz flags=compressed",
        Errno::EOPNOTSUPP,
    );
    let report = boot(
        &fake,
        &t,
        &config(&["crypto-crc32c"], ""),
        "loop.max_part=4",
        sequential(),
    )
    .unwrap();
    let len = |n: &str| image(n).len();
    // EOPNOTSUPP means no in-kernel decompression at all: later modules, whatever their
    // format, go straight to userspace.
    assert_eq!(
        fake.calls(),
        vec![
            "finit_module crc32c_generic.ko.gz flags=compressed params=".to_string(),
            "finit_module loop.ko.xz flags=compressed params=max_loop=8 max_part=4".to_string(),
            format!(
                "init_module loop ({} bytes) params=max_loop=8 max_part=4",
                len("loop")
            ),
            format!("init_module squashfs ({} bytes) params=", len("squashfs")),
            format!("init_module overlay ({} bytes) params=", len("overlay")),
        ]
    );
    assert!(matches!(
        report
            .loads
            .iter()
            .find(|l| l.name == "squashfs")
            .unwrap()
            .method,
        Method::Userspace(decompress::Compression::Xz)
    ));
}

#[test]
fn einval_refuses_only_that_format() {
    let t = netboot_tree();
    let fake = Fake::new();
    fake.fail_on("finit_module loop.ko.xz flags=compressed", Errno::EINVAL);
    boot(
        &fake,
        &t,
        &config(&["loop", "crc32c_generic", "squashfs"], ""),
        "",
        sequential(),
    )
    .unwrap();
    let calls = fake.calls();
    assert_eq!(
        calls[0],
        "finit_module loop.ko.xz flags=compressed params=max_loop=8"
    );
    assert!(calls[1].starts_with("init_module loop ("));
    assert_eq!(
        calls[2],
        "finit_module crc32c_generic.ko.gz flags=compressed params="
    );
    assert!(calls[3].starts_with("init_module squashfs ("), "{calls:?}");
}

#[test]
fn plain_modules_use_finit_without_flags() {
    let t = tree(
        &[
            ("squashfs", "kernel/fs/squashfs/squashfs.ko", &[]),
            ("overlay", "kernel/fs/overlayfs/overlay.ko", &[]),
            ("loop", "kernel/drivers/block/loop.ko", &[]),
        ],
        &[],
    );
    let fake = Fake::new();
    boot(&fake, &t, &config(&[], ""), "", sequential()).unwrap();
    assert_eq!(
        fake.calls(),
        vec![
            "finit_module loop.ko flags=none params=max_loop=8",
            "finit_module squashfs.ko flags=none params=",
            "finit_module overlay.ko flags=none params=",
        ]
    );
}

#[test]
fn wrong_release_is_refused_before_any_load() {
    let t = netboot_tree();
    let fake = Fake::new();
    let e = load_for_boot(
        &fake,
        &config(&[], ""),
        &cmdline(""),
        &t.dir,
        "6.1.0-56-amd64",
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(RELEASE) && msg.contains("6.1.0-56-amd64"),
        "{msg}"
    );
    assert!(fake.calls().is_empty());

    let other = t.dir.parent().unwrap().join("6.1.0-56-amd64");
    let e = load_for_boot(
        &fake,
        &config(&[], ""),
        &cmdline(""),
        &other,
        "6.1.0-56-amd64",
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("no modules for the running kernel 6.1.0-56-amd64") && msg.contains(RELEASE),
        "{msg}"
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn missing_module_names_the_directory() {
    let t = netboot_tree();
    let fake = Fake::new();
    let e = load_for_boot(
        &fake,
        &config(&["nosuchmod"], ""),
        &cmdline(""),
        &t.dir,
        RELEASE,
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("module nosuchmod not found in"), "{msg}");
    assert!(msg.contains(&t.dir.display().to_string()), "{msg}");
    assert!(fake.calls().is_empty());
}

#[test]
fn missing_file_and_syscall_errors_name_module_file_and_errno() {
    let t = netboot_tree();
    std::fs::remove_file(t.dir.join("kernel/fs/overlayfs/overlay.ko.xz")).unwrap();
    let fake = Fake::new();
    fake.fail_on("finit_module overlay", Errno::ENOENT);
    let e = boot(&fake, &t, &config(&[], ""), "", sequential()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("module overlay") && msg.contains("overlay.ko.xz does not exist"),
        "{msg}"
    );

    let t = netboot_tree();
    for options in [sequential(), parallel()] {
        let fake = Fake::new();
        fake.fail_on("finit_module squashfs", Errno::ENOEXEC);
        let e = boot(&fake, &t, &config(&[], ""), "", options).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("loading module squashfs from"), "{msg}");
        assert!(msg.contains("kernel/fs/squashfs/squashfs.ko.xz"), "{msg}");
        assert!(msg.contains("ENOEXEC"), "{msg}");
    }

    let fake = Fake::new();
    fake.fail_on("finit_module", Errno::EOPNOTSUPP);
    fake.fail_on("init_module squashfs", Errno::EPERM);
    let e = boot(&fake, &t, &config(&[], ""), "", sequential()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("squashfs")
            && msg.contains("init_module after userspace xz decompression")
            && msg.contains("EPERM"),
        "{msg}"
    );
}

#[test]
fn corrupt_compressed_module_names_the_file() {
    let t = netboot_tree();
    std::fs::write(
        t.dir.join("kernel/drivers/block/loop.ko.xz"),
        b"\xfd7zXZ\0garbage",
    )
    .unwrap();
    let fake = Fake::new();
    fake.fail_on("finit_module", Errno::EOPNOTSUPP);
    let e = boot(&fake, &t, &config(&[], ""), "", sequential()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("loop.ko.xz") && msg.contains("xz data is corrupt"),
        "{msg}"
    );
}

#[test]
fn nothing_requested_touches_nothing() {
    let fake = Fake::new();
    let mut c = config(&[], "");
    c.file_systems.retain(|f| f.fs_type == "tmpfs");
    let report = load_for_boot(&fake, &c, &cmdline(""), Path::new("/nonexistent/x"), "y").unwrap();
    assert_eq!(
        report.to_string(),
        "loaded 0 modules, 0 builtin, 0 already loaded"
    );
}

#[test]
fn implied_fs_alias_that_resolves_to_nothing_is_not_fatal() {
    let t = netboot_tree();
    let fake = Fake::new();
    let c = config(
        &[],
        r#", { "mountPoint": "/x", "device": "/dev/vda", "fsType": "btrfs" },
           { "mountPoint": "/y", "device": "/dev/vdb", "fsType": "vfat" }"#,
    );
    let report = load_for_boot(&fake, &c, &cmdline(""), &t.dir, RELEASE).unwrap();
    assert_eq!(report.unresolved, vec!["fs-btrfs"]);
    assert_eq!(report.builtin, vec!["fs-vfat"]);
}

#[test]
fn module_params_merge_config_and_cmdline() {
    let c = config(&[], "");
    let p = module_params(
        &c,
        &[
            ("loop".into(), "max_part=4".into()),
            ("squashfs".into(), "x=\"a b\"".into()),
        ],
    );
    assert_eq!(p["loop"], "max_loop=8 max_part=4");
    assert_eq!(p["squashfs"], "x=\"a b\"");
    assert!(!p.contains_key("overlay"));
}

#[test]
fn fake_reads_the_module_name_from_modinfo() {
    assert_eq!(modinfo_name(&image("squashfs")), "squashfs");
    assert_eq!(modinfo_name(b"xname=bad\0"), "?");
    assert_eq!(modinfo_name(b"name=first"), "first");
}

#[test]
fn sequential_switch_on_the_command_line() {
    let t = netboot_tree();
    let fake = Fake::new();
    let report = load_for_boot(
        &fake,
        &config(&[], ""),
        &cmdline("netboot.modules=sequential"),
        &t.dir,
        RELEASE,
    )
    .unwrap();
    assert_eq!(report.parallelism, Some(Parallelism::Sequential));
    assert!(report.loads.iter().all(|l| l.worker == 0));
    let report = load_for_boot(&fake, &config(&[], ""), &cmdline(""), &t.dir, RELEASE).unwrap();
    assert_eq!(report.parallelism, Some(Parallelism::default()));
}

#[test]
fn plan_matches_what_the_boot_loads() {
    let t = netboot_tree();
    let index = index::ModulesIndex::load(&t.dir).unwrap();
    let c = config(
        &["ext4", "vfat"],
        r#", { "mountPoint": "/x", "device": "/dev/vda", "fsType": "btrfs" }"#,
    );
    let plan = plan(&index, &c).unwrap();
    assert_eq!(
        plan.requested,
        vec!["ext4", "vfat", "loop", "squashfs", "overlay", "fs-btrfs"]
    );
    assert_eq!(plan.builtin, vec!["vfat"]);
    assert_eq!(plan.unresolved, vec!["fs-btrfs"]);
    let names: Vec<&str> = plan.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "jbd2",
            "mbcache",
            "crc16",
            "crc32c_generic",
            "ext4",
            "loop",
            "squashfs",
            "overlay"
        ]
    );
    // A name the config asks for explicitly must exist.
    let c = config(&["fs-btrfs"], "");
    assert!(plan_err(&index, &c).contains("module fs-btrfs not found"));
}

fn plan_err(index: &index::ModulesIndex, c: &Config) -> String {
    match plan(index, c) {
        Ok(p) => panic!("planned {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn real_ops_report_errors_without_reaching_the_kernel() {
    // Only paths that fail before the syscall: the host kernel is not touched.
    let missing = Path::new("/nonexistent/netboot-init-test/x.ko");
    assert_eq!(
        crate::sys::Real.finit_module(missing, "", FinitFlags::NONE),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        crate::sys::Real.init_module(b"", "bad\0param"),
        Err(Errno::EINVAL)
    );
    assert_eq!(FinitFlags::COMPRESSED_FILE.bits(), 4);
    assert_eq!(FinitFlags::NONE.to_string(), "none");
}
