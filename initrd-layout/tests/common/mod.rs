//! Shared fixtures: the real kernel trees the harness fetched, real mksquashfs, GNU cpio.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `(modules tree, kernel image)` of `target/netboot/kernels/<series>`.
pub fn kernel(series: &str) -> (PathBuf, PathBuf) {
    let base = workspace().join("target/netboot/kernels").join(series);
    let version = std::fs::read_to_string(base.join("version")).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `cargo xtask setup` to fetch the test kernels",
            base.display()
        )
    });
    let version = version.trim();
    let tree = base.join("lib/modules").join(version);
    assert!(
        tree.join("modules.dep").is_file(),
        "{} has no modules.dep: run `cargo xtask setup`",
        tree.display()
    );
    (tree, base.join("boot").join(format!("vmlinuz-{version}")))
}

pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn run_stdin(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A real squashfs image of a small tree.
pub fn store_image(dir: &Path) -> PathBuf {
    let src = dir.join("store-src");
    std::fs::create_dir_all(src.join("abc-hello/bin")).unwrap();
    std::fs::write(src.join("abc-hello/bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    let img = dir.join("store.squashfs");
    run(Command::new("mksquashfs")
        .arg(&src)
        .arg(&img)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-comp",
            "zstd",
        ])
        .stdout(Stdio::null()));
    img
}

/// The example config with extra kernel modules.
pub fn config(dir: &Path, kernel_modules: &[&str]) -> PathBuf {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/netboot.json"),
    )
    .expect("examples/netboot.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["kernelModules"] = serde_json::json!(kernel_modules);
    v["init"] = serde_json::json!("/nix/store/00000000000000000000000000000000-nixos-system/init");
    let p = dir.join("netboot-init.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

pub fn fake_init(dir: &Path) -> PathBuf {
    let p = dir.join("netboot-init");
    // Not an ELF: the layout does not care what /init is, and the content is checked byte for byte.
    let mut data = b"\x7fELF-stand-in for netboot-init\n".to_vec();
    data.extend((0..100_000u32).map(|i| (i * 7 % 251) as u8));
    std::fs::write(&p, data).unwrap();
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub mode: String,
    pub owner: String,
    pub size_or_dev: String,
    pub name: String,
}

/// `cpio -itv` of an uncompressed archive, as (mode string, owner, size, name).
pub fn cpio_list(archive: &[u8]) -> Vec<Listed> {
    let out = run_stdin(Command::new("cpio").args(["-itv", "--quiet"]), archive);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            // drwxr-xr-x   2 root     root            0 Jan  1  1970 dev
            // crw-------   1 root     root       5,   1 Jan  1  1970 dev/console
            let w: Vec<&str> = l.split_whitespace().collect();
            let (size, rest) = if w[0].starts_with('c') {
                (format!("{} {}", w[4], w[5]), &w[6..])
            } else {
                (w[4].to_string(), &w[5..])
            };
            let name = rest[3..].join(" ");
            let name = match name.split_once(" -> ") {
                Some((n, _)) => n.to_string(),
                None => name,
            };
            Listed {
                mode: w[0].to_string(),
                owner: format!("{}:{}", w[2], w[3]),
                size_or_dev: size,
                name,
            }
        })
        .collect()
}

/// Unpacks an uncompressed archive into `dir` with GNU cpio.
pub fn cpio_extract(archive: &[u8], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run_stdin(
        Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir),
        archive,
    );
}

pub fn decompress(tool: &str, data: &[u8]) -> Vec<u8> {
    match tool {
        "none" => data.to_vec(),
        t => run_stdin(Command::new(t).args(["-d", "-c"]), data),
    }
}

/// Runs the `initrd-layout` binary.
pub fn cli(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_initrd-layout"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `(stdout, stderr)` of a run that must have succeeded.
pub fn cli_ok(out: &std::process::Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "initrd-layout failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// A run that must have failed with exit status 1 and a message containing `needle`.
pub fn cli_err(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
}

/// The build inputs of `opts` as command-line options.
pub fn build_args(o: &initrd_layout::BuildOptions) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    for (flag, path) in [
        ("--init", &o.init),
        ("--config", &o.config),
        ("--modules", &o.modules_tree),
        ("--store-image", &o.store_image),
    ] {
        v.push(flag.into());
        v.push(path.into());
    }
    v
}

/// Turns string literals into command-line arguments.
pub fn words(w: &[&str]) -> Vec<std::ffi::OsString> {
    w.iter().map(Into::into).collect()
}
