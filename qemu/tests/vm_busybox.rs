//! The VM runner on its own, with a busybox shell as init: the console log is captured, typed
//! input reaches the guest, power-off ends QEMU, and the timeout stops a VM that never ends.

use netboot_qemu::images::Kernel;
use netboot_qemu::vm::{self, Step, VmSpec};
use std::path::Path;
use std::time::Duration;

fn ws() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn busybox_initrd(dir: &Path, script: &str) -> std::path::PathBuf {
    let mut a = initrd_layout::cpio::Archive::new();
    a.add_file("bin/busybox", 0o755, Path::new("/bin/busybox"))
        .unwrap();
    a.add_symlink("bin/sh", "busybox").unwrap();
    a.add_dir("proc", 0o755).unwrap();
    a.add_char_dev("dev/console", 0o600, 5, 1).unwrap();
    a.add_bytes("init", 0o755, script.as_bytes().to_vec())
        .unwrap();
    let out = dir.join("initrd");
    std::fs::write(&out, a.to_bytes(0).unwrap()).unwrap();
    out
}

#[test]
fn busybox_init_answers_on_the_serial_console() {
    let kernel = Kernel::load(ws(), "6.12").expect("kernels missing: run `cargo xtask setup`");
    let dir = tempfile::tempdir().unwrap();
    let initrd = busybox_initrd(
        dir.path(),
        "#!/bin/sh\necho busybox-init-ready\nexec /bin/sh -i\n",
    );
    let mut spec = VmSpec::direct(
        kernel.image(),
        initrd,
        "console=ttyS0 panic=1".into(),
        dir.path().join("console.log"),
    );
    spec.timeout = Duration::from_secs(120);
    spec.memory_mb = 256;
    let mut sent = false;
    let out = vm::run(&spec, |text, console| {
        if !sent && text.contains("busybox-init-ready") {
            std::thread::sleep(Duration::from_millis(500));
            console
                .send("echo typed-$((40+2)); /bin/busybox poweroff -f\n")
                .unwrap();
            sent = true;
        }
        Step::Continue
    })
    .unwrap();
    assert!(sent, "no ready line; console:\n{}", out.console);
    assert!(
        out.console.contains("typed-42"),
        "console:\n{}",
        out.console
    );
    assert!(out.exited && !out.timed_out, "{out:?}");
}

#[test]
fn timeout_stops_a_vm_that_never_ends() {
    let kernel = Kernel::load(ws(), "6.12").expect("kernels missing: run `cargo xtask setup`");
    let dir = tempfile::tempdir().unwrap();
    let initrd = busybox_initrd(
        dir.path(),
        "#!/bin/sh\nwhile :; do /bin/busybox sleep 1; done\n",
    );
    let mut spec = VmSpec::direct(
        kernel.image(),
        initrd,
        "console=ttyS0".into(),
        dir.path().join("console.log"),
    );
    spec.timeout = Duration::from_secs(8);
    spec.memory_mb = 256;
    let out = vm::run(&spec, |_, _| Step::Continue).unwrap();
    assert!(out.timed_out && !out.exited, "{out:?}");
    assert!(out.elapsed < Duration::from_secs(20));
    assert!(out.console.contains("Linux version"));
}
