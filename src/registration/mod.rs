//! Nix registration on the new root: what netboot.nix does after boot with
//! `nix-store --load-db < /nix/store/nix-path-registration`, `touch /etc/NIXOS` and
//! `nix-env -p /nix/var/nix/profiles/system --set <toplevel>`, done before stage 2 starts.
//!
//! Modes (config `registration.mode`):
//! - `load-db`: validate the registration file, then run the image's own `nix-store --load-db`
//!   chrooted into the target root, with a fresh /proc and a bind of the initrd's /dev under it
//!   (both unmounted again before the hand-off moves the initrd's API file systems over).
//! - `prebuilt`: copy a database made at image build time ([`build_prebuilt_db`]) from the
//!   initrd to `/nix/var/nix/db`; nothing is executed.
//! - `none`: no database; the marker and the profile are still made if configured.

pub mod host;
pub mod parse;
pub mod profile;

use crate::config::{Config, RegistrationMode};
use crate::sys::{io_errno, Fake, Real};
use anyhow::{bail, Context};
use nix::errno::Errno;
use parse::PathInfo;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use host::build_prebuilt_db;

/// Where Nix keeps its state, inside the new root.
pub const NIX_STATE_DIR: &str = "/nix/var/nix";
/// The database directory, inside the new root.
pub const NIX_DB_DIR: &str = "/nix/var/nix/db";
/// The NixOS marker, inside the new root.
pub const NIXOS_MARKER: &str = "/etc/NIXOS";
/// The environment of the image's `nix-store`: nothing from PID 1's environment leaks in,
/// no daemon is tried, and no user config is found. `USER` is needed because the new root has
/// no /etc/passwd yet and Nix refuses to run when it cannot name the user.
pub const NIX_STORE_ENV: &[(&str, &str)] = &[
    ("PATH", "/no-such-path"),
    ("HOME", "/homeless-shelter"),
    ("USER", "root"),
    ("NIX_REMOTE", "local"),
];
/// A hung `nix-store` must not hang the boot; loading 100,000 paths takes well under this.
pub const LOAD_DB_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of a failed `nix-store`'s stderr goes into the error message.
const STDERR_TAIL_LINES: usize = 10;

/// The syscalls of the registration phase. Reading the registration file and checking that
/// paths exist use std::fs directly; everything that changes the system goes through here.
pub trait RegistrationOps {
    /// `mkdir -p`, mode 0755.
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno>;
    /// A fresh proc file system on `target`.
    fn mount_proc(&self, target: &Path) -> Result<(), Errno>;
    /// A (non-recursive) bind mount of `source` on `target`.
    fn bind_mount(&self, source: &Path, target: &Path) -> Result<(), Errno>;
    /// A lazy unmount: the process that used the mount has exited.
    fn umount(&self, target: &Path) -> Result<(), Errno>;
    /// Runs `command` chrooted into its root and waits for it; `Err` only if it could not start.
    fn spawn_chrooted(&self, command: &ChrootCommand) -> Result<ProcessOutput, Errno>;
    /// Copies directories, regular files and symlinks with their permission bits.
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), Errno>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno>;
    fn rename(&self, from: &Path, to: &Path) -> Result<(), Errno>;
    /// Creates or truncates `path` (mode 0644) with `contents`.
    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<(), Errno>;
}

/// A program to run inside a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrootCommand {
    /// The root, as seen from PID 1.
    pub root: PathBuf,
    /// Inside the root.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// A file opened before the chroot, as seen from PID 1.
    pub stdin: PathBuf,
    /// Killed (SIGKILL) when still running after this long.
    pub timeout: Duration,
}

impl fmt::Display for ChrootCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.display())?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed after running longer than its timeout.
    TimedOut(Duration),
}

impl From<std::process::ExitStatus> for Exit {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::TimedOut(t) => write!(f, "a timeout (killed after {} s)", t.as_secs()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutput {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Failures of the registration phase, each naming the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("{step} {path}: {errno}")]
    Sys {
        step: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("cannot start {program} in {root}: {errno}")]
    Spawn {
        program: PathBuf,
        root: PathBuf,
        errno: Errno,
    },
    #[error("`{command}` in {root} failed with {exit}{}", tail_suffix(.stderr_tail))]
    Failed {
        command: String,
        root: PathBuf,
        exit: Exit,
        stderr_tail: String,
    },
    // `error`, not `source`: thiserror would make it the source and `{:#}` print it twice.
    #[error("cannot read registration file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("registration file {path}: {error}")]
    Parse {
        path: PathBuf,
        error: parse::ParseError,
    },
    #[error("registration file {path} names {} path(s) missing from the image under {root}: {}", .missing.len(), list(.missing))]
    Missing {
        path: PathBuf,
        root: PathBuf,
        missing: Vec<String>,
    },
    #[error(
        "registration file {path}: {referrer} references {reference}, which is not registered"
    )]
    Dangling {
        path: PathBuf,
        referrer: String,
        reference: String,
    },
    #[error("registration file {path} does not register the system toplevel {toplevel}")]
    ToplevelNotRegistered { path: PathBuf, toplevel: String },
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        " and no output on stderr".into()
    } else {
        format!(": {tail}")
    }
}

/// The first few names of a list, for messages.
fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

fn sys_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> RegistrationError + 'a {
    move |errno| RegistrationError::Sys {
        step,
        path: path.to_path_buf(),
        errno,
    }
}

/// What the phase did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationReport {
    pub mode: RegistrationMode,
    /// Paths in the registration (load-db) or none when it was not read.
    pub paths: Option<usize>,
    /// The profile generation link made or reused, e.g. `system-1-link`, and its target.
    pub profile: Option<(String, String)>,
    pub nixos_marker: bool,
    /// Things the user should know that did not stop the boot.
    pub warnings: Vec<String>,
}

impl fmt::Display for RegistrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mode, self.paths) {
            (RegistrationMode::LoadDb, Some(n)) => write!(f, "load-db: {n} paths registered")?,
            (RegistrationMode::LoadDb, None) => write!(f, "load-db")?,
            (RegistrationMode::Prebuilt, _) => write!(f, "prebuilt database installed")?,
            (RegistrationMode::None, _) => write!(f, "no database")?,
        }
        if self.nixos_marker {
            write!(f, ", {NIXOS_MARKER}")?;
        }
        match &self.profile {
            Some((link, target)) => write!(f, ", system profile {link} -> {target}")?,
            None => write!(f, ", no system profile")?,
        }
        for warning in &self.warnings {
            write!(f, "; warning: {warning}")?;
        }
        Ok(())
    }
}

/// `inner` (absolute) under `root`.
pub fn under(root: &Path, inner: &str) -> PathBuf {
    root.join(inner.trim_start_matches('/'))
}

/// The system toplevel: the config's, else the directory of the stage-2 init
/// (`/nix/store/...-nixos-system-.../init`), which must be a store path.
pub fn toplevel(config: &Config, stage2_init: &str) -> Result<String, String> {
    if let Some(t) = &config.registration.toplevel {
        return parse::check_store_path(t, parse::STORE_DIR)
            .map(|()| t.clone())
            .map_err(|why| format!("registration.toplevel {t:?} is not a store path: {why}"));
    }
    let parent = Path::new(stage2_init)
        .parent()
        .and_then(Path::to_str)
        .unwrap_or("");
    parse::check_store_path(parent, parse::STORE_DIR)
        .map(|()| parent.to_string())
        .map_err(|why| {
            format!(
                "cannot derive the system toplevel from init {stage2_init:?} \
                 ({parent:?} is not a store path: {why}) and registration.toplevel is unset"
            )
        })
}

/// Runs the registration phase on `config.target_root`. `initrd_root` is `/` at boot; the
/// prebuilt database and the /dev bound into the new root for `nix-store` are found under it.
pub fn register<S: RegistrationOps>(
    sys: &S,
    config: &Config,
    stage2_init: &str,
    initrd_root: &Path,
) -> anyhow::Result<RegistrationReport> {
    let reg = &config.registration;
    let target = Path::new(&config.target_root);
    let mut report = RegistrationReport {
        mode: reg.mode,
        paths: None,
        profile: None,
        nixos_marker: false,
        warnings: Vec::new(),
    };
    let toplevel = if reg.system_profile {
        match toplevel(config, stage2_init) {
            Ok(t) => Some(t),
            Err(why) if reg.toplevel.is_some() => bail!(why),
            Err(why) => {
                log::warn!("registration: no system profile: {why}");
                report.warnings.push(format!("no system profile: {why}"));
                None
            }
        }
    } else {
        None
    };

    match reg.mode {
        RegistrationMode::None => {}
        RegistrationMode::LoadDb => {
            let Some(nix_store) = &reg.nix_store else {
                bail!("registration.nixStore is required for mode load-db");
            };
            let file = under(target, &reg.registration_file);
            let infos = read_and_validate(&file, target)?;
            if let Some(t) = &toplevel {
                if !infos.iter().any(|i| &i.path == t) {
                    return Err(RegistrationError::ToplevelNotRegistered {
                        path: file,
                        toplevel: t.clone(),
                    }
                    .into());
                }
            }
            load_db(sys, target, initrd_root, Path::new(nix_store), &file)?;
            report.paths = Some(infos.len());
        }
        RegistrationMode::Prebuilt => {
            let db = under(initrd_root, &reg.prebuilt_db);
            install_prebuilt(sys, &db, target)?;
        }
    }

    if reg.nixos_marker {
        let etc = under(target, "/etc");
        sys.mkdir_all(&etc).map_err(sys_err("mkdir", &etc))?;
        let marker = under(target, NIXOS_MARKER);
        sys.write_file(&marker, b"")
            .map_err(sys_err("write", &marker))?;
        report.nixos_marker = true;
    }
    if let Some(t) = toplevel {
        // load-db checked this against the registration already.
        if reg.mode != RegistrationMode::LoadDb
            && std::fs::symlink_metadata(under(target, &t)).is_err()
        {
            let why = format!("the system toplevel {t} is not in the image");
            log::warn!("registration: {why}");
            report.warnings.push(why);
        }
        let link = profile::set_system_profile(sys, target, &t)?;
        report.profile = Some((link, t));
    }
    Ok(report)
}

/// Reads and parses the registration file and checks it against the image: every path exists
/// under `target` and every reference is registered.
pub fn read_and_validate(file: &Path, target: &Path) -> Result<Vec<PathInfo>, RegistrationError> {
    let read_error = |error| RegistrationError::Read {
        path: file.to_path_buf(),
        error,
    };
    let bytes = crate::sys::read_limited(file, parse::MAX_FILE_SIZE as u64).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })?;
    let infos = parse::parse(&text).map_err(|error| RegistrationError::Parse {
        path: file.to_path_buf(),
        error,
    })?;
    validate(&infos, file, target)?;
    Ok(infos)
}

/// The checks `nix-store --load-db` does not make (missing paths) or makes late (references).
pub fn validate(infos: &[PathInfo], file: &Path, target: &Path) -> Result<(), RegistrationError> {
    let missing: Vec<String> = infos
        .iter()
        .filter(|i| std::fs::symlink_metadata(under(target, &i.path)).is_err())
        .map(|i| i.path.clone())
        .collect();
    if !missing.is_empty() {
        return Err(RegistrationError::Missing {
            path: file.to_path_buf(),
            root: target.to_path_buf(),
            missing,
        });
    }
    let registered: std::collections::HashSet<&str> =
        infos.iter().map(|i| i.path.as_str()).collect();
    for info in infos {
        if let Some(r) = info
            .references
            .iter()
            .find(|r| !registered.contains(r.as_str()))
        {
            return Err(RegistrationError::Dangling {
                path: file.to_path_buf(),
                referrer: info.path.clone(),
                reference: r.clone(),
            });
        }
    }
    Ok(())
}

/// The `nix-store --load-db` command for `nix_store` (inside `target`).
pub fn load_db_command(target: &Path, nix_store: &Path, registration_file: &Path) -> ChrootCommand {
    ChrootCommand {
        root: target.to_path_buf(),
        program: nix_store.to_path_buf(),
        args: vec!["--load-db".into()],
        env: NIX_STORE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stdin: registration_file.to_path_buf(),
        timeout: LOAD_DB_TIMEOUT,
    }
}

/// Runs the image's `nix-store --load-db` in `target` with /proc and /dev available.
fn load_db<S: RegistrationOps>(
    sys: &S,
    target: &Path,
    initrd_root: &Path,
    nix_store: &Path,
    file: &Path,
) -> anyhow::Result<()> {
    let proc_dir = under(target, "/proc");
    let dev_dir = under(target, "/dev");
    for dir in [&proc_dir, &dev_dir] {
        sys.mkdir_all(dir).map_err(sys_err("mkdir", dir))?;
    }
    sys.mount_proc(&proc_dir)
        .map_err(sys_err("mount proc on", &proc_dir))?;
    let dev = under(initrd_root, "/dev");
    if let Err(errno) = sys.bind_mount(&dev, &dev_dir) {
        let _ = sys.umount(&proc_dir);
        return Err(RegistrationError::Sys {
            step: "bind /dev on",
            path: dev_dir,
            errno,
        }
        .into());
    }
    let command = load_db_command(target, nix_store, file);
    let started = Instant::now();
    let result = sys.spawn_chrooted(&command);
    // Unmount before looking at the result: the hand-off moves the initrd's /proc and /dev here.
    let umounted = [&dev_dir, &proc_dir]
        .into_iter()
        .map(|dir| sys.umount(dir).map_err(sys_err("umount", dir)))
        .collect::<Result<Vec<()>, _>>();
    let output = result.map_err(|errno| RegistrationError::Spawn {
        program: nix_store.to_path_buf(),
        root: target.to_path_buf(),
        errno,
    })?;
    log::debug!(
        "registration: {command} finished in {:.2} ms with {}",
        started.elapsed().as_secs_f64() * 1e3,
        output.exit
    );
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            log::info!("nix-store {stream}: {line}");
        }
    }
    if output.exit != Exit::Code(0) {
        return Err(RegistrationError::Failed {
            command: format!("{command} < {}", file.display()),
            root: target.to_path_buf(),
            exit: output.exit,
            stderr_tail: tail(&output.stderr, STDERR_TAIL_LINES),
        }
        .into());
    }
    umounted?;
    Ok(())
}

/// The last `n` non-empty lines of `bytes`, joined with " | " so they fit one log line.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Copies the prebuilt database to `/nix/var/nix/db` of `target`.
fn install_prebuilt<S: RegistrationOps>(sys: &S, db: &Path, target: &Path) -> anyhow::Result<()> {
    for file in ["db.sqlite", "schema"] {
        let p = db.join(file);
        if !p.is_file() {
            bail!(
                "prebuilt Nix database {} has no {file} (is registration.prebuiltDb right, \
                 and was the database built into the initrd?)",
                db.display()
            );
        }
    }
    let state = under(target, NIX_STATE_DIR);
    sys.mkdir_all(&state).map_err(sys_err("mkdir", &state))?;
    let to = under(target, NIX_DB_DIR);
    sys.copy_tree(db, &to)
        .map_err(|errno| RegistrationError::Sys {
            step: "copy prebuilt database to",
            path: to.clone(),
            errno,
        })
        .with_context(|| format!("installing prebuilt database {}", db.display()))?;
    Ok(())
}

impl RegistrationOps for Real {
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| io_errno(&e))
    }

    fn mount_proc(&self, target: &Path) -> Result<(), Errno> {
        use nix::mount::{mount, MsFlags};
        mount(
            Some("proc"),
            target,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    }

    fn bind_mount(&self, source: &Path, target: &Path) -> Result<(), Errno> {
        use nix::mount::{mount, MsFlags};
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    }

    fn umount(&self, target: &Path) -> Result<(), Errno> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
    }

    fn spawn_chrooted(&self, command: &ChrootCommand) -> Result<ProcessOutput, Errno> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let stdin = std::fs::File::open(&command.stdin).map_err(|e| io_errno(&e))?;
        let root = command.root.clone();
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .env_clear()
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: chroot and chdir are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::chroot(&root)?;
                nix::unistd::chdir("/")?;
                Ok(())
            });
        }
        let mut child = crate::frame::reaper::spawn_owned(&mut cmd).map_err(|e| io_errno(&e))?;
        let pid = child.id();
        let result = wait_with_timeout(&mut child, command.timeout);
        crate::frame::reaper::release(pid);
        let (status, stdout, stderr) = result.map_err(|e| io_errno(&e))?;
        let exit = match status {
            None => Exit::TimedOut(command.timeout),
            Some(status) => Exit::from(status),
        };
        Ok(ProcessOutput {
            exit,
            stdout,
            stderr,
        })
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        host::copy_tree(from, to).map_err(|e| io_errno(&e))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        std::os::unix::fs::symlink(target, link).map_err(|e| io_errno(&e))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        std::fs::rename(from, to).map_err(|e| io_errno(&e))
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<(), Errno> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| io_errno(&e))?;
        f.write_all(contents).map_err(|e| io_errno(&e))
    }
}

/// How much of each of `nix-store`'s output streams is kept (the end of it): a runaway child
/// must not fill PID 1's memory.
const MAX_CAPTURED_BYTES: usize = 1 << 20;

/// Reads `pipe` to its end, keeping the last [`MAX_CAPTURED_BYTES`].
fn drain_tail(mut pipe: impl std::io::Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > 2 * MAX_CAPTURED_BYTES {
                    kept.drain(..kept.len() - MAX_CAPTURED_BYTES);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if kept.len() > MAX_CAPTURED_BYTES {
        kept.drain(..kept.len() - MAX_CAPTURED_BYTES);
    }
    kept
}

/// Waits for `child` while threads drain its pipes; `None` if it was killed at the timeout.
#[allow(clippy::type_complexity)]
fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, Vec<u8>, Vec<u8>)> {
    // `std::thread::spawn` panics when the kernel refuses a thread; the Builder reports it.
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::io::Result<Option<std::thread::JoinHandle<Vec<u8>>>> {
        pipe.map(|p| std::thread::Builder::new().spawn(move || drain_tail(p)))
            .transpose()
    }
    let drains = drain(child.stdout.take()).and_then(|out| Ok((out, drain(child.stderr.take())?)));
    let (stdout, stderr) = match drains {
        Ok(handles) => handles,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok((status, join(stdout), join(stderr)))
}

/// The Fake's `spawn-chrooted` answers with exit status 0 and no output unless a test set a
/// response with [`Fake::respond_on`]: `"<exit code>\n<stderr>"`.
impl RegistrationOps for Fake {
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        self.record(format!("mkdir -p {}", path.display()))
    }

    fn mount_proc(&self, target: &Path) -> Result<(), Errno> {
        self.record(format!("mount proc {} proc", target.display()))
    }

    fn bind_mount(&self, source: &Path, target: &Path) -> Result<(), Errno> {
        self.record(format!("bind {} {}", source.display(), target.display()))
    }

    fn umount(&self, target: &Path) -> Result<(), Errno> {
        self.record(format!("umount {}", target.display()))
    }

    fn spawn_chrooted(&self, command: &ChrootCommand) -> Result<ProcessOutput, Errno> {
        let line = format!(
            "spawn-chrooted {} {command} <stdin {}",
            command.root.display(),
            command.stdin.display()
        );
        self.record(line.clone())?;
        let (exit, stderr) = match self.response(&line) {
            Some(r) => {
                let (code, stderr) = r.split_once('\n').unwrap_or((r.as_str(), ""));
                (
                    Exit::Code(code.trim().parse().unwrap_or(1)),
                    stderr.to_string(),
                )
            }
            None => (Exit::Code(0), String::new()),
        };
        Ok(ProcessOutput {
            exit,
            stdout: Vec::new(),
            stderr: stderr.into_bytes(),
        })
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        self.record(format!("copy-tree {} -> {}", from.display(), to.display()))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        self.record(format!("symlink {} {}", target.display(), link.display()))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        self.record(format!("rename {} {}", from.display(), to.display()))
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<(), Errno> {
        self.record(format!(
            "write {} ({} bytes)",
            path.display(),
            contents.len()
        ))
    }
}

#[cfg(test)]
mod tests;
