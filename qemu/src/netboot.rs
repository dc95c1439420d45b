//! The netboot-directory scenarios: a real network boot through QEMU's iPXE ROM and TFTP server,
//! and a kexec from a booted stage 2 into the generated kexec tree.

use crate::fixture::Fixture;
use crate::images::{self, ImageSpec, Kernel};
use crate::probe;
use crate::setup::run;
use crate::vm::{self, Boot, Step, VmSpec};
use anyhow::{bail, Context, Result};
use initrd_layout::netboot_dir::{make_netboot_dir, InitrdSource, NetbootDirOptions};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The kernel parameters of a command line, without its `init=` (the netboot dir sets that).
fn params(append: &str) -> Vec<String> {
    append
        .split_whitespace()
        .filter(|w| !w.starts_with("init="))
        .map(str::to_string)
        .collect()
}

pub fn ipxe(fx: &Fixture, kernel: &Kernel, initrd: &Path, append: &str, dir: &Path) -> Result<()> {
    let out = dir.join("netboot");
    let report = make_netboot_dir(&NetbootDirOptions {
        kernel: kernel.image(),
        initrd: InitrdSource::Prebuilt(initrd.to_path_buf()),
        stage2_init: Some(fx.init()),
        kernel_params: params(append),
        out_dir: out.clone(),
    })
    .context("initrd-layout netboot-dir")?;
    let vm = VmSpec {
        boot: Boot::Ipxe {
            dir: out,
            bootfile: "netboot.ipxe".into(),
        },
        log: dir.join("console.log"),
        timeout: Duration::from_secs(300),
        allow_reboot: false,
        memory_mb: 1024,
        extra: Vec::new(),
    };
    let o = vm::run(&vm, |_, _| Step::Continue)?;
    // No -kernel was given: a kernel only runs if iPXE fetched it, and its command line is the
    // one netboot.ipxe passes (with `initrd=initrd` and the expanded, empty `${cmdline}`).
    let (init, rest) = report
        .cmdline
        .split_once(' ')
        .unwrap_or((report.cmdline.as_str(), ""));
    let want = format!("Command line: {init} initrd=initrd {rest} ");
    if !o.console.lines().any(|l| l.ends_with(&want)) {
        bail!("no kernel started with the command line from netboot.ipxe ({want:?})");
    }
    crate::scenarios::judge_probe_console(&o.console)
        .with_context(|| format!("after iPXE loaded netboot.ipxe ({})", report.cmdline))
}

pub fn kexec_reboot(
    ws: &Path,
    fx: &Fixture,
    init: &Path,
    kernel: &Kernel,
    mut spec: ImageSpec,
    dir: &Path,
) -> Result<()> {
    let _ = ws;
    // The kexec tree arrives on a virtio disk (a squashfs), so the first boot loads virtio_blk.
    spec.config["kernelModules"] = json!(["virtio_blk"]);
    let (initrd, modules) = images::build_initrd(fx, &spec, init, dir)?;
    let base = format!(
        "console=ttyS0 panic=1 printk.devkmsg=on probe.modules={} {}",
        modules.join(","),
        crate::scenarios::ENV_LEAK
    );
    let tail = format!("-- {}", crate::scenarios::INIT_ARGS);
    // The second boot's command line (the kexec tree's) carries the marker the probe reports.
    let tree_dir = dir.join("netboot");
    let second: Vec<String> = params(&format!("{base} {} {tail}", probe::VIA_KEXEC_PARAM));
    make_netboot_dir(&NetbootDirOptions {
        kernel: kernel.image(),
        initrd: InitrdSource::Prebuilt(initrd.clone()),
        stage2_init: Some(fx.init()),
        kernel_params: second,
        out_dir: tree_dir.clone(),
    })
    .context("initrd-layout netboot-dir")?;
    let disk = dir.join("kexec-tree.squashfs");
    run(Command::new("mksquashfs")
        .arg(tree_dir.join("kexec-tree"))
        .arg(&disk)
        .args([
            "-noappend",
            "-no-progress",
            "-quiet",
            "-all-root",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "1",
        ]))?;
    let first = format!("{base} init={} probe.kexec=/dev/vda {tail}", fx.init());
    let mut vm = VmSpec::direct(kernel.image(), initrd, first, dir.join("console.log"));
    vm.timeout = Duration::from_secs(400);
    vm.extra = vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio,readonly=on", disk.display()),
    ];
    let o = vm::run(&vm, |_, _| Step::Continue)?;
    let boots = o.console.matches("Linux version").count();
    let passes = o.console.matches(probe::ALL_PASSED).count();
    let lines = crate::scenarios::console_lines(&o.console);
    crate::scenarios::no_failed_probe_checks(&lines)?;
    if passes < 1 {
        crate::scenarios::judge_probe_console(&o.console)?;
    }
    if boots < 2 {
        let why = lines
            .iter()
            .find(|l| l.starts_with("probe: kexec-boot returned"))
            .cloned()
            .unwrap_or_default();
        bail!(
            "no second kernel started after kexec-boot ({} boot(s) on the console) {why}",
            boots
        );
    }
    if !lines.iter().any(|l| l.starts_with("probe check kexec: ok")) || passes < 2 {
        bail!("the second boot's probe did not report it was started through kexec with all checks passing");
    }
    Ok(())
}
