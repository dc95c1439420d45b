//! The boot sequence: each phase timed, logged and recorded, every failure routed to the
//! failure policy. Generic over the syscall traits, so the whole sequence runs on the
//! recording fake in unit tests.

use crate::cmdline::Cmdline;
use crate::config::{Config, Failure};
use crate::failure::{self, Action, FailureOps};
use crate::frame::{self, FrameOps};
use crate::modules::{self, ModuleOps};
use crate::mounts::{self, MountOps};
use crate::registration::{self, RegistrationOps};
use crate::switch_root::{self, Stage2, SwitchRootOps};
use crate::timeline::{now_us, Timeline, LOG_TAG};
use anyhow::Context;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Everything the init does to the system, in one bound.
pub trait Sys:
    FrameOps + ModuleOps + MountOps + RegistrationOps + SwitchRootOps + FailureOps
{
}
impl<T: FrameOps + ModuleOps + MountOps + RegistrationOps + SwitchRootOps + FailureOps> Sys for T {}

/// The absolute paths the init reads and writes; tests put them in a temp dir.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/` of the initramfs.
    pub root: PathBuf,
    pub cmdline: PathBuf,
    pub config: PathBuf,
    pub mountinfo: PathBuf,
    pub kmsg: PathBuf,
    pub run: PathBuf,
}

impl Paths {
    /// The paths of a boot with the initramfs at `root` (`/` for the real one).
    pub fn under(root: &Path) -> Paths {
        Paths {
            root: root.to_path_buf(),
            cmdline: root.join("proc/cmdline"),
            config: root.join(crate::config::CONFIG_PATH.trim_start_matches('/')),
            mountinfo: root.join("proc/self/mountinfo"),
            kmsg: root.join("dev/kmsg"),
            run: root.join("run"),
        }
    }
}

/// How a boot ended, as far as the init could see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stage-2 init was exec'd (only the fake's exec comes back to tell).
    HandedOff { init: String },
    /// A phase failed and the failure policy took this action.
    Failed { phase: String, action: Action },
}

/// What the failure policy needs, known before the config is (defaults) and after it.
struct Policy {
    cmdline: Cmdline,
    failure: Failure,
}

/// Runs the boot from the frame to the hand-off.
pub fn run<S: Sys>(sys: &S, paths: &Paths, kernel_args: &[String]) -> Outcome {
    let mut policy = Policy {
        cmdline: Cmdline::default(),
        failure: Failure::default(),
    };
    let mut timeline = Timeline::new(now_us(), "");
    match sequence(sys, paths, kernel_args, &mut policy, &mut timeline) {
        Ok(init) => Outcome::HandedOff { init },
        Err(PhaseError { phase, error }) => {
            // Kept for the emergency shell and for the logs; a failed boot is worth a look.
            if timeline.write(&paths.run).is_ok() {
                log::debug!("{LOG_TAG}{}", timeline.to_log_json());
            }
            let action = failure::fail(sys, &policy.cmdline, &policy.failure, &phase, &error);
            Outcome::Failed { phase, action }
        }
    }
}

struct PhaseError {
    phase: String,
    error: anyhow::Error,
}

/// Runs one phase, records it on the timeline and tags its error with the phase name.
fn phase<T, D: Display>(
    timeline: &mut Timeline,
    name: &str,
    body: impl FnOnce() -> anyhow::Result<T>,
    summary: impl FnOnce(&T) -> D,
) -> Result<T, PhaseError> {
    let start = now_us();
    match body() {
        Ok(value) => {
            timeline.record(name, start, now_us(), true, summary(&value).to_string());
            Ok(value)
        }
        Err(error) => {
            timeline.record(name, start, now_us(), false, format!("{error:#}"));
            Err(PhaseError {
                phase: name.to_string(),
                error,
            })
        }
    }
}

fn sequence<S: Sys>(
    sys: &S,
    paths: &Paths,
    kernel_args: &[String],
    policy: &mut Policy,
    timeline: &mut Timeline,
) -> Result<String, PhaseError> {
    let (_, kmsg_limit) = phase(
        timeline,
        "frame",
        || {
            let mounted = frame::mount_api_filesystems(sys, &paths.root)?;
            if let Err(e) = crate::logging::use_kmsg(&paths.kmsg) {
                log::warn!(
                    "logging to the console: {} unavailable: {e}",
                    paths.kmsg.display()
                );
            }
            Ok((mounted, frame::unlimit_kmsg(sys, &paths.root)))
        },
        |(m, _)| {
            format!(
                "mounted {}",
                if m.is_empty() {
                    "nothing".into()
                } else {
                    m.join(" ")
                }
            )
        },
    )?;
    timeline.kernel_release = sys.kernel_release();

    let (config, init) = phase(
        timeline,
        "config",
        || {
            // Lossy: one stray byte in a parameter the init does not read must not stop it.
            let text = crate::sys::read_text_limited(
                &paths.cmdline,
                crate::cmdline::MAX_CMDLINE_BYTES as u64,
            )
            .with_context(|| {
                format!(
                    "reading the kernel command line {}",
                    paths.cmdline.display()
                )
            })?;
            policy.cmdline = Cmdline::parse(&text);
            apply_log_level(&policy.cmdline);
            for problem in &policy.cmdline.problems {
                log::warn!("kernel command line: {problem}");
            }
            remember_policy(&policy.cmdline, &policy.failure);
            let file = paths.config.display().to_string();
            let config = Config::load(&paths.config).map_err(|e| {
                // File errors name the file already; field errors get it added.
                if e.path == file {
                    anyhow::Error::new(e).context("config")
                } else {
                    anyhow::Error::new(e).context(format!("config {file}"))
                }
            })?;
            policy.failure = config.failure.clone();
            remember_policy(&policy.cmdline, &policy.failure);
            let init = policy
                .cmdline
                .init
                .clone()
                .or_else(|| config.init.clone())
                .context(
                    "no stage-2 init: the kernel command line has no init= and the config no init",
                )?;
            Ok((config, init))
        },
        |(config, init)| {
            format!(
                "{} file systems, registration {}, stage 2 {init}",
                config.file_systems.len(),
                serde_json::to_value(config.registration.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            )
        },
    )?;
    let cmdline = policy.cmdline.clone();

    debug_shell(sys, &config, cmdline.debug1, "boot.debug1");

    let release = timeline.kernel_release.clone();
    let modules_dir = paths
        .root
        .join(config.modules_dir.trim_start_matches('/'))
        .join(&release);
    phase(
        timeline,
        "modules",
        || {
            anyhow::ensure!(
                !release.is_empty(),
                "uname gave no kernel release, so no modules tree can be chosen"
            );
            modules::load_for_boot(sys, &config, &cmdline, &modules_dir, &release)
        },
        |report| report.to_string(),
    )?;
    debug_shell(sys, &config, cmdline.debug1devices, "boot.debug1devices");

    phase(
        timeline,
        "mounts",
        || mounts::mount_all(sys, &config, &paths.root, &paths.mountinfo),
        |report| report.to_string(),
    )?;
    debug_shell(sys, &config, cmdline.debug1mounts, "boot.debug1mounts");

    // Before the registration, whose toplevel comes from the same init= path: a mistyped
    // init= is named as such, not as an unregistered toplevel.
    let target_root = PathBuf::from(&config.target_root);
    phase(
        timeline,
        "stage2-check",
        || switch_root::check_stage2(&target_root, &init),
        |_| format!("found {init}"),
    )?;

    phase(
        timeline,
        "registration",
        || registration::register(sys, &config, &init, &paths.root),
        |report| report.to_string(),
    )?;

    timeline.handoff_us = Some(now_us());
    timeline.stage2_init = Some(init.clone());
    if let Err(e) = timeline.write(&paths.run) {
        log::warn!(
            "could not write the timeline under {}: {e}",
            paths.run.display()
        );
    }
    log::info!("{LOG_TAG}{}", timeline.to_log_json());
    log::info!(
        "stage 1 done in {}; handing off to {init}",
        crate::timeline::ms(
            timeline
                .handoff_us
                .unwrap_or(0)
                .saturating_sub(timeline.init_start_us)
        )
    );

    // Stage 2 gets the kernel's rate limit back; the line or two the hand-off still logs fit
    // in its burst of ten.
    frame::restore_kmsg_limit(sys, &paths.root, kmsg_limit.as_deref());

    let stage2 = Stage2 {
        init: init.clone(),
        args: kernel_args.to_vec(),
    };
    switch_root::switch_root(sys, &paths.root, &target_root, &stage2).map_err(|error| {
        PhaseError {
            phase: "hand-off".into(),
            error,
        }
    })?;
    Ok(init)
}

fn apply_log_level(cmdline: &Cmdline) {
    let level = if cmdline.trace {
        log::LevelFilter::Trace
    } else {
        cmdline.log_level.unwrap_or(log::LevelFilter::Info)
    };
    log::set_max_level(level);
}

/// `boot.debug1*`: a shell at that point of the boot, if the config allows one.
fn debug_shell<S: Sys>(sys: &S, config: &Config, asked: bool, param: &str) {
    if !asked {
        return;
    }
    match failure::debug_shell_allowed(sys, &config.failure) {
        Ok(()) => {
            log::warn!(
                "{param}: starting {}; the boot continues when it exits",
                config.failure.shell
            );
            match sys.run_shell(Path::new(&config.failure.shell)) {
                Ok(code) => log::info!("{param}: shell exited with status {code}"),
                Err(e) => log::error!(
                    "{param}: shell {} could not start: {e}",
                    config.failure.shell
                ),
            }
        }
        Err(why) => log::warn!("{param}: no shell: {why}"),
    }
}

/// What the panic hook needs to follow the failure policy.
static PANIC_POLICY: std::sync::Mutex<Option<(Cmdline, Failure)>> = std::sync::Mutex::new(None);

fn remember_policy(cmdline: &Cmdline, failure: &Failure) {
    *crate::sys::lock(&PANIC_POLICY) = Some((cmdline.clone(), failure.clone()));
}

/// PID 1's entry point: sets up logging, the panic hook and the reaper, then boots.
pub fn pid1_main(args: &[String]) -> ! {
    crate::logging::init(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        let error = anyhow::anyhow!("internal error: {info}");
        // A clone, so the lock is not held while the policy runs (it may never return).
        let policy = crate::sys::lock(&PANIC_POLICY).clone();
        let (cmdline, failure) = policy.unwrap_or_default();
        failure::fail(&crate::sys::Real, &cmdline, &failure, "init", &error);
        park_forever();
    }));
    frame::reaper::start();
    log::info!("starting (version {})", env!("CARGO_PKG_VERSION"));
    let outcome = run(
        &crate::sys::Real,
        &Paths::under(Path::new("/")),
        args.get(1..).unwrap_or(&[]),
    );
    log::error!("boot ended without a hand-off: {outcome:?}");
    park_forever()
}

/// PID 1 must not exit (that panics the kernel); when nothing is left to do, wait.
fn park_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests;
