//! The kernel itself as the reference reader: boot the real kernels in QEMU (TCG) with an
//! initrd from `initrd-layout build` whose /init is a busybox script that checks what the
//! kernel unpacked, loads the shipped modules and loop-mounts the store image.

mod common;

use common::*;
use initrd_layout::build::{build, BuildOptions};
use initrd_layout::Compression;
use std::process::Command;

/// Runs QEMU (TCG) with `args` and returns the `CHECK ...` lines the guest printed, plus the
/// whole console for failure messages.
fn qemu_checks(args: &[String]) -> (Vec<String>, String) {
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
        ])
        .args(args)
        .output()
        .expect("qemu-system-x86_64");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let checks = console
        .lines()
        .filter_map(|l| l.find("CHECK ").map(|i| l[i + 6..].trim_end().to_string()))
        .collect();
    (checks, console)
}

fn boot_and_check(series: &str, compression: Compression) {
    let dir = tempfile::tempdir().unwrap();
    let (tree, kernel_image) = kernel(series);
    let img = store_image(dir.path());
    let md5 = String::from_utf8(run(Command::new("md5sum").arg(&img))).unwrap();
    let md5 = md5.split_whitespace().next().unwrap().to_string();

    // Plan once to learn the module load order, then write the script that loads them.
    let init = dir.path().join("init.sh");
    std::fs::write(&init, "#!/bin/sh\n").unwrap();
    let mut opts = BuildOptions::new(
        &init,
        &config(dir.path(), &[]),
        &tree,
        &img,
        &dir.path().join("initrd"),
    );
    opts.shell = Some("/bin/busybox".into());
    opts.compression = compression;
    let plan = initrd_layout::build::plan(&opts).unwrap();
    let mdir = format!("/lib/modules/{}", plan.kernel_release);
    let dep = std::fs::read_to_string(tree.join("modules.dep")).unwrap();
    let mut insmods = String::new();
    for m in &plan.modules {
        let path = dep
            .lines()
            .filter_map(|l| l.split_once(':').map(|(p, _)| p))
            .find(|p| {
                let base = p.rsplit('/').next().unwrap();
                base.split(".ko").next().unwrap().replace('-', "_") == *m
            })
            .unwrap();
        let path = path.trim_end_matches(".xz");
        insmods.push_str(&format!(
            "/bin/busybox insmod {mdir}/{path} && echo \"CHECK insmod {m} ok\"\n"
        ));
    }
    std::fs::write(
        &init,
        format!(
            "#!/bin/sh\n\
             bb=/bin/busybox\n\
             $bb mount -t proc proc /proc\n\
             $bb mount -t devtmpfs dev /dev\n\
             echo \"CHECK md5 $($bb md5sum /nix-store.squashfs)\"\n\
             echo \"CHECK init $($bb stat -c %a /init)\"\n\
             {insmods}\
             $bb mkdir -p /mnt && $bb mount -t squashfs -o loop,ro /nix-store.squashfs /mnt && \
             echo \"CHECK store $($bb cat /mnt/abc-hello/bin/hello | $bb tail -n 1)\"\n\
             echo CHECK done\n\
             $bb poweroff -f\n"
        ),
    )
    .unwrap();
    let report = build(&opts).unwrap();
    assert!(report.store_archive_offset.is_some());

    let (checks, console) = qemu_checks(&[
        "-kernel".into(),
        kernel_image.display().to_string(),
        "-initrd".into(),
        report.output.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1 loglevel=4".into(),
    ]);
    let expect_insmods: Vec<String> = plan
        .modules
        .iter()
        .map(|m| format!("insmod {m} ok"))
        .collect();
    let mut expected = vec![
        format!("md5 {md5}  /nix-store.squashfs"),
        "init 755".to_string(),
    ];
    expected.extend(expect_insmods);
    expected.push("store echo hello".into());
    expected.push("done".into());
    assert_eq!(checks, expected, "console:\n{console}");
}

#[test]
fn kernel_6_12_unpacks_zstd_part_and_store_archive() {
    boot_and_check("6.12", Compression::default());
}

#[test]
fn kernel_6_1_unpacks_xz_part_and_store_archive() {
    boot_and_check("6.1", Compression::Xz { level: 6 });
}

/// QEMU's own iPXE ROM fetches the generated `netboot.ipxe` over QEMU's built-in TFTP server,
/// loads bzImage and initrd as the script says, and the kernel gets exactly the command line
/// the script was made from.
#[test]
fn ipxe_runs_the_generated_script() {
    use initrd_layout::netboot_dir::{make_netboot_dir, InitrdSource, NetbootDirOptions};
    let dir = tempfile::tempdir().unwrap();
    let (tree, kernel_image) = kernel("6.12");
    let img = store_image(dir.path());
    let init = dir.path().join("init.sh");
    std::fs::write(
        &init,
        "#!/bin/sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo \"CHECK cmdline $(/bin/busybox cat /proc/cmdline)\"\n\
         echo \"CHECK store $(/bin/busybox stat -c %s /nix-store.squashfs)\"\n\
         /bin/busybox poweroff -f\n",
    )
    .unwrap();
    let mut build = BuildOptions::new(
        &init,
        &config(dir.path(), &[]),
        &tree,
        &img,
        &dir.path().join("unused"),
    );
    build.shell = Some("/bin/busybox".into());
    let o = NetbootDirOptions {
        kernel: kernel_image,
        initrd: InitrdSource::Build(Box::new(build)),
        stage2_init: Some("/nix/store/22222222222222222222222222222222-nixos-system/init".into()),
        kernel_params: vec![
            "console=ttyS0".into(),
            "panic=-1".into(),
            "boot.trace".into(),
        ],
        out_dir: dir.path().join("netboot"),
    };
    let report = make_netboot_dir(&o).unwrap();
    let (checks, console) = qemu_checks(&[
        "-boot".into(),
        "n".into(),
        "-netdev".into(),
        format!(
            "user,id=n0,tftp={},bootfile=netboot.ipxe",
            o.out_dir.display()
        ),
        "-device".into(),
        "e1000,netdev=n0".into(),
    ]);
    // iPXE joins the words with single spaces, puts initrd= where the script has it, and
    // expands the unset ${cmdline} to nothing.
    let (init_word, rest) = report.cmdline.split_once(' ').unwrap();
    let size = std::fs::metadata(&img).unwrap().len();
    assert_eq!(
        checks,
        [
            format!("cmdline {init_word} initrd=initrd {rest}"),
            format!("store {size}")
        ],
        "console:\n{console}"
    );
}
