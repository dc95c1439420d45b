//! The mount phase on the recorder.

use super::*;
use crate::config::Config;
use crate::sys::Fake;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/initrd-layout/examples/netboot.json"
);

/// A temp dir standing for `/` of the initrd, with a squashfs image and a mountinfo file.
struct Env {
    _dir: tempfile::TempDir,
    initrd: PathBuf,
    image: PathBuf,
    mountinfo: PathBuf,
}

fn env_with_image(image: Option<Vec<u8>>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::create_dir_all(&initrd).unwrap();
    let image_path = initrd.join("nix-store.squashfs");
    if let Some(bytes) = image {
        std::fs::write(&image_path, bytes).unwrap();
    }
    let mountinfo = dir.path().join("mountinfo");
    std::fs::write(
        &mountinfo,
        "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n",
    )
    .unwrap();
    Env {
        _dir: dir,
        initrd,
        image: image_path,
        mountinfo,
    }
}

/// An image with a sound superblock (xz) padded to its `bytes_used`.
fn good_image() -> Vec<u8> {
    let mut b = squashfs::synthetic(4, 8192).to_vec();
    b.resize(8192, 0);
    b
}

fn env() -> Env {
    env_with_image(Some(good_image()))
}

fn example() -> Config {
    let text = std::fs::read_to_string(EXAMPLE)
        .unwrap_or_else(|e| panic!("{EXAMPLE}: {e} (the netboot.nix example config)"));
    Config::parse(&text).unwrap()
}

fn run(fake: &Fake, config: &Config, env: &Env) -> anyhow::Result<MountsReport> {
    mount_all(fake, config, &env.initrd, &env.mountinfo)
}

/// The calls with the temp dir replaced by `$INITRD`.
fn calls(fake: &Fake, env: &Env) -> Vec<String> {
    let prefix = env.initrd.to_string_lossy().into_owned();
    fake.calls()
        .into_iter()
        .map(|c| c.replace(&prefix, "$INITRD"))
        .collect()
}

const OVERLAY_LINE: &str = "mount overlay /mnt-root/nix/store overlay flags=0 data=lowerdir=/mnt-root/nix/.ro-store,upperdir=/mnt-root/nix/.rw-store/store,workdir=/mnt-root/nix/.rw-store/work";

#[test]
fn netboot_sequence() {
    let env = env();
    let fake = Fake::new();
    let report = run(&fake, &example(), &env).unwrap();
    assert_eq!(
        calls(&fake, &env),
        vec![
            "mkdir /mnt-root",
            "mount tmpfs /mnt-root tmpfs flags=0 data=mode=0755",
            "mkdir /mnt-root/nix/.ro-store",
            "loop-get-free",
            "loop-open /dev/loop0",
            "loop-configure /dev/loop0 $INITRD/nix-store.squashfs ro,autoclear",
            "mount /dev/loop0 /mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data=threads=multi",
            "mkdir /mnt-root/nix/.rw-store",
            "mount tmpfs /mnt-root/nix/.rw-store tmpfs flags=0 data=mode=0755",
            "mkdir /mnt-root/nix/store",
            "mkdir /mnt-root/nix/.rw-store/store",
            "mkdir /mnt-root/nix/.rw-store/work",
            OVERLAY_LINE,
        ]
    );
    assert_eq!(
        report.to_string(),
        "4 of 4 file systems mounted: / tmpfs; /nix/.ro-store squashfs on /dev/loop0; /nix/.rw-store tmpfs; /nix/store overlay"
    );
}

#[test]
fn threads_multi_refused_is_retried_without() {
    let env = env();
    let fake = Fake::new();
    fake.fail_on(
        "mount /dev/loop0 /mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data=threads=multi",
        Errno::EINVAL,
    );
    let report = run(&fake, &example(), &env).unwrap();
    assert_eq!(
        fake.calls_starting_with("mount /dev/loop0"),
        vec![
            "mount /dev/loop0 /mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data=threads=multi",
            "mount /dev/loop0 /mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data=",
        ]
    );
    assert_eq!(report.entries[1].state, MountState::Mounted);
    assert_eq!(
        report.entries[1].notes,
        vec!["threads=multi refused, mounted without"]
    );
    assert!(report.to_string().contains(
        "/nix/.ro-store squashfs on /dev/loop0 (threads=multi refused, mounted without)"
    ));
    // The rest of the sequence goes on.
    assert_eq!(fake.calls().last().map(String::as_str), Some(OVERLAY_LINE));
}

#[test]
fn other_errnos_are_not_retried() {
    let env = env();
    let fake = Fake::new();
    fake.fail_on("mount /dev/loop0", Errno::EIO);
    let err = format!("{:#}", run(&fake, &example(), &env).unwrap_err());
    assert_eq!(fake.calls_starting_with("mount /dev/loop0").len(), 1);
    assert!(err.contains("EIO"), "{err}");
}

#[test]
fn einval_with_a_sound_superblock_names_the_compressor() {
    let env = env();
    let fake = Fake::new();
    fake.fail_on("mount /dev/loop0", Errno::EINVAL);
    let err = format!("{:#}", run(&fake, &example(), &env).unwrap_err());
    assert!(
        err.starts_with("fileSystems[1] /nix/.ro-store (squashfs): mount squashfs /dev/loop0 on /mnt-root/nix/.ro-store (flags MS_RDONLY, data \"\"): EINVAL"),
        "{err}"
    );
    assert!(
        err.contains("the kernel may lack the xz decompressor (CONFIG_SQUASHFS_XZ)"),
        "{err}"
    );
    // Tried twice (with and without threads=multi), then stopped.
    assert_eq!(fake.calls_starting_with("mount /dev/loop0").len(), 2);
    assert!(fake
        .calls_starting_with("mount tmpfs /mnt-root/nix/.rw-store")
        .is_empty());
}

#[test]
fn mounts_already_in_place_are_left_alone() {
    let env = env();
    std::fs::write(
        &env.mountinfo,
        "22 1 0:21 / /proc rw - proc proc rw\n\
         40 1 0:40 / /mnt-root rw,relatime - tmpfs tmpfs rw,mode=755\n\
         41 40 7:3 / /mnt-root/nix/.ro-store ro,relatime - squashfs /dev/loop3 ro\n",
    )
    .unwrap();
    let fake = Fake::new();
    let report = run(&fake, &example(), &env).unwrap();
    assert!(fake.calls_starting_with("loop-").is_empty());
    assert!(fake
        .calls_starting_with("mount tmpfs /mnt-root ")
        .is_empty());
    assert!(fake.calls_starting_with("mount /dev/loop").is_empty());
    assert_eq!(
        report.entries[1].state,
        MountState::AlreadyMounted {
            fs_type: "squashfs".into(),
            source: "/dev/loop3".into()
        }
    );
    assert_eq!(
        calls(&fake, &env),
        vec![
            "mkdir /mnt-root/nix/.rw-store",
            "mount tmpfs /mnt-root/nix/.rw-store tmpfs flags=0 data=mode=0755",
            "mkdir /mnt-root/nix/store",
            "mkdir /mnt-root/nix/.rw-store/store",
            "mkdir /mnt-root/nix/.rw-store/work",
            OVERLAY_LINE,
        ]
    );
    assert!(report.to_string().starts_with(
        "2 of 4 file systems mounted: / tmpfs (already mounted); /nix/.ro-store squashfs (already mounted);"
    ));
}

#[test]
fn escaped_mount_points_in_mountinfo_match() {
    let env = env();
    std::fs::write(
        &env.mountinfo,
        "40 1 0:40 / /mnt\\040root rw - tmpfs tmpfs rw\n",
    )
    .unwrap();
    let mut config = example();
    config.target_root = "/mnt root".into();
    config.file_systems.truncate(1);
    let fake = Fake::new();
    let report = run(&fake, &config, &env).unwrap();
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert!(matches!(
        report.entries[0].state,
        MountState::AlreadyMounted { .. }
    ));
}

#[test]
fn loop_device_taken_meanwhile_means_the_next_one() {
    let env = env();
    let fake = Fake::new();
    fake.fail_on("loop-configure /dev/loop0", Errno::EBUSY);
    let report = run(&fake, &example(), &env).unwrap();
    assert_eq!(
        calls(&fake, &env)[3..9].to_vec(),
        vec![
            "loop-get-free",
            "loop-open /dev/loop0",
            "loop-configure /dev/loop0 $INITRD/nix-store.squashfs ro,autoclear",
            "loop-get-free",
            "loop-open /dev/loop1",
            "loop-configure /dev/loop1 $INITRD/nix-store.squashfs ro,autoclear",
        ]
    );
    assert_eq!(report.entries[1].loop_device.as_deref(), Some("/dev/loop1"));
    assert_eq!(fake.calls_starting_with("mount /dev/loop1").len(), 1);
}

#[test]
fn loop_devices_always_taken_is_an_error() {
    let env = env();
    let fake = Fake::new();
    fake.fail_on("loop-configure", Errno::EBUSY);
    let err = format!("{:#}", run(&fake, &example(), &env).unwrap_err());
    assert!(
        err.ends_with(
            "nix-store.squashfs: every free loop device was taken by another process (8 attempts)"
        ),
        "{err}"
    );
    assert_eq!(
        fake.calls_starting_with("loop-get-free").len(),
        MAX_LOOP_ATTEMPTS as usize
    );
}

#[test]
fn kernels_without_loop_configure_use_set_fd() {
    for errno in [Errno::ENOTTY, Errno::EINVAL] {
        let env = env();
        let fake = Fake::new();
        fake.fail_on("loop-configure", errno);
        run(&fake, &example(), &env).unwrap();
        assert_eq!(
            calls(&fake, &env)[3..9].to_vec(),
            vec![
                "loop-get-free",
                "loop-open /dev/loop0",
                "loop-configure /dev/loop0 $INITRD/nix-store.squashfs ro,autoclear",
                "loop-set-fd /dev/loop0 $INITRD/nix-store.squashfs",
                "loop-set-status /dev/loop0 autoclear",
                "mount /dev/loop0 /mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data=threads=multi",
            ],
            "{errno}"
        );
    }
}

#[test]
fn set_fd_race_and_failures() {
    // Taken between LOOP_CTL_GET_FREE and LOOP_SET_FD.
    let env = env();
    let fake = Fake::new();
    fake.fail_on("loop-configure", Errno::ENOTTY);
    fake.fail_on("loop-set-fd /dev/loop0", Errno::EBUSY);
    let report = run(&fake, &example(), &env).unwrap();
    assert_eq!(report.entries[1].loop_device.as_deref(), Some("/dev/loop1"));

    // LOOP_SET_STATUS64 refused: the device is detached again.
    let fake = Fake::new();
    fake.fail_on("loop-configure", Errno::ENOTTY);
    fake.fail_on("loop-set-status", Errno::EPERM);
    let err = format!("{:#}", run(&fake, &example(), &env).unwrap_err());
    assert!(
        err.ends_with("nix-store.squashfs to /dev/loop0 with LOOP_SET_STATUS64: EPERM: Operation not permitted"),
        "{err}"
    );
    assert_eq!(
        fake.calls().last().map(String::as_str),
        Some("loop-clear /dev/loop0")
    );
}

#[test]
fn direct_io_on_request() {
    let env = env();
    let mut config = example();
    config.file_systems[1]
        .options
        .push(options::LOOP_DIRECT_IO_OPTION.into());
    let fake = Fake::new();
    run(&fake, &config, &env).unwrap();
    assert_eq!(
        calls(&fake, &env)[5..7].to_vec(),
        vec![
            "loop-configure /dev/loop0 $INITRD/nix-store.squashfs ro,autoclear,direct-io",
            "loop-get-flags /dev/loop0",
        ]
    );
    // And through the older ioctls.
    let fake = Fake::new();
    fake.fail_on("loop-configure", Errno::ENOTTY);
    run(&fake, &config, &env).unwrap();
    assert!(calls(&fake, &env).contains(&"loop-set-direct-io /dev/loop0 on".to_string()));
    // Without the option: no direct I/O (the default).
    let fake = Fake::new();
    let mut config = example();
    config.file_systems[1]
        .options
        .push(format!("{}=off", options::LOOP_DIRECT_IO_OPTION));
    run(&fake, &config, &env).unwrap();
    assert!(fake.calls_starting_with("loop-get-flags").is_empty());
}

fn error_for(image: Option<Vec<u8>>) -> String {
    let env = env_with_image(image);
    let fake = Fake::new();
    let err = format!("{:#}", run(&fake, &example(), &env).unwrap_err());
    // Nothing is attached for a bad image.
    assert!(fake.calls_starting_with("loop-").is_empty(), "{err}");
    err.replace(&env.image.to_string_lossy().into_owned(), "$IMAGE")
}

#[test]
fn image_errors() {
    let mut wrong_magic = good_image();
    wrong_magic[..4].copy_from_slice(b"\x7fELF");
    let mut unknown = squashfs::synthetic(9, 8192).to_vec();
    unknown.resize(8192, 0);
    let cases: Vec<(Option<Vec<u8>>, &str)> = vec![
        (None, "squashfs image $IMAGE is missing"),
        (
            Some(good_image()[..4096].to_vec()),
            "squashfs image $IMAGE is truncated: its superblock says 8192 bytes, the file has 4096",
        ),
        (
            Some(wrong_magic),
            "squashfs image $IMAGE: not a squashfs image (magic 0x464c457f, expected 0x73717368 \"hsqs\")",
        ),
        (
            Some(unknown),
            "squashfs image $IMAGE: unknown squashfs compressor id 9 (known: 1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd)",
        ),
    ];
    for (image, want) in cases {
        let err = error_for(image);
        assert_eq!(
            err,
            format!("fileSystems[1] /nix/.ro-store (squashfs): {want}")
        );
    }
}

#[test]
fn syscall_errors_name_the_step() {
    let cases: &[(&str, Errno, &str)] = &[
        (
            "loop-get-free",
            Errno::ENOENT,
            "fileSystems[1] /nix/.ro-store (squashfs): find a free loop device (LOOP_CTL_GET_FREE on /dev/loop-control): ENOENT: No such file or directory (no /dev/loop-control: is the loop driver loaded?)",
        ),
        (
            "loop-open",
            Errno::ENXIO,
            "fileSystems[1] /nix/.ro-store (squashfs): open /dev/loop0: ENXIO: No such device or address",
        ),
        (
            "mkdir /mnt-root/nix/.rw-store/work",
            Errno::EROFS,
            "fileSystems[3] /nix/store (overlay): create directory /mnt-root/nix/.rw-store/work: EROFS: Read-only file system",
        ),
        (
            "mount overlay",
            Errno::ENODEV,
            "fileSystems[3] /nix/store (overlay): mount overlay overlay on /mnt-root/nix/store (flags 0, data \"lowerdir=/mnt-root/nix/.ro-store,upperdir=/mnt-root/nix/.rw-store/store,workdir=/mnt-root/nix/.rw-store/work\"): ENODEV: No such device: the kernel has no overlay file system (module not loaded or not built)",
        ),
        (
            "mount tmpfs /mnt-root ",
            Errno::ENOMEM,
            "fileSystems[0] / (tmpfs): mount tmpfs tmpfs on /mnt-root (flags 0, data \"mode=0755\"): ENOMEM: Out of memory",
        ),
    ];
    for (prefix, errno, want) in cases {
        let env = env();
        let fake = Fake::new();
        fake.fail_on(prefix, *errno);
        let err = format!("{:#}", run(&fake, &example(), &env).unwrap_err());
        assert_eq!(err, *want);
    }
}

#[test]
fn config_errors() {
    let env = env();
    let cases: &[(usize, &str, &str)] = &[
        (
            2,
            "/nix/../etc",
            "fileSystems[2] /nix/../etc (tmpfs): mount point \"/nix/../etc\": contains `..`",
        ),
        (
            2,
            "nix/x",
            "fileSystems[2] nix/x (tmpfs): mount point \"nix/x\": not an absolute path",
        ),
    ];
    for (i, mp, want) in cases {
        let mut config = example();
        config.file_systems[*i].mount_point = mp.to_string();
        let err = format!("{:#}", run(&Fake::new(), &config, &env).unwrap_err());
        assert_eq!(err, *want);
    }
    let mut config = example();
    config.file_systems[0].options.push("shared".into());
    let err = format!("{:#}", run(&Fake::new(), &config, &env).unwrap_err());
    assert_eq!(
        err,
        "fileSystems[0] / (tmpfs): options: `shared`: propagation flags need a separate mount call; not supported here"
    );
    let mut config = example();
    config.file_systems[3].overlay.as_mut().unwrap().workdir = None;
    let err = format!("{:#}", run(&Fake::new(), &config, &env).unwrap_err());
    assert_eq!(
        err,
        "fileSystems[3] /nix/store (overlay): overlay: overlay has an upperdir but no workdir (the kernel needs both)"
    );
}

#[test]
fn nofail_and_noauto() {
    let env = env();
    let mut config = example();
    config.file_systems[2].options.push("nofail".into());
    config.file_systems[3].options.push("noauto".into());
    let fake = Fake::new();
    fake.fail_on("mount tmpfs /mnt-root/nix/.rw-store", Errno::ENOSPC);
    let report = run(&fake, &config, &env).unwrap();
    assert!(matches!(
        &report.entries[2].state,
        MountState::FailedNofail(m) if m.contains("ENOSPC")
    ));
    assert_eq!(report.entries[3].state, MountState::Skipped);
    assert!(fake.calls_starting_with("mount overlay").is_empty());
    assert_eq!(
        report.to_string(),
        "2 of 4 file systems mounted: / tmpfs; /nix/.ro-store squashfs on /dev/loop0; /nix/.rw-store tmpfs (FAILED, nofail); /nix/store overlay (noauto)"
    );
}

#[test]
fn several_lowerdirs_escaped() {
    let env = env();
    let mut config = example();
    let o = config.file_systems[3].overlay.as_mut().unwrap();
    o.lowerdir = vec![
        "/nix/.ro-store".into(),
        "/odd:dir,x".into(),
        "/back\\slash".into(),
    ];
    let fake = Fake::new();
    run(&fake, &config, &env).unwrap();
    assert_eq!(
        fake.calls().last().unwrap(),
        "mount overlay /mnt-root/nix/store overlay flags=0 data=lowerdir=/mnt-root/nix/.ro-store:/mnt-root/odd\\:dir\\,x:/mnt-root/back\\\\slash,upperdir=/mnt-root/nix/.rw-store/store,workdir=/mnt-root/nix/.rw-store/work"
    );
}

#[test]
fn overlay_written_as_options() {
    // The older netboot.nix wrote the layers into `options`.
    let env = env();
    let mut config = example();
    config.file_systems[3].overlay = None;
    config.file_systems[3].options = vec![
        "lowerdir=/nix/.ro-store".into(),
        "upperdir=/nix/.rw-store/store".into(),
        "workdir=/nix/.rw-store/work".into(),
        "redirect_dir=on".into(),
    ];
    let fake = Fake::new();
    run(&fake, &config, &env).unwrap();
    assert_eq!(
        fake.calls().last().unwrap(),
        &format!("{OVERLAY_LINE},redirect_dir=on")
    );
    assert!(fake
        .calls()
        .contains(&"mkdir /mnt-root/nix/.rw-store/work".to_string()));
}

#[test]
fn tmpfs_root_options_and_flags() {
    let env = env();
    let mut config = example();
    config.file_systems[0].options = vec![
        "mode=0755".into(),
        "size=50%".into(),
        "nosuid".into(),
        "nodev".into(),
    ];
    config.file_systems.truncate(1);
    let fake = Fake::new();
    run(&fake, &config, &env).unwrap();
    assert_eq!(
        fake.calls(),
        vec![
            "mkdir /mnt-root",
            "mount tmpfs /mnt-root tmpfs flags=MS_NOSUID|MS_NODEV data=mode=0755,size=50%",
        ]
    );
}

#[test]
fn squashfs_file_without_loop_option_still_gets_a_loop_device() {
    let env = env();
    let mut config = example();
    config.file_systems[1].options = vec![];
    let fake = Fake::new();
    run(&fake, &config, &env).unwrap();
    assert_eq!(fake.calls_starting_with("loop-configure").len(), 1);
    assert_eq!(
        fake.calls_starting_with("mount /dev/loop0"),
        vec!["mount /dev/loop0 /mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data="]
    );
}

#[test]
fn unreadable_mountinfo_is_not_fatal() {
    let env = env();
    std::fs::remove_file(&env.mountinfo).unwrap();
    let fake = Fake::new();
    let report = run(&fake, &example(), &env).unwrap();
    assert_eq!(report.entries.len(), 4);
}

#[test]
fn device_resolution() {
    let root = Path::new("/tmp/initrd");
    for (device, want) in [
        ("../nix-store.squashfs", "/tmp/initrd/nix-store.squashfs"),
        ("nix-store.squashfs", "/tmp/initrd/nix-store.squashfs"),
        ("a/../../../b/./c", "/tmp/initrd/b/c"),
        ("/dev/sda1", "/dev/sda1"),
        ("/nix-store.squashfs", "/nix-store.squashfs"),
    ] {
        assert_eq!(resolve_device(root, device), Path::new(want), "{device}");
    }
    assert_eq!(
        resolve_device(Path::new("/"), "../nix-store.squashfs"),
        Path::new("/nix-store.squashfs")
    );
}

#[test]
fn paths_under_the_root() {
    let r = Path::new("/mnt-root");
    assert_eq!(under_root(r, "/").unwrap(), Path::new("/mnt-root"));
    assert_eq!(
        under_root(r, "//nix/./store/").unwrap(),
        Path::new("/mnt-root/nix/store")
    );
    assert!(under_root(r, "/a/../b").is_err());
    assert!(under_root(r, "rel").is_err());
    assert!(under_root(r, "/a\0b").is_err());
}
