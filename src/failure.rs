//! What PID 1 does when a phase fails: one clear message, then a kernel panic, an emergency
//! shell or a reboot — never an accidental "Attempted to kill init".

use crate::cmdline::Cmdline;
use crate::config::Failure;
use crate::sys::{Fake, Real};
use nix::errno::Errno;
use std::path::Path;

/// The syscalls of the failure policy.
pub trait FailureOps {
    fn is_executable(&self, path: &Path) -> bool;
    /// Runs the shell on the console and waits for it; returns its exit code.
    fn run_shell(&self, shell: &Path) -> Result<i32, Errno>;
    fn sleep_secs(&self, secs: u32);
    /// Reboots; returns only if the kernel refused.
    fn reboot(&self) -> Errno;
    /// Ends PID 1 so the kernel panics (`boot.panic_on_fail`); returns only in tests.
    fn exit_to_kernel_panic(&self);
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Panic,
    Shell { shell: String },
    Reboot { after_secs: u32 },
}

/// Decides what to do, with the notes to log about why (for example a shell that was asked
/// for on the kernel command line but not allowed by the config).
pub fn decide<S: FailureOps>(
    sys: &S,
    cmdline: &Cmdline,
    policy: &Failure,
) -> (Action, Vec<String>) {
    let mut notes = Vec::new();
    if cmdline.panic_on_fail {
        return (Action::Panic, notes);
    }
    if cmdline.shell_on_fail {
        if !policy.emergency_access {
            notes.push(
                "emergency shell not allowed by the config (failure.emergencyAccess is false)"
                    .to_string(),
            );
        } else if !sys.is_executable(Path::new(&policy.shell)) {
            notes.push(format!(
                "emergency shell {} is not in the initrd or not executable",
                policy.shell
            ));
        } else {
            return (
                Action::Shell {
                    shell: policy.shell.clone(),
                },
                notes,
            );
        }
    }
    (
        Action::Reboot {
            after_secs: policy.reboot_timeout_secs,
        },
        notes,
    )
}

/// Whether a debug shell (`boot.debug1*`) may be opened: only when the config allows
/// emergency access and the shell exists.
pub fn debug_shell_allowed<S: FailureOps>(sys: &S, policy: &Failure) -> Result<(), String> {
    if !policy.emergency_access {
        return Err("not allowed by the config (failure.emergencyAccess is false)".into());
    }
    if !sys.is_executable(Path::new(&policy.shell)) {
        return Err(format!(
            "{} is not in the initrd or not executable",
            policy.shell
        ));
    }
    Ok(())
}

/// Reports `error` from `phase` and carries out the policy. With the real kernel this does
/// not return; with the fake it returns the action taken.
pub fn fail<S: FailureOps>(
    sys: &S,
    cmdline: &Cmdline,
    policy: &Failure,
    phase: &str,
    error: &anyhow::Error,
) -> Action {
    log::error!("FAILED: {phase}: {error:#}");
    let (action, notes) = decide(sys, cmdline, policy);
    for note in &notes {
        log::warn!("{note}");
    }
    match &action {
        Action::Panic => {
            log::error!("boot failed: {phase}: {error:#}; panicking as boot.panic_on_fail asks");
            sys.exit_to_kernel_panic();
        }
        Action::Shell { shell } => {
            log::warn!("starting emergency shell {shell}; the machine reboots when it exits");
            match sys.run_shell(Path::new(shell)) {
                Ok(code) => log::warn!("emergency shell exited with status {code}"),
                Err(e) => log::error!("emergency shell {shell} could not start: {e}"),
            }
            reboot(sys, 0);
        }
        Action::Reboot { after_secs } => reboot(sys, *after_secs),
    }
    action
}

fn reboot<S: FailureOps>(sys: &S, after_secs: u32) {
    log::warn!("rebooting in {after_secs} s");
    sys.sleep_secs(after_secs);
    let errno = sys.reboot();
    log::error!("reboot failed: {errno}");
}

impl FailureOps for Real {
    fn is_executable(&self, path: &Path) -> bool {
        nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
    }

    fn run_shell(&self, shell: &Path) -> Result<i32, Errno> {
        use std::process::Command;
        let mut command = Command::new(shell);
        command
            .env_clear()
            .env("PATH", "/bin:/sbin")
            .env("PS1", "netboot-init# ");
        let mut child = crate::frame::reaper::spawn_owned(&mut command)
            .map_err(|e| crate::sys::io_errno(&e))?;
        let status = child.wait();
        crate::frame::reaper::release(child.id());
        status
            .map(|s| s.code().unwrap_or(128))
            .map_err(|e| crate::sys::io_errno(&e))
    }

    fn sleep_secs(&self, secs: u32) {
        std::thread::sleep(std::time::Duration::from_secs(secs.into()));
    }

    fn reboot(&self) -> Errno {
        nix::unistd::sync();
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }

    fn exit_to_kernel_panic(&self) {
        nix::unistd::sync();
        std::process::exit(1);
    }
}

impl FailureOps for Fake {
    fn is_executable(&self, path: &Path) -> bool {
        self.record(format!("access-x {}", path.display())).is_ok()
    }

    fn run_shell(&self, shell: &Path) -> Result<i32, Errno> {
        self.record(format!("run-shell {}", shell.display()))?;
        Ok(0)
    }

    fn sleep_secs(&self, secs: u32) {
        let _ = self.record(format!("sleep {secs}"));
    }

    fn reboot(&self) -> Errno {
        match self.record("reboot") {
            Ok(()) => Errno::UnknownErrno,
            Err(e) => e,
        }
    }

    fn exit_to_kernel_panic(&self) {
        let _ = self.record("exit-to-kernel-panic");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(emergency_access: bool) -> Failure {
        Failure {
            emergency_access,
            shell: "/bin/sh".into(),
            reboot_timeout_secs: 7,
        }
    }

    fn cmdline(text: &str) -> Cmdline {
        Cmdline::parse(text)
    }

    #[test]
    fn decision_table() {
        let reboot = Action::Reboot { after_secs: 7 };
        let shell = Action::Shell {
            shell: "/bin/sh".into(),
        };
        let denied = "emergency shell not allowed by the config (failure.emergencyAccess is false)";
        let missing = "emergency shell /bin/sh is not in the initrd or not executable";
        // (kernel command line, config allows, shell present, action, notes)
        let table: Vec<(&str, bool, bool, Action, Vec<&str>)> = vec![
            ("", false, true, reboot.clone(), vec![]),
            ("", true, true, reboot.clone(), vec![]),
            ("boot.panic_on_fail", true, true, Action::Panic, vec![]),
            ("stage1panic=1", false, false, Action::Panic, vec![]),
            (
                "boot.shell_on_fail",
                false,
                true,
                reboot.clone(),
                vec![denied],
            ),
            (
                "boot.shell_on_fail",
                true,
                false,
                reboot.clone(),
                vec![missing],
            ),
            ("boot.shell_on_fail", true, true, shell, vec![]),
            (
                "boot.shell_on_fail boot.panic_on_fail",
                true,
                true,
                Action::Panic,
                vec![],
            ),
        ];
        for (text, allowed, present, action, notes) in table {
            let fake = Fake::new();
            if !present {
                fake.fail_on("access-x", Errno::ENOENT);
            }
            let (got, got_notes) = decide(&fake, &cmdline(text), &policy(allowed));
            assert_eq!(
                got, action,
                "cmdline {text:?} allowed {allowed} present {present}"
            );
            assert_eq!(got_notes, notes, "cmdline {text:?}");
        }
    }

    #[test]
    fn reboot_waits_the_configured_time() {
        let fake = Fake::new();
        let err = anyhow::anyhow!("boom");
        fail(&fake, &cmdline(""), &policy(false), "mounts", &err);
        assert_eq!(fake.calls(), vec!["sleep 7", "reboot"]);
    }

    #[test]
    fn shell_then_reboot() {
        let fake = Fake::new();
        let err = anyhow::anyhow!("boom");
        let action = fail(
            &fake,
            &cmdline("boot.shell_on_fail"),
            &policy(true),
            "mounts",
            &err,
        );
        assert!(matches!(action, Action::Shell { .. }));
        assert_eq!(
            fake.calls(),
            vec!["access-x /bin/sh", "run-shell /bin/sh", "sleep 0", "reboot"]
        );
    }

    #[test]
    fn panic_ends_pid_1() {
        let fake = Fake::new();
        let err = anyhow::anyhow!("boom");
        fail(
            &fake,
            &cmdline("boot.panic_on_fail"),
            &policy(true),
            "modules",
            &err,
        );
        assert_eq!(fake.calls(), vec!["exit-to-kernel-panic"]);
    }

    #[test]
    fn debug_shells_need_the_config() {
        let fake = Fake::new();
        assert!(debug_shell_allowed(&fake, &policy(false)).is_err());
        assert!(debug_shell_allowed(&fake, &policy(true)).is_ok());
    }
}
