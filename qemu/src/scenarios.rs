//! The boot matrix: each scenario builds its image, boots it under QEMU and judges the serial
//! console. Printed as `qemu scenario NAME: ok` or `qemu scenario NAME: FAILED (reason)`.

use crate::fixture::Fixture;
use crate::images::{self, ImageSpec, Kernel};
use crate::probe;
use crate::vm::{self, Step, VmSpec};
use crate::ScenarioResult;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Arguments the harness hands to the stage-2 init after `--`.
pub const INIT_ARGS: &str = "probe-arg-1 probe-arg-2";
/// Passed to init in its environment by the kernel; must not reach stage 2.
pub const ENV_LEAK: &str = "probe_env_leak=1";
/// A stage-2 init that does not exist.
pub const MISSING_INIT: &str = "/nix/store/00000000000000000000000000000000-missing/init";
/// What the emergency shell is asked, and what it must answer.
pub const SHELL_COMMAND: &str = "echo shell-$((6*7))-ok\n";
pub const SHELL_ANSWER: &str = "shell-42-ok";

/// The exact lines the failure policy prints (after the kernel's timestamp).
pub mod msg {
    pub const FAILED: &str = "netboot-init: FAILED: ";
    pub fn rebooting(secs: u32) -> String {
        format!("netboot-init: rebooting in {secs} s")
    }
    pub const SHELL_DENIED: &str =
        "netboot-init: emergency shell not allowed by the config (failure.emergencyAccess is false)";
    pub const SHELL_START: &str =
        "netboot-init: starting emergency shell /bin/sh; the machine reboots when it exits";
    pub const BOOT_FAILED: &str = "netboot-init: boot failed: ";
    pub const PANIC_ASKED: &str = "; panicking as boot.panic_on_fail asks";
    pub const KERNEL_PANIC: &str = "Kernel panic - not syncing";
    pub const REGISTRATION_DONE: &str = "netboot-init: registration done in ";
    /// How the modules phase says it loaded the modules.
    pub const MODULES_PLAIN: &str = "netboot-init: finit_module: ";
    pub const MODULES_XZ_KERNEL: &str = "netboot-init: finit_module (xz in kernel): ";
    pub const MODULES_XZ_USER: &str = "netboot-init: init_module (xz in userspace): ";
    /// The error chain when the initrd carries no store image.
    pub const SQUASHFS_MISSING: &str =
        "mounts: fileSystems[1] /nix/.ro-store (squashfs): squashfs image /nix-store.squashfs is missing";
}

pub const ALL: &[&str] = &[
    "boot-6.1",
    "boot-6.12",
    "boot-6.1-xz-modules",
    "boot-prebuilt-db",
    "missing-squashfs",
    "corrupt-squashfs",
    "missing-module",
    "bad-config",
    "bad-init",
    "registration-failure",
    "shell-on-fail-denied",
    "shell-on-fail-allowed",
    "panic-on-fail",
    "reboot-on-fail",
    "ipxe-netboot",
    "kexec-reboot",
];

/// The console without the kernel's `[    1.234567] ` timestamps.
pub fn console_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .map(|l| {
            let l = l.trim_end_matches('\r');
            match (l.starts_with('['), l.find("] ")) {
                (true, Some(i)) if l[1..i].trim().parse::<f64>().is_ok() => l[i + 2..].to_string(),
                _ => l.to_string(),
            }
        })
        .collect()
}

/// The kernel timestamp of the first console line containing `needle`.
pub fn kernel_time(console: &str, needle: &str) -> Option<f64> {
    console.lines().find(|l| l.contains(needle)).and_then(|l| {
        let end = l.find("] ")?;
        l.get(l.find('[')? + 1..end)?.trim().parse().ok()
    })
}

/// What a scenario expects on the console.
#[derive(Debug, Clone)]
enum Expect {
    /// Stage 2 reached, every probe check ok, and these init lines seen (in order).
    Probe(Vec<Line>),
    /// These lines, in this order: `Exact` must equal a whole line, `Prefix` start one and
    /// contain every listed piece.
    Lines(Vec<Line>),
}

#[derive(Debug, Clone)]
enum Line {
    Exact(String),
    Prefix(String, Vec<String>),
}

impl Line {
    fn matches(&self, l: &str) -> bool {
        match self {
            Line::Exact(s) => l == s,
            Line::Prefix(p, parts) => {
                l.starts_with(p.as_str()) && parts.iter().all(|x| l.contains(x.as_str()))
            }
        }
    }
    fn describe(&self) -> String {
        match self {
            Line::Exact(s) => format!("{s:?}"),
            Line::Prefix(p, parts) => format!("{p:?}... containing {parts:?}"),
        }
    }
}

fn exact(s: impl Into<String>) -> Line {
    Line::Exact(s.into())
}

/// Everything shared by the scenarios of one run.
struct Env {
    ws: PathBuf,
    fx: Fixture,
    init: PathBuf,
    k61: Kernel,
    k612: Kernel,
}

fn out_dir(ws: &Path, name: &str) -> PathBuf {
    ws.join("target/netboot/scenarios").join(name)
}

fn cmdline(env: &Env, modules: &[String], extra: &str) -> String {
    let mut c = format!(
        "console=ttyS0 panic=1 printk.devkmsg=on init={} probe.modules={} {ENV_LEAK}",
        env.fx.init(),
        modules.join(",")
    );
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c.push_str(" -- ");
    c.push_str(INIT_ARGS);
    c
}

fn set(config: &mut Value, path: &[&str], v: Value) {
    let mut cur = config;
    for (i, k) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cur[*k] = v;
            return;
        }
        cur = &mut cur[*k];
    }
}

/// Runs one scenario; `Err` is the failure reason.
fn run_one(env: &Env, name: &str) -> Result<(), String> {
    let dir = out_dir(&env.ws, name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let r = scenario(env, name, &dir).map_err(|e| format!("{e:#}"));
    r.map_err(|e| format!("{e}; console: {}", dir.join("console.log").display()))
}

fn scenario(env: &Env, name: &str, dir: &Path) -> Result<()> {
    let fx = &env.fx;
    let mut spec = ImageSpec {
        config: images::base_config(fx),
        modules_tree: env.k61.modules(),
        keep_module_compression: false,
        prebuilt_db: false,
        shell: true,
        replace_config: None,
        drop_store: false,
        truncate_store: false,
    };
    let mut kernel = &env.k61;
    let mut extra = String::new();
    let mut allow_reboot = false;
    let squashfs_line = exact(format!("{}{}", msg::FAILED, msg::SQUASHFS_MISSING));
    let expect = match name {
        "boot-6.1" => Expect::Probe(vec![
            Line::Prefix(msg::MODULES_PLAIN.into(), vec![]),
            Line::Prefix(
                msg::REGISTRATION_DONE.into(),
                vec![format!("load-db: {} paths registered", fx.paths)],
            ),
        ]),
        "boot-6.12" | "ipxe-netboot" | "kexec-reboot" => {
            kernel = &env.k612;
            spec.modules_tree = env.k612.modules();
            spec.keep_module_compression = true;
            Expect::Probe(vec![Line::Prefix(msg::MODULES_XZ_KERNEL.into(), vec![])])
        }
        "boot-6.1-xz-modules" => {
            let names = initrd_layout::upstream::needed_modules(&serde_json::from_value(
                spec.config.clone(),
            )?);
            spec.modules_tree = images::xz_module_copy(&env.ws, &env.k61, &names)?;
            spec.keep_module_compression = true;
            Expect::Probe(vec![Line::Prefix(msg::MODULES_XZ_USER.into(), vec![])])
        }
        "boot-prebuilt-db" => {
            set(
                &mut spec.config,
                &["registration"],
                json!({"mode": "prebuilt"}),
            );
            spec.prebuilt_db = true;
            Expect::Probe(vec![Line::Prefix(
                msg::REGISTRATION_DONE.into(),
                vec!["prebuilt database installed".into()],
            )])
        }
        "missing-squashfs" => {
            spec.drop_store = true;
            Expect::Lines(vec![squashfs_line, exact(msg::rebooting(1))])
        }
        "corrupt-squashfs" => {
            spec.truncate_store = true;
            let (said, has) = truncated_sizes(&fx.store_image)?;
            Expect::Lines(vec![
                exact(format!(
                    "{}mounts: fileSystems[1] /nix/.ro-store (squashfs): squashfs image /nix-store.squashfs is truncated: its superblock says {said} bytes, the file has {has}",
                    msg::FAILED
                )),
                exact(msg::rebooting(1)),
            ])
        }
        "missing-module" => {
            let mut c = spec.config.clone();
            set(&mut c, &["kernelModules"], json!(["no_such_module"]));
            spec.replace_config = Some(serde_json::to_string(&c)?);
            Expect::Lines(vec![
                exact(format!(
                    "{}modules: resolving the kernel modules to load: module no_such_module not found in /lib/modules/{} (not in modules.dep, modules.alias or modules.builtin)",
                    msg::FAILED,
                    env.k61.release
                )),
                exact(msg::rebooting(1)),
            ])
        }
        "bad-config" => {
            let mut c = spec.config.clone();
            set(&mut c, &["bogusField"], json!(true));
            spec.replace_config = Some(serde_json::to_string(&c)?);
            // The config is unreadable, so its reboot wait is unknown: the default applies.
            Expect::Lines(vec![
                Line::Prefix(
                    format!("{}config: config /etc/netboot-init.json: bogusField: unknown field (expected one of ", msg::FAILED),
                    vec![],
                ),
                exact(msg::rebooting(10)),
            ])
        }
        "bad-init" => {
            // The profile names the real system, so registration passes and the missing init is
            // what fails.
            set(
                &mut spec.config,
                &["registration", "toplevel"],
                json!(fx.toplevel),
            );
            extra = format!("init={MISSING_INIT}");
            Expect::Lines(vec![
                Line::Prefix(
                    format!("{}stage2-check: ", msg::FAILED),
                    vec![MISSING_INIT.into()],
                ),
                exact(msg::rebooting(1)),
            ])
        }
        "registration-failure" => {
            set(
                &mut spec.config,
                &["registration", "registrationFile"],
                json!(format!("{}/probe.json", fx.toplevel)),
            );
            Expect::Lines(vec![
                Line::Prefix(
                    format!(
                        "{}registration: registration file /mnt-root{}/probe.json: line 1: expected a store path, got \"{{\"",
                        msg::FAILED,
                        fx.toplevel
                    ),
                    vec![],
                ),
                exact(msg::rebooting(1)),
            ])
        }
        "shell-on-fail-denied" => {
            spec.drop_store = true;
            extra = "boot.shell_on_fail".into();
            Expect::Lines(vec![
                squashfs_line,
                exact(msg::SHELL_DENIED),
                exact(msg::rebooting(1)),
            ])
        }
        "shell-on-fail-allowed" => {
            spec.drop_store = true;
            set(
                &mut spec.config,
                &["failure", "emergencyAccess"],
                json!(true),
            );
            extra = "boot.shell_on_fail".into();
            Expect::Lines(vec![
                squashfs_line,
                exact(msg::SHELL_START),
                exact(SHELL_ANSWER),
            ])
        }
        "panic-on-fail" => {
            spec.drop_store = true;
            extra = "boot.panic_on_fail".into();
            Expect::Lines(vec![
                squashfs_line,
                exact(format!(
                    "{}{}{}",
                    msg::BOOT_FAILED,
                    msg::SQUASHFS_MISSING,
                    msg::PANIC_ASKED
                )),
                Line::Prefix(msg::KERNEL_PANIC.to_string(), vec![]),
            ])
        }
        "reboot-on-fail" => {
            spec.drop_store = true;
            set(
                &mut spec.config,
                &["failure", "rebootTimeoutSecs"],
                json!(2),
            );
            allow_reboot = true;
            Expect::Lines(vec![squashfs_line, exact(msg::rebooting(2))])
        }
        other => bail!("unknown scenario {other:?} (known: {})", ALL.join(" ")),
    };
    if name == "kexec-reboot" {
        return crate::netboot::kexec_reboot(env.ws.as_path(), fx, &env.init, kernel, spec, dir);
    }
    let (initrd, modules) = images::build_initrd(fx, &spec, &env.init, dir)?;
    let append = cmdline(env, &modules, &extra);
    if name == "ipxe-netboot" {
        return crate::netboot::ipxe(fx, kernel, &initrd, &append, dir);
    }
    let mut vm = VmSpec::direct(kernel.image(), initrd, append, dir.join("console.log"));
    vm.allow_reboot = allow_reboot;
    vm.timeout = Duration::from_secs(if matches!(expect, Expect::Probe(_)) {
        240
    } else {
        120
    });
    judge_boot(&vm, &expect, name)
}

/// What the init should say about the half store image: the superblock's `bytes_used` and the
/// shipped length.
fn truncated_sizes(image: &Path) -> Result<(u64, u64)> {
    let data = std::fs::read(image)?;
    let sb = data
        .get(40..48)
        .context("store image shorter than a squashfs superblock")?;
    let said = u64::from_le_bytes(sb.try_into()?);
    Ok((said, (data.len() / 2) as u64))
}

fn judge_boot(vm: &VmSpec, expect: &Expect, name: &str) -> Result<()> {
    match expect {
        Expect::Probe(lines) => {
            // The probe powers the VM off when it is done.
            let out = vm::run(vm, |_, _| Step::Continue)?;
            judge_probe(&out.console, out.timed_out)?;
            judge_lines(&out.console, lines)
        }
        Expect::Lines(lines) => {
            let reboot = name == "reboot-on-fail";
            let shell = name == "shell-on-fail-allowed";
            let mut sent = None::<Instant>;
            let mut reboot_seen: Option<Instant> = None;
            let mut reboot_gap: Option<Duration> = None;
            let want_reboot = msg::rebooting(2);
            let out = vm::run(vm, |text, console| {
                let lines = console_lines(text);
                if shell {
                    if sent.is_none() && lines.iter().any(|l| l.starts_with(msg::SHELL_START)) {
                        std::thread::sleep(Duration::from_millis(1500));
                        if console.send(SHELL_COMMAND).is_ok() {
                            sent = Some(Instant::now());
                        }
                    }
                    if lines.iter().any(|l| l == SHELL_ANSWER) {
                        return Step::Stop;
                    }
                }
                if reboot {
                    if reboot_seen.is_none() && lines.contains(&want_reboot) {
                        reboot_seen = Some(Instant::now());
                    }
                    if let Some(t) = reboot_seen {
                        if text.matches("Linux version").count() >= 2 {
                            reboot_gap.get_or_insert(t.elapsed());
                            return Step::Stop;
                        }
                    }
                }
                Step::Continue
            })?;
            judge_lines(&out.console, lines)?;
            if out.timed_out && !reboot && !shell {
                bail!("timed out after the expected messages (the VM did not reboot)");
            }
            if reboot {
                let gap = reboot_gap.context("the VM did not reset after the reboot message")?;
                if gap < Duration::from_millis(1500) {
                    bail!("the VM reset {gap:?} after the message, sooner than the configured 2 s");
                }
            }
            if shell && sent.is_none() {
                bail!("the emergency shell never got the command");
            }
            Ok(())
        }
    }
}

fn judge_lines(console: &str, want: &[Line]) -> Result<()> {
    let lines = console_lines(console);
    let mut at = 0;
    for w in want {
        match lines[at..].iter().position(|l| w.matches(l)) {
            Some(i) => at += i + 1,
            None => {
                let last = last_init_lines(&lines, 4);
                bail!(
                    "no line {} (in order); last init lines: {last}",
                    w.describe()
                );
            }
        }
    }
    Ok(())
}

/// The last `n` lines the init logged, joined for a failure reason.
fn last_init_lines(lines: &[String], n: usize) -> String {
    let ours: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("netboot-init: "))
        .map(String::as_str)
        .collect();
    ours[ours.len().saturating_sub(n)..].join(" | ")
}

/// Fails with every `probe check NAME: FAILED (...)` line of a console, if there are any.
pub(crate) fn no_failed_probe_checks(lines: &[String]) -> Result<()> {
    let failed: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("probe check ") && l.contains(": FAILED"))
        .map(String::as_str)
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn judge_probe(console: &str, timed_out: bool) -> Result<()> {
    let lines = console_lines(console);
    no_failed_probe_checks(&lines)?;
    if !lines.iter().any(|l| l == probe::ALL_PASSED) {
        let last = last_init_lines(&lines, 3);
        bail!(
            "the probe did not report `{}`{}; last init lines: {last}",
            probe::ALL_PASSED,
            if timed_out { " (timed out)" } else { "" }
        );
    }
    if !console.contains(probe::STARTED) {
        bail!("no `{}` on the console", probe::STARTED);
    }
    if netboot_init::timeline::Timeline::from_log(console).is_none() {
        bail!("no parseable `netboot-init: timeline {{...}}` record on the console");
    }
    Ok(())
}

/// Rough TCG durations, for scheduling only.
fn expected_seconds(name: &str) -> u32 {
    match name {
        "kexec-reboot" => 70,
        "boot-6.1" | "boot-6.12" | "boot-6.1-xz-modules" | "ipxe-netboot" => 60,
        "boot-prebuilt-db" => 50,
        "bad-config" => 40,
        _ => 25,
    }
}

pub fn run_scenarios(ws: &Path, only: &[String]) -> Result<Vec<ScenarioResult>> {
    let names: Vec<String> = if only.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        only.to_vec()
    };
    for n in &names {
        if !ALL.contains(&n.as_str()) {
            bail!("unknown scenario {n:?} (known: {})", ALL.join(" "));
        }
    }
    let bins = crate::build_static(ws)?;
    let env = Env {
        fx: crate::fixture::ensure(ws, &bins.probe)?,
        init: bins.init,
        k61: Kernel::load(ws, "6.1")?,
        k612: Kernel::load(ws, "6.12")?,
        ws: ws.to_path_buf(),
    };
    // Longest first, so two workers finish close together.
    let mut order = names.clone();
    order.sort_by_key(|n| std::cmp::Reverse(expected_seconds(n)));
    let queue = Mutex::new(order.into_iter().collect::<VecDeque<_>>());
    let results = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(name) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let t = Instant::now();
                    let r = run_one(&env, &name);
                    match &r {
                        Ok(()) => println!("qemu scenario {name}: ok"),
                        Err(why) => println!("qemu scenario {name}: FAILED ({why})"),
                    }
                    if let Ok(mut v) = results.lock() {
                        v.push(ScenarioResult {
                            name,
                            failure: r.err(),
                            seconds: t.elapsed().as_secs_f64(),
                        });
                    }
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a scenario thread panicked"))?;
    results.sort_by_key(|r| names.iter().position(|n| *n == r.name));
    let passed = results.iter().filter(|r| r.passed()).count();
    eprintln!(
        "qemu scenarios: {passed} of {} passed in {:.0} s ({})",
        results.len(),
        start.elapsed().as_secs_f64(),
        results
            .iter()
            .map(|r| format!("{} {:.0}s", r.name, r.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(results)
}

/// The boot-6.12 image for the demo: kernel, initrd, command line.
pub(crate) fn demo_image(ws: &Path) -> Result<(VmSpec, Fixture)> {
    let bins = crate::build_static(ws)?;
    let fx = crate::fixture::ensure(ws, &bins.probe)?;
    let k = Kernel::load(ws, "6.12")?;
    let dir = out_dir(ws, "demo");
    let spec = ImageSpec {
        config: images::base_config(&fx),
        modules_tree: k.modules(),
        keep_module_compression: true,
        prebuilt_db: false,
        shell: true,
        replace_config: None,
        drop_store: false,
        truncate_store: false,
    };
    let (initrd, modules) = images::build_initrd(&fx, &spec, &bins.init, &dir)?;
    let env = Env {
        ws: ws.to_path_buf(),
        fx: fx.clone(),
        init: bins.init,
        k61: k.clone(),
        k612: k.clone(),
    };
    let append = cmdline(&env, &modules, "");
    let mut vm = VmSpec::direct(k.image(), initrd, append, dir.join("console.log"));
    vm.timeout = Duration::from_secs(240);
    Ok((vm, fx))
}

pub(crate) fn judge_probe_console(console: &str) -> Result<()> {
    judge_probe(console, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_timestamps() {
        let l = console_lines("[    1.234567] netboot-init: FAILED: mounts: x\r\nplain\n[bad] x\n");
        assert_eq!(l, ["netboot-init: FAILED: mounts: x", "plain", "[bad] x"]);
        assert_eq!(
            kernel_time("[    1.500000] Run /init as init process\n", "Run /init"),
            Some(1.5)
        );
    }

    #[test]
    fn lines_in_order() {
        let c = "[ 1.0] netboot-init: FAILED: mounts: /nix-store.squashfs: ENOENT\n[ 1.1] netboot-init: rebooting in 1 s\n";
        let failed = Line::Prefix(
            "netboot-init: FAILED: mounts: ".into(),
            vec!["nix-store.squashfs".into()],
        );
        judge_lines(c, &[failed.clone(), exact(msg::rebooting(1))]).unwrap();
        assert!(judge_lines(c, &[exact(msg::rebooting(1)), failed]).is_err());
        assert!(judge_lines(c, &[exact(msg::rebooting(2))]).is_err());
    }

    #[test]
    fn probe_judgement() {
        let timeline = "[ 1.0] netboot-init: timeline {\"version\":1,\"clock\":\"monotonic\",\"initStartUs\":1,\"phases\":[]}\n";
        let good = format!("{timeline}stage2-probe: started\nprobe: all checks passed\n");
        assert!(judge_probe(&good, false).is_ok());
        // Without the init's timeline record on the console.
        assert!(judge_probe("stage2-probe: started\nprobe: all checks passed\n", false).is_err());
        assert!(judge_probe(
            "stage2-probe: started\nprobe check x: FAILED (y)\nprobe: all checks passed\n",
            false
        )
        .is_err());
        assert!(judge_probe("nothing", true).is_err());
    }
}
