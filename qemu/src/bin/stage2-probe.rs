//! The stage-2 probe: runs as PID 1 after netboot-init's hand-off, checks that the hand-off left
//! the system the way NixOS stage 2 expects it, prints one line per check to the console, and
//! powers off. Kernel parameters `probe.*` (see `ProbeCmdline`) and `probe.json` next to the
//! binary say what to expect.

use netboot_qemu::probe::{self, ProbeCmdline, ProbeConfig};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

type Check = Result<String, String>;

fn main() {
    if let Ok(mut k) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = writeln!(k, "<6>{}", probe::STARTED);
    }
    let mut console: Box<dyn Write> = match fs::OpenOptions::new().write(true).open("/dev/console")
    {
        Ok(f) => Box::new(f),
        Err(_) => Box::new(std::io::stdout()),
    };
    let args: Vec<String> = std::env::args().collect();
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let cmdline_text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cmdline = ProbeCmdline::parse(&cmdline_text);
    let argv0 = args.first().cloned().unwrap_or_default();
    let toplevel = Path::new(&argv0)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let config: Result<ProbeConfig, String> = fs::read_to_string(toplevel.join("probe.json"))
        .map_err(|e| format!("{}: {e}", toplevel.join("probe.json").display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("probe.json: {e}")));

    let mut failed = 0;
    let mut report = |console: &mut Box<dyn Write>, name: &str, r: Check| {
        if r.is_err() {
            failed += 1;
        }
        let _ = writeln!(console, "{}", probe::check_line(name, &r));
    };

    let _ = writeln!(console, "stage2-probe: argv {args:?}");
    report(&mut console, "pid1", check_pid1());
    report(&mut console, "mounts", check_mounts());
    report(&mut console, "initramfs-gone", check_initramfs_gone());
    report(&mut console, "nixos-marker", exists("/etc/NIXOS"));
    report(&mut console, "system-profile", check_profile(&toplevel));
    match &config {
        Ok(c) => {
            report(&mut console, "nix-verify", check_nix_verify(&c.nix_store));
            report(
                &mut console,
                "nix-query",
                check_nix_query(&c.nix_store, &toplevel),
            );
        }
        Err(e) => report(&mut console, "probe-config", Err(e.clone())),
    }
    report(&mut console, "modules", check_modules(&cmdline.modules));
    report(
        &mut console,
        "init-args",
        check_args(&args, &cmdline.init_args),
    );
    report(&mut console, "environment", probe::check_env(&vars));
    report(&mut console, "store-write", check_store_write());
    report(
        &mut console,
        "timeline",
        fs::read_to_string("/run/netboot-init/timeline.json")
            .map_err(|e| format!("/run/netboot-init/timeline.json: {e}"))
            .and_then(|t| probe::check_timeline(&t)),
    );
    if cmdline.via_kexec {
        report(
            &mut console,
            "kexec",
            Ok(format!(
                "started through kexec ({})",
                probe::VIA_KEXEC_PARAM
            )),
        );
    }
    if failed == 0 {
        let _ = writeln!(console, "{}", probe::ALL_PASSED);
    } else {
        let _ = writeln!(console, "{} ({failed} failed)", probe::SOME_FAILED);
    }
    if let (Some(dev), false, Ok(c)) = (&cmdline.kexec_device, cmdline.via_kexec, &config) {
        if failed == 0 {
            let r = run_kexec(dev, c);
            let _ = writeln!(console, "probe: kexec-boot returned: {r:?}");
        }
    }
    let _ = console.flush();
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on error; PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn check_pid1() -> Check {
    let pid = std::process::id();
    if pid == 1 {
        Ok(String::new())
    } else {
        Err(format!("running as PID {pid}"))
    }
}

fn check_mounts() -> Check {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    probe::check_mounts(&probe::parse_mountinfo(&text))
}

fn check_initramfs_gone() -> Check {
    let left: Vec<&str> = [
        "/init",
        "/nix-store.squashfs",
        "/etc/netboot-init.json",
        "/mnt-root",
    ]
    .into_iter()
    .filter(|p| fs::symlink_metadata(p).is_ok())
    .collect();
    if !left.is_empty() {
        return Err(format!("still present in /: {}", left.join(" ")));
    }
    // The old root is out of reach from here, but the loop device still names its backing file:
    // the store image in the initramfs, which the hand-off must have deleted.
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mounts = probe::parse_mountinfo(&text);
    let dev = probe::mount_at(&mounts, "/nix/.ro-store")
        .map(|m| m.source.clone())
        .ok_or("nothing mounted on /nix/.ro-store")?;
    let name = dev.trim_start_matches("/dev/");
    let backing_path = format!("/sys/block/{name}/loop/backing_file");
    let backing = fs::read_to_string(&backing_path).map_err(|e| format!("{backing_path}: {e}"))?;
    let backing = backing.trim();
    if backing.ends_with("(deleted)") {
        Ok(format!("{dev} backed by {backing}"))
    } else {
        Err(format!(
            "{dev} is backed by {backing}, which was not deleted from the initramfs"
        ))
    }
}

fn exists(path: &str) -> Check {
    fs::symlink_metadata(path)
        .map(|_| String::new())
        .map_err(|e| format!("{path}: {e}"))
}

fn check_profile(toplevel: &Path) -> Check {
    let profiles = Path::new("/nix/var/nix/profiles");
    let l1 = fs::read_link(profiles.join("system")).map_err(|e| format!("profiles/system: {e}"))?;
    if l1 != Path::new("system-1-link") && l1 != profiles.join("system-1-link") {
        return Err(format!(
            "profiles/system -> {} (want system-1-link)",
            l1.display()
        ));
    }
    let l2 = fs::read_link(profiles.join("system-1-link"))
        .map_err(|e| format!("profiles/system-1-link: {e}"))?;
    if l2 != toplevel {
        return Err(format!(
            "system-1-link -> {} (want {})",
            l2.display(),
            toplevel.display()
        ));
    }
    Ok(format!("system -> system-1-link -> {}", l2.display()))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .env_clear()
        .env("HOME", "/")
        .env("USER", "root")
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        Err(format!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            tail.join(" / ")
        ))
    }
}

fn check_nix_verify(nix_store: &str) -> Check {
    run(Command::new(nix_store).args(["--verify", "--check-contents"]))?;
    Ok(format!("{nix_store} --verify --check-contents: exit 0"))
}

fn check_nix_query(nix_store: &str, toplevel: &Path) -> Check {
    let hash = run(Command::new(nix_store)
        .arg("-q")
        .arg("--hash")
        .arg(toplevel))?;
    if !hash.starts_with("sha256:") {
        return Err(format!("unexpected hash {hash:?}"));
    }
    let count = run(Command::new(nix_store)
        .args(["-q", "--requisites"])
        .arg(toplevel))?
    .lines()
    .count();
    Ok(format!(
        "{} {hash}, closure {count} paths",
        toplevel.display()
    ))
}

fn check_modules(want: &[String]) -> Check {
    if want.is_empty() {
        return Err("no probe.modules= on the kernel command line".into());
    }
    let text = fs::read_to_string("/proc/modules").map_err(|e| format!("/proc/modules: {e}"))?;
    let have = probe::parse_proc_modules(&text);
    let missing: Vec<&str> = want
        .iter()
        .filter(|m| !have.contains(m))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(want.join(","))
    } else {
        Err(format!("not loaded: {}", missing.join(",")))
    }
}

fn check_args(args: &[String], want: &[String]) -> Check {
    let got = args.get(1..).unwrap_or_default();
    if want.is_empty() {
        return Err("no `-- args` on the kernel command line".into());
    }
    if got == want {
        Ok(got.join(" "))
    } else {
        Err(format!("argv[1..] is {got:?}, want {want:?}"))
    }
}

fn check_store_write() -> Check {
    let name = format!("probe-write-test-{}", std::process::id());
    let path = PathBuf::from("/nix/store").join(&name);
    fs::write(&path, b"written by the probe\n").map_err(|e| format!("{}: {e}", path.display()))?;
    let upper = PathBuf::from("/nix/.rw-store/store").join(&name);
    let r = match fs::read(&upper) {
        Ok(b) if b == b"written by the probe\n" => {
            Ok(format!("{} landed in {}", path.display(), upper.display()))
        }
        Ok(_) => Err(format!("{} has other content", upper.display())),
        Err(e) => Err(format!("{}: {e}", upper.display())),
    };
    let _ = fs::remove_file(&path);
    r
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|e| e.to_string())
}

/// Mounts the squashfs with the kexec tree and runs its `kexec-boot`; returns only on failure.
fn run_kexec(device: &str, c: &ProbeConfig) -> Result<(), String> {
    let busybox = c.busybox.as_deref().ok_or("probe.json has no busybox")?;
    let kexec_bin = c.kexec_bin.as_deref().ok_or("probe.json has no kexecBin")?;
    let dir = "/run/kexec-tree";
    fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    let (src, target, fstype) = (cstr(device)?, cstr(dir)?, cstr("squashfs")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {device} on {dir}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let status = Command::new(format!("{busybox}/bin/sh"))
        .arg(format!("{dir}/kexec-boot"))
        .env_clear()
        .env("PATH", format!("{kexec_bin}:{busybox}/bin"))
        .current_dir("/")
        .status()
        .map_err(|e| format!("{busybox}/bin/sh: {e}"))?;
    Err(format!("kexec-boot exited with {status}"))
}
