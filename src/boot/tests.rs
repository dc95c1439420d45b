//! The whole boot sequence on the recording fake: the calls in order, and each failure point
//! driving the failure policy.

use super::*;
use crate::sys::Fake;
use nix::errno::Errno;
use std::os::unix::fs::PermissionsExt;

const RELEASE: &str = "6.1.0-test";
const INIT: &str = "/nix/store/aaaa-nixos-system/init";

/// An initramfs in a temp dir: cmdline, config, a modules tree, the store image, and a
/// target root already holding what the (fake) mounts would show.
struct Initrd {
    dir: tempfile::TempDir,
}

impl Initrd {
    fn new(cmdline: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Initrd {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let write = |rel: &str, contents: &[u8]| {
            let path = r.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        };
        write("proc/cmdline", format!("{cmdline}\n").as_bytes());
        let example = include_str!("../../initrd-layout/examples/netboot.json");
        let mut config: serde_json::Value = serde_json::from_str(example).unwrap();
        config["targetRoot"] = r.join("mnt-root").display().to_string().into();
        config["registration"]["mode"] = "none".into();
        edit(&mut config);
        write(
            "etc/netboot-init.json",
            serde_json::to_string_pretty(&config).unwrap().as_bytes(),
        );
        let modules = format!("lib/modules/{RELEASE}");
        write(
            &format!("{modules}/modules.dep"),
            b"kernel/fs/squashfs/squashfs.ko:\nkernel/fs/overlayfs/overlay.ko:\nkernel/drivers/block/loop.ko:\n",
        );
        write(
            &format!("{modules}/modules.alias"),
            b"alias fs-squashfs squashfs\n",
        );
        write(
            &format!("{modules}/modules.builtin"),
            b"kernel/fs/ext4/ext4.ko\n",
        );
        write(&format!("{modules}/modules.softdep"), b"");
        for ko in [
            "fs/squashfs/squashfs.ko",
            "fs/overlayfs/overlay.ko",
            "drivers/block/loop.ko",
        ] {
            write(&format!("{modules}/kernel/{ko}"), b"\x7fELF fake module");
        }
        let mut image = crate::mounts::squashfs::synthetic(6, 4096).to_vec();
        image.resize(4096, 0);
        write("nix-store.squashfs", &image);
        let init = r.join("mnt-root").join(INIT.trim_start_matches('/'));
        write(
            init.strip_prefix(r).unwrap().to_str().unwrap(),
            b"#!probe\n",
        );
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
        Initrd { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn boot(&self, fake: &Fake) -> Outcome {
        fake.set_release(RELEASE);
        run(fake, &Paths::under(self.root()), &["probe-arg".to_string()])
    }

    /// The calls with the temp dir written as `$R`.
    fn calls(&self, fake: &Fake) -> Vec<String> {
        let r = self.root().display().to_string();
        fake.calls().iter().map(|c| c.replace(&r, "$R")).collect()
    }
}

fn default_cmdline() -> String {
    format!("console=ttyS0 init={INIT} loglevel=4")
}

#[test]
fn the_whole_sequence_in_order() {
    let initrd = Initrd::new(&default_cmdline(), |_| {});
    let fake = Fake::new();
    let outcome = initrd.boot(&fake);
    assert_eq!(outcome, Outcome::HandedOff { init: INIT.into() });
    let mut calls = initrd.calls(&fake);
    // Independent modules load in parallel, in any order.
    calls[12..15].sort();
    let exec = format!("exec {INIT} argv=[\"{INIT}\", \"probe-arg\"] env=[]");
    let expected = [
        "mkdir $R/proc 755",
        "mount proc $R/proc proc flags=0xe data=",
        "mkdir $R/sys 755",
        "mount sysfs $R/sys sysfs flags=0xe data=",
        "mkdir $R/dev 755",
        "mount devtmpfs $R/dev devtmpfs flags=0x2 data=mode=0755",
        "mkdir $R/dev/pts 755",
        "mount devpts $R/dev/pts devpts flags=0xa data=gid=3,mode=0620,ptmxmode=0666",
        "mkdir $R/dev/shm 755",
        "mount tmpfs $R/dev/shm tmpfs flags=0x6 data=mode=1777",
        "mkdir $R/run 755",
        "mount tmpfs $R/run tmpfs flags=0x6 data=mode=0755",
        "finit_module loop.ko flags=none params=",
        "finit_module overlay.ko flags=none params=",
        "finit_module squashfs.ko flags=none params=",
        "mkdir $R/mnt-root",
        "mount tmpfs $R/mnt-root tmpfs flags=0 data=mode=0755",
        "mkdir $R/mnt-root/nix/.ro-store",
        "loop-get-free",
        "loop-open /dev/loop0",
        "loop-configure /dev/loop0 $R/nix-store.squashfs ro,autoclear",
        "mount /dev/loop0 $R/mnt-root/nix/.ro-store squashfs flags=MS_RDONLY data=threads=multi",
        "mkdir $R/mnt-root/nix/.rw-store",
        "mount tmpfs $R/mnt-root/nix/.rw-store tmpfs flags=0 data=mode=0755",
        "mkdir $R/mnt-root/nix/store",
        "mkdir $R/mnt-root/nix/.rw-store/store",
        "mkdir $R/mnt-root/nix/.rw-store/work",
        "mount overlay $R/mnt-root/nix/store overlay flags=0 data=lowerdir=$R/mnt-root/nix/.ro-store,upperdir=$R/mnt-root/nix/.rw-store/store,workdir=$R/mnt-root/nix/.rw-store/work",
        "mkdir -p $R/mnt-root/etc",
        "write $R/mnt-root/etc/NIXOS (0 bytes)",
        "mkdir $R/mnt-root/proc",
        "move-mount $R/proc $R/mnt-root/proc",
        "mkdir $R/mnt-root/sys",
        "move-mount $R/sys $R/mnt-root/sys",
        "mkdir $R/mnt-root/dev",
        "move-mount $R/dev $R/mnt-root/dev",
        "mkdir $R/mnt-root/run",
        "move-mount $R/run $R/mnt-root/run",
        "chdir $R/mnt-root",
        "remove-initramfs $R keep $R/mnt-root",
        "move-mount . / && chroot .",
        "chdir /",
        "close-range 3",
        exec.as_str(),
    ];
    assert_eq!(calls, expected);
    // The timeline landed under /run before the hand-off moved it.
    let timeline =
        std::fs::read_to_string(initrd.root().join("run/netboot-init/timeline.json")).unwrap();
    let timeline: crate::timeline::Timeline = serde_json::from_str(&timeline).unwrap();
    let names: Vec<&str> = timeline.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "frame",
            "config",
            "modules",
            "mounts",
            "stage2-check",
            "registration"
        ]
    );
    assert_eq!(timeline.kernel_release, RELEASE);
    assert_eq!(timeline.stage2_init.as_deref(), Some(INIT));
}

#[test]
fn init_from_the_config_when_the_cmdline_has_none() {
    let initrd = Initrd::new("console=ttyS0", |c| c["init"] = INIT.into());
    let fake = Fake::new();
    assert_eq!(initrd.boot(&fake), Outcome::HandedOff { init: INIT.into() });
}

/// What the timeline the failed boot left says about the failed phase, `$R` for the temp dir.
fn failed_summary(initrd: &Initrd) -> String {
    let text =
        std::fs::read_to_string(initrd.root().join("run/netboot-init/timeline.json")).unwrap();
    let timeline: crate::timeline::Timeline = serde_json::from_str(&text).unwrap();
    let failed = timeline.phases.iter().find(|p| !p.ok).unwrap();
    failed
        .summary
        .replace(&initrd.root().display().to_string(), "$R")
}

fn reboot_after(secs: u32) -> Action {
    Action::Reboot { after_secs: secs }
}

/// Each failure point, with the phase it is reported under and the policy's action.
#[test]
fn each_failure_point_drives_the_policy() {
    // (failing call prefix, errno, phase, kernel command line extra, config edit, action,
    // the failed phase's message with `{:#}` as the timeline keeps it; hand-off failures come
    // after the timeline is final)
    type Edit = fn(&mut serde_json::Value);
    let allow_shell: Edit = |c| c["failure"]["emergencyAccess"] = true.into();
    let nothing: Edit = |_| {};
    let table: Vec<(&str, Errno, &str, &str, Edit, Action, &str)> = vec![
        (
            "mount sysfs",
            Errno::ENODEV,
            "frame",
            "",
            nothing,
            reboot_after(10),
            "mounting sysfs on /sys: ENODEV: No such device",
        ),
        (
            "finit_module",
            Errno::ENOEXEC,
            "modules",
            "",
            nothing,
            reboot_after(10),
            "loading module loop from $R/lib/modules/6.1.0-test/kernel/drivers/block/loop.ko: \
             finit_module: ENOEXEC: Exec format error",
        ),
        (
            "mount tmpfs $R/mnt-root ",
            Errno::ENOMEM,
            "mounts",
            "boot.panic_on_fail",
            nothing,
            Action::Panic,
            "fileSystems[0] / (tmpfs): mount tmpfs tmpfs on $R/mnt-root (flags 0, data \"mode=0755\"): \
             ENOMEM: Out of memory",
        ),
        (
            "mount overlay",
            Errno::EINVAL,
            "mounts",
            "stage1panic=1",
            nothing,
            Action::Panic,
            "fileSystems[3] /nix/store (overlay): mount overlay overlay on $R/mnt-root/nix/store \
             (flags 0, data \"lowerdir=$R/mnt-root/nix/.ro-store,upperdir=$R/mnt-root/nix/.rw-store/store,\
             workdir=$R/mnt-root/nix/.rw-store/work\"): EINVAL: Invalid argument",
        ),
        (
            "loop-configure",
            Errno::ENXIO,
            "mounts",
            "boot.shell_on_fail",
            allow_shell,
            Action::Shell {
                shell: "/bin/sh".into(),
            },
            "fileSystems[1] /nix/.ro-store (squashfs): attach $R/nix-store.squashfs to /dev/loop0 \
             with LOOP_CONFIGURE: ENXIO: No such device or address",
        ),
        (
            "move-mount $R/proc",
            Errno::EINVAL,
            "hand-off",
            "",
            nothing,
            reboot_after(10),
            "",
        ),
        (
            "exec",
            Errno::ENOEXEC,
            "hand-off",
            "boot.shell_on_fail",
            nothing,
            reboot_after(10),
            "",
        ),
    ];
    for (prefix, errno, phase, extra, edit, action, message) in table {
        let initrd = Initrd::new(&format!("{} {extra}", default_cmdline()), edit);
        let fake = Fake::new();
        let r = initrd.root().display().to_string();
        fake.fail_on(&prefix.replace("$R", &r), errno);
        let outcome = initrd.boot(&fake);
        assert_eq!(
            outcome,
            Outcome::Failed {
                phase: phase.into(),
                action: action.clone()
            },
            "failing {prefix}: calls {:#?}",
            initrd.calls(&fake)
        );
        let calls = initrd.calls(&fake);
        let last = calls.last().unwrap();
        let terminal = match action {
            Action::Panic => "exit-to-kernel-panic",
            Action::Shell { .. } | Action::Reboot { .. } => "reboot",
        };
        assert_eq!(last, terminal, "failing {prefix}");
        if !message.is_empty() {
            assert_eq!(failed_summary(&initrd), message, "failing {prefix}");
        }
        assert!(!calls
            .iter()
            .any(|c| c.starts_with("exec") && !prefix.starts_with("exec")));
    }
}

#[test]
fn a_bad_config_fails_before_anything_is_mounted() {
    let initrd = Initrd::new(&default_cmdline(), |c| {
        c["fileSystems"][1]
            .as_object_mut()
            .unwrap()
            .remove("fsType");
    });
    let fake = Fake::new();
    let outcome = initrd.boot(&fake);
    assert_eq!(
        outcome,
        Outcome::Failed {
            phase: "config".into(),
            action: reboot_after(10)
        }
    );
    let calls = initrd.calls(&fake);
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("mnt-root") || c.starts_with("finit")),
        "{calls:#?}"
    );
}

#[test]
fn config_failures_name_the_file_once() {
    let initrd = Initrd::new(&default_cmdline(), |c| c["bogusField"] = 1.into());
    let fake = Fake::new();
    initrd.boot(&fake);
    let summary = failed_summary(&initrd);
    assert!(
        summary.starts_with("config $R/etc/netboot-init.json: bogusField: unknown field"),
        "{summary}"
    );
    std::fs::remove_file(initrd.root().join("etc/netboot-init.json")).unwrap();
    let fake = Fake::new();
    initrd.boot(&fake);
    assert_eq!(
        failed_summary(&initrd),
        "config: $R/etc/netboot-init.json: cannot open: No such file or directory (os error 2)"
    );
}

#[test]
fn a_missing_stage2_init_is_caught_before_the_initramfs_is_deleted() {
    let initrd = Initrd::new(
        "init=/nix/store/zzzz-missing/init boot.shell_on_fail",
        |c| {
            c["failure"]["emergencyAccess"] = true.into();
        },
    );
    let fake = Fake::new();
    let outcome = initrd.boot(&fake);
    assert_eq!(
        outcome,
        Outcome::Failed {
            phase: "stage2-check".into(),
            action: Action::Shell {
                shell: "/bin/sh".into()
            }
        }
    );
    assert!(!initrd
        .calls(&fake)
        .iter()
        .any(|c| c.starts_with("remove-initramfs")));
}

#[test]
fn no_stage2_init_at_all_is_a_config_failure() {
    let initrd = Initrd::new("console=ttyS0", |_| {});
    let fake = Fake::new();
    assert_eq!(
        initrd.boot(&fake),
        Outcome::Failed {
            phase: "config".into(),
            action: reboot_after(10)
        }
    );
}

#[test]
fn debug_shells_open_only_when_the_config_allows() {
    let cmdline = format!(
        "{} boot.debug1 boot.debug1devices boot.debug1mounts",
        default_cmdline()
    );
    let initrd = Initrd::new(&cmdline, |_| {});
    let fake = Fake::new();
    initrd.boot(&fake);
    assert!(!initrd
        .calls(&fake)
        .iter()
        .any(|c| c.starts_with("run-shell")));

    let initrd = Initrd::new(&cmdline, |c| c["failure"]["emergencyAccess"] = true.into());
    let fake = Fake::new();
    assert_eq!(initrd.boot(&fake), Outcome::HandedOff { init: INIT.into() });
    let calls = initrd.calls(&fake);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("run-shell /bin/sh"))
            .count(),
        3
    );
}

#[test]
fn a_failed_boot_still_leaves_its_timeline() {
    let initrd = Initrd::new(&default_cmdline(), |_| {});
    let fake = Fake::new();
    fake.fail_on("mount overlay", Errno::EINVAL);
    initrd.boot(&fake);
    let text =
        std::fs::read_to_string(initrd.root().join("run/netboot-init/timeline.json")).unwrap();
    let timeline: crate::timeline::Timeline = serde_json::from_str(&text).unwrap();
    let last = timeline.phases.last().unwrap();
    assert_eq!(last.name, "mounts");
    assert!(!last.ok);
    assert!(last.summary.contains("EINVAL"), "{}", last.summary);
    assert_eq!(timeline.handoff_us, None);
}

#[test]
fn a_stray_byte_on_the_kernel_command_line_does_not_stop_the_boot() {
    let initrd = Initrd::new(&default_cmdline(), |_| {});
    let mut cmdline = b"console=ttyS0 vendor.name=caf\xe9 ".to_vec();
    cmdline.extend_from_slice(default_cmdline().as_bytes());
    std::fs::write(initrd.root().join("proc/cmdline"), cmdline).unwrap();
    let fake = Fake::new();
    assert_eq!(initrd.boot(&fake), Outcome::HandedOff { init: INIT.into() });
}

#[test]
fn an_oversized_kernel_command_line_is_a_clear_config_failure() {
    let initrd = Initrd::new(&default_cmdline(), |_| {});
    let huge = "x ".repeat(crate::cmdline::MAX_CMDLINE_BYTES);
    std::fs::write(initrd.root().join("proc/cmdline"), huge).unwrap();
    let fake = Fake::new();
    assert_eq!(
        initrd.boot(&fake),
        Outcome::Failed {
            phase: "config".into(),
            action: reboot_after(10)
        }
    );
    assert_eq!(
        failed_summary(&initrd),
        format!(
            "reading the kernel command line $R/proc/cmdline: larger than the limit of {} bytes",
            crate::cmdline::MAX_CMDLINE_BYTES
        )
    );
}

#[test]
fn the_kmsg_rate_limit_is_lifted_for_stage_1_only() {
    let initrd = Initrd::new(&default_cmdline(), |_| {});
    let knob = initrd.root().join("proc/sys/kernel/printk_devkmsg");
    std::fs::create_dir_all(knob.parent().unwrap()).unwrap();
    std::fs::write(&knob, "ratelimit\n").unwrap();
    let fake = Fake::new();
    assert_eq!(initrd.boot(&fake), Outcome::HandedOff { init: INIT.into() });
    let calls = initrd.calls(&fake);
    let position = |call: &str| calls.iter().position(|c| c == call);
    let lifted = position("write $R/proc/sys/kernel/printk_devkmsg on\n").unwrap();
    let restored = position("write $R/proc/sys/kernel/printk_devkmsg ratelimit\n").unwrap();
    let first_module = calls
        .iter()
        .position(|c| c.starts_with("finit_module"))
        .unwrap();
    let hand_off = position("move-mount $R/proc $R/mnt-root/proc").unwrap();
    assert!(lifted < first_module && first_module < restored && restored < hand_off);
}

#[test]
fn an_unknown_kernel_release_fails_the_modules_phase_by_name() {
    let initrd = Initrd::new(&default_cmdline(), |_| {});
    let fake = Fake::new();
    let outcome = run(&fake, &Paths::under(initrd.root()), &[]);
    assert_eq!(
        outcome,
        Outcome::Failed {
            phase: "modules".into(),
            action: reboot_after(10)
        }
    );
    let text =
        std::fs::read_to_string(initrd.root().join("run/netboot-init/timeline.json")).unwrap();
    assert!(text.contains("uname gave no kernel release"), "{text}");
}
