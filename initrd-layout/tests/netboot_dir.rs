//! `initrd-layout netboot-dir`: the iPXE script and the kexec tree, with a real kernel image.

mod common;

use common::*;
use initrd_layout::build::BuildOptions;
use initrd_layout::netboot_dir::{make_netboot_dir, InitrdSource, NetbootDirOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const INIT: &str = "/nix/store/11111111111111111111111111111111-nixos-system-netboot/init";

fn options(dir: &Path, params: &[&str]) -> NetbootDirOptions {
    let (tree, kernel_image) = kernel("6.12");
    let inputs = dir.join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let build = BuildOptions::new(
        &fake_init(&inputs),
        &config(&inputs, &[]),
        &tree,
        &store_image(&inputs),
        &dir.join("unused"),
    );
    NetbootDirOptions {
        kernel: kernel_image,
        initrd: InitrdSource::Build(Box::new(build)),
        stage2_init: Some(INIT.to_string()),
        kernel_params: params.iter().map(|s| s.to_string()).collect(),
        out_dir: dir.join("netboot"),
    }
}

#[test]
fn directory_script_and_kexec_tree() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(
        dir.path(),
        &["console=ttyS0,115200", "boot.shell_on_fail", "loglevel=4"],
    );
    let report = make_netboot_dir(&o).unwrap();
    let out = &o.out_dir;
    let cmdline = format!("init={INIT} console=ttyS0,115200 boot.shell_on_fail loglevel=4");
    assert_eq!(report.cmdline, cmdline);

    let ipxe = std::fs::read_to_string(out.join("netboot.ipxe")).unwrap();
    let lines: Vec<&str> = ipxe.lines().filter(|l| !l.starts_with("# ")).collect();
    assert_eq!(
        lines,
        [
            "#!ipxe",
            &format!("kernel bzImage init={INIT} initrd=initrd console=ttyS0,115200 boot.shell_on_fail loglevel=4 ${{cmdline}}"),
            "initrd initrd",
            "boot",
        ]
    );

    let kernel_bytes = std::fs::read(&o.kernel).unwrap();
    assert_eq!(std::fs::read(out.join("bzImage")).unwrap(), kernel_bytes);
    assert_eq!(
        std::fs::read(out.join("kexec-tree/bzImage")).unwrap(),
        kernel_bytes
    );
    let initrd = std::fs::read(out.join("initrd")).unwrap();
    assert_eq!(
        std::fs::read(out.join("kexec-tree/initrd")).unwrap(),
        initrd
    );
    assert_eq!(
        initrd.len() as u64,
        report.initrd.as_ref().unwrap().total_len
    );
    let mode = std::fs::metadata(out.join("kexec-tree/kexec-boot"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // Run kexec-boot from another directory with a recording kexec in PATH.
    let bin = dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.path().join("kexec.log");
    std::fs::write(
        bin.join("kexec"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> {}\necho --- >> {}\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("kexec"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for tool in ["dirname", "readlink"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.join(tool)).unwrap();
    }
    // Started through a symlink in another directory, from a third working directory.
    let link = dir.path().join("kexec-boot-link");
    std::os::unix::fs::symlink(out.join("kexec-tree/kexec-boot"), &link).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let status = Command::new("/bin/sh")
        .arg("../kexec-boot-link")
        .arg("netboot.kexec=1")
        .current_dir(&elsewhere)
        .env_clear()
        .env("PATH", &bin)
        .status()
        .unwrap();
    assert!(status.success());
    let tree = std::fs::canonicalize(out.join("kexec-tree")).unwrap();
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        recorded,
        format!(
            "--load\n{t}/bzImage\n--initrd={t}/initrd\n--command-line={cmdline} netboot.kexec=1\n---\n-e\n---\n",
            t = tree.display()
        )
    );

    // Without kexec it says so and fails.
    std::fs::remove_file(bin.join("kexec")).unwrap();
    let out2 = Command::new("/bin/sh")
        .arg(out.join("kexec-tree/kexec-boot"))
        .env_clear()
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out2.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out2.stderr)
        .contains("kexec not found: please install kexec-tools"));
}

#[test]
fn stage2_init_defaults_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &[]);
    o.stage2_init = None;
    let report = make_netboot_dir(&o).unwrap();
    assert_eq!(
        report.cmdline,
        "init=/nix/store/00000000000000000000000000000000-nixos-system/init"
    );
}

#[test]
fn prebuilt_initrd_is_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["quiet"]);
    let initrd = dir.path().join("my-initrd");
    std::fs::write(&initrd, b"any initrd bytes").unwrap();
    o.initrd = InitrdSource::Prebuilt(initrd);
    make_netboot_dir(&o).unwrap();
    assert_eq!(
        std::fs::read(o.out_dir.join("initrd")).unwrap(),
        b"any initrd bytes"
    );
    assert_eq!(
        std::fs::read(o.out_dir.join("kexec-tree/initrd")).unwrap(),
        b"any initrd bytes"
    );
}

fn expect_error(o: &NetbootDirOptions, needle: &str) {
    let err = format!("{:#}", make_netboot_dir(o).unwrap_err());
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(
        !o.out_dir.exists(),
        "{needle}: the output directory was created"
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &[]);
    o.kernel = dir.path().join("no-bzImage");
    expect_error(&o, "no-bzImage");
    // A file that is not a kernel boot image (the store image).
    o.kernel = dir.path().join("in/store.squashfs");
    expect_error(&o, "not an x86 kernel boot image");

    for (param, needle) in [
        ("x=${net0/mac}", "'$'"),
        ("#comment", "comment"),
        ("a b", "whitespace"),
        ("&&", "separator"),
        ("init=/other", "init="),
    ] {
        let mut o = options(dir.path(), &["console=ttyS0", param]);
        o.out_dir = dir.path().join("netboot-bad");
        expect_error(&o, needle);
    }
    let mut o = options(dir.path(), &[]);
    o.stage2_init = Some("/nix/store/x-system/init$x".into());
    expect_error(&o, "'$'");
    // A bad build input is caught before the directory exists as well.
    let mut o = options(dir.path(), &[]);
    if let InitrdSource::Build(b) = &mut o.initrd {
        b.init = dir.path().join("no-init");
    }
    expect_error(&o, "no-init");
}

#[test]
fn cli_netboot_dir() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(dir.path(), &[]);
    let InitrdSource::Build(b) = &o.initrd else {
        unreachable!()
    };
    let mut args = words(&["netboot-dir", "--kernel"]);
    args.push(o.kernel.clone().into());
    args.extend(build_args(b));
    args.extend(words(&[
        "--stage2-init",
        INIT,
        "--param",
        "console=ttyS0",
        "--param=panic=30",
        "-o",
    ]));
    args.push(o.out_dir.clone().into());
    cli_ok(&cli(&args, &[]));
    let ipxe = std::fs::read_to_string(o.out_dir.join("netboot.ipxe")).unwrap();
    assert!(ipxe.contains(&format!(
        "kernel bzImage init={INIT} initrd=initrd console=ttyS0 panic=30 ${{cmdline}}\n"
    )));

    let mut args = words(&[
        "netboot-dir",
        "--initrd",
        "/dev/null",
        "--param",
        "a$b",
        "--stage2-init",
        INIT,
        "--kernel",
    ]);
    args.push(o.kernel.clone().into());
    args.push("-o".into());
    args.push(dir.path().join("bad").into());
    cli_err(&cli(&args, &[]), "iPXE expands");
    assert!(!dir.path().join("bad").exists());
}
