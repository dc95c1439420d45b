//! `initrd-layout store-image` with a real chroot Nix store, real mksquashfs and unsquashfs.

mod common;

use common::{run, words};
use initrd_layout::store_image::{make_store_image, StoreImageOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn nix(root: &Path) -> Command {
    let mut c = Command::new("nix-store");
    c.arg("--store")
        .arg(format!("local?root={}", root.display()));
    c
}

fn load_db(root: &Path, registration: &str) {
    common::run_stdin(nix(root).arg("--load-db"), registration.as_bytes());
}

/// A chroot store with `lib` and `app`, where `app` refers to `lib` (registered through
/// `--load-db`, since `--add` records no references). Returns (root, lib, app).
fn chroot_store(dir: &Path) -> (PathBuf, String, String) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("lib/lib")).unwrap();
    std::fs::write(src.join("lib/lib/libx.so"), b"not really a library").unwrap();
    let add = |p: &Path| -> String {
        String::from_utf8(run(nix(&root).arg("--add").arg(p)))
            .unwrap()
            .trim()
            .to_string()
    };
    let lib = add(&src.join("lib"));
    std::fs::create_dir_all(src.join("app/bin")).unwrap();
    std::fs::write(
        src.join("app/bin/app"),
        format!("#!/bin/sh\nexec {lib}/lib/libx.so\n"),
    )
    .unwrap();
    let app = add(&src.join("app"));
    let dump = String::from_utf8(run(nix(&root).arg("--dump-db").arg(&app))).unwrap();
    // path, narHash, narSize, deriver, number of references, references...
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines[0], app);
    let with_ref = format!(
        "{}\n{}\n{}\n{}\n1\n{lib}\n",
        lines[0], lines[1], lines[2], lines[3]
    );
    load_db(&root, &with_ref);
    (root, lib, app)
}

fn superblock(img: &Path) -> String {
    String::from_utf8(run(Command::new("unsquashfs").arg("-s").arg(img))).unwrap()
}

#[test]
fn round_trip_with_closure_and_registration() {
    let dir = tempfile::tempdir().unwrap();
    let (root, lib, app) = chroot_store(dir.path());
    let out = dir.path().join("nix-store.squashfs");
    let report = make_store_image(&StoreImageOptions::new(
        vec![app.clone()],
        Some(root.clone()),
        &out,
    ))
    .unwrap();
    let mut expect = vec![lib.clone(), app.clone()];
    expect.sort();
    assert_eq!(report.paths, expect, "the closure of app is app and lib");
    assert_eq!(report.size, std::fs::metadata(&out).unwrap().len());

    let sb = superblock(&out);
    assert!(sb.contains("Compression zstd"), "{sb}");
    assert!(sb.contains("Block size 1048576"), "{sb}");
    assert!(sb.contains("compression-level 19"), "{sb}");

    let unpacked = dir.path().join("unpacked");
    run(Command::new("unsquashfs")
        .arg("-no-progress")
        .arg("-d")
        .arg(&unpacked)
        .arg(&out)
        .stdout(Stdio::null()));
    let mut top: Vec<String> = std::fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut want: Vec<String> = expect
        .iter()
        .map(|p| p.trim_start_matches("/nix/store/").to_string())
        .collect();
    want.push("nix-path-registration".into());
    want.sort();
    assert_eq!(top, want);
    let app_base = app.trim_start_matches("/nix/store/");
    assert_eq!(
        std::fs::read(unpacked.join(app_base).join("bin/app")).unwrap(),
        std::fs::read(root.join(app.trim_start_matches('/')).join("bin/app")).unwrap()
    );
    // The registration is nix-store --dump-db of the closure: loading it into a fresh store
    // gives back the reference from app to lib.
    let reg = std::fs::read_to_string(unpacked.join("nix-path-registration")).unwrap();
    assert!(reg.contains(&format!("\n1\n{lib}\n")), "{reg}");
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    load_db(&fresh, &reg);
    let refs =
        String::from_utf8(run(nix(&fresh).args(["--query", "--references"]).arg(&app))).unwrap();
    assert_eq!(refs.trim(), lib);

    // The image is owned by root and byte-identical when made again.
    let again = dir.path().join("again.squashfs");
    make_store_image(&StoreImageOptions::new(
        vec![app.clone()],
        Some(root),
        &again,
    ))
    .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap(),
        "store image is not reproducible"
    );
}

#[test]
fn registration_file_and_compression_are_settable() {
    let dir = tempfile::tempdir().unwrap();
    let (root, lib, _app) = chroot_store(dir.path());
    let reg = dir.path().join("registration");
    std::fs::write(&reg, "given registration\n").unwrap();
    let out = dir.path().join("img");
    let mut o = StoreImageOptions::new(vec![lib.clone()], Some(root), &out);
    o.registration = Some(reg);
    o.comp = "xz -Xdict-size 100%".into();
    o.processors = Some(1);
    let report = make_store_image(&o).unwrap();
    assert_eq!(report.paths, vec![lib]);
    assert!(superblock(&out).contains("Compression xz"));
    let cat = run(Command::new("unsquashfs")
        .arg("-cat")
        .arg(&out)
        .arg("nix-path-registration"));
    assert_eq!(cat, b"given registration\n");
}

#[test]
fn bad_inputs_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (root, lib, _) = chroot_store(dir.path());
    let out = dir.path().join("out/img");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let cases: Vec<(StoreImageOptions, &str)> = vec![
        (
            StoreImageOptions::new(vec!["/usr/bin".into()], Some(root.clone()), &out),
            "not a store path",
        ),
        (
            StoreImageOptions::new(
                vec!["/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-missing".into()],
                Some(root.clone()),
                &out,
            ),
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-missing",
        ),
        (
            StoreImageOptions::new(vec![], Some(root.clone()), &out),
            "no store paths",
        ),
        (
            StoreImageOptions::new(vec![lib.clone()], Some(dir.path().join("nowhere")), &out),
            "nowhere",
        ),
        (
            {
                let mut o = StoreImageOptions::new(vec![lib.clone()], Some(root.clone()), &out);
                o.comp = "brotli".into();
                o
            },
            "brotli",
        ),
    ];
    for (o, needle) in cases {
        let err = format!("{:#}", make_store_image(&o).unwrap_err());
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        assert_eq!(
            std::fs::read_dir(out.parent().unwrap()).unwrap().count(),
            0,
            "{needle}: something was written"
        );
    }
}

#[test]
fn cli_store_image_then_build() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _lib, app) = chroot_store(dir.path());
    let img = dir.path().join("nix-store.squashfs");
    let list = dir.path().join("paths");
    std::fs::write(&list, format!("{app}\n")).unwrap();
    let mut args = words(&[
        "store-image",
        "--comp",
        "zstd -Xcompression-level 3",
        "--store-root",
    ]);
    args.extend([
        root.into(),
        "--paths-from".into(),
        list.into(),
        "-o".into(),
        img.into(),
    ]);
    let (stdout, stderr) = common::cli_ok(&common::cli(&args, &[]));
    assert!(stdout.contains("2 store paths"), "{stdout}");
    assert!(stderr.contains("mksquashfs of 2 store paths"), "{stderr}");
}
