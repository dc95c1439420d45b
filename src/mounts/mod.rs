//! Phase 3: the file systems of the config, in order, under the target root.
//!
//! For netboot.nix that is a tmpfs `/`, the squashfs store file attached to a loop device and
//! mounted read-only at `/nix/.ro-store` (with `threads=multi` where the kernel takes it), a
//! tmpfs `/nix/.rw-store`, and their overlay on `/nix/store`.
//!
//! Every syscall goes through [`MountOps`]. The `mount(2)` call itself is
//! `nix::mount::mount`: `sys-mount` builds without its `loop` feature, but then offers nothing
//! beyond the same call and brings `tracing` and a proc-macro crate along.

pub mod loopdev;
pub mod memory;
pub mod mountinfo;
pub mod options;
pub mod overlay;
pub mod squashfs;

use crate::config::{Config, FileSystem};
use anyhow::Context;
use loopdev::LoopFlags;
use nix::errno::Errno;
use nix::mount::MsFlags;
use options::{FlagNames, MountOptions, OptionsError};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Loop devices are `/dev/loopN`.
pub const LOOP_DEVICE_PREFIX: &str = "/dev/loop";

/// How often a free loop device is looked for when other processes keep taking it.
pub const MAX_LOOP_ATTEMPTS: u32 = 8;

/// The syscalls of this phase.
pub trait MountOps {
    /// An open loop device. It stays open until the file system on it is mounted: an
    /// autoclear device is detached when its last opener closes it.
    type Loop;

    /// `mkdir -p` with mode 0755.
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno>;
    /// `mount(2)`; an empty `data` is passed as NULL.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), Errno>;
    /// `umount2(target, 0)`.
    fn umount(&self, target: &Path) -> Result<(), Errno>;
    /// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the index of a free loop device.
    fn loop_get_free(&self) -> Result<u32, Errno>;
    /// Opens `/dev/loopN` read-only.
    fn loop_open(&self, index: u32) -> Result<Self::Loop, Errno>;
    /// `LOOP_CONFIGURE` (Linux 5.8) with `backing` opened read-only.
    fn loop_configure(
        &self,
        dev: &Self::Loop,
        backing: &Path,
        flags: LoopFlags,
    ) -> Result<(), Errno>;
    /// `LOOP_SET_FD` with `backing` opened read-only (older kernels).
    fn loop_set_fd(&self, dev: &Self::Loop, backing: &Path) -> Result<(), Errno>;
    /// `LOOP_SET_STATUS64` (only the autoclear flag is settable this way).
    fn loop_set_status(
        &self,
        dev: &Self::Loop,
        backing: &Path,
        flags: LoopFlags,
    ) -> Result<(), Errno>;
    /// `LOOP_SET_DIRECT_IO`.
    fn loop_set_direct_io(&self, dev: &Self::Loop, on: bool) -> Result<(), Errno>;
    /// `LOOP_GET_STATUS64`: the flags in effect.
    fn loop_get_flags(&self, dev: &Self::Loop) -> Result<LoopFlags, Errno>;
    /// `LOOP_CLR_FD`.
    fn loop_clear(&self, dev: &Self::Loop) -> Result<(), Errno>;
}

/// Failures of this phase, each naming the step, the path and the errno.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("options: {0}")]
    Options(OptionsError),
    #[error("mount point {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("device missing (fsType {0} needs one)")]
    NoDevice(String),
    #[error("file {path} for the loop device is missing")]
    MissingFile { path: PathBuf },
    #[error("overlay: {0}")]
    Overlay(overlay::OverlayError),
    #[error("create directory {path}: {errno}")]
    Mkdir { path: PathBuf, errno: Errno },
    #[error(transparent)]
    Image(#[from] squashfs::ImageError),
    #[error("find a free loop device (LOOP_CTL_GET_FREE on /dev/loop-control): {errno}{}",
        if *.errno == Errno::ENOENT { " (no /dev/loop-control: is the loop driver loaded?)" } else { "" })]
    LoopGetFree { errno: Errno },
    #[error("open {device}: {errno}")]
    LoopOpen { device: String, errno: Errno },
    #[error("attach {backing} to {device} with {step}: {errno}")]
    LoopAttach {
        backing: PathBuf,
        device: String,
        step: &'static str,
        errno: Errno,
    },
    #[error("attach {backing}: every free loop device was taken by another process ({attempts} attempts)")]
    LoopBusy { backing: PathBuf, attempts: u32 },
    #[error(transparent)]
    Mount(Box<MountFailure>),
}

/// A refused `mount(2)`, with what was asked and a hint at the cause.
#[derive(Debug, thiserror::Error)]
#[error("mount {fstype} {device} on {target} (flags {flags}, data {data:?}): {errno}{hint}")]
pub struct MountFailure {
    pub device: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: String,
    pub data: String,
    pub errno: Errno,
    pub hint: String,
}

// By hand rather than `#[from]`, which would also make them the `source` and print them twice.
impl From<OptionsError> for MountError {
    fn from(e: OptionsError) -> Self {
        MountError::Options(e)
    }
}

impl From<overlay::OverlayError> for MountError {
    fn from(e: overlay::OverlayError) -> Self {
        MountError::Overlay(e)
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    Mounted,
    /// Something is mounted there already (its fsType and source); left alone.
    AlreadyMounted {
        fs_type: String,
        source: String,
    },
    /// `noauto`.
    Skipped,
    /// Failed, but `nofail` said to go on.
    FailedNofail(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOutcome {
    pub mount_point: String,
    pub target: PathBuf,
    pub fs_type: String,
    pub state: MountState,
    pub loop_device: Option<String>,
    /// Things worth a word in the summary (e.g. `threads=multi refused`).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountsReport {
    pub entries: Vec<MountOutcome>,
}

impl fmt::Display for MountsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mounted = self
            .entries
            .iter()
            .filter(|e| e.state == MountState::Mounted)
            .count();
        write!(
            f,
            "{mounted} of {} file systems mounted",
            self.entries.len()
        )?;
        for (i, e) in self.entries.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{} {}", e.mount_point, e.fs_type)?;
            if let Some(dev) = &e.loop_device {
                write!(f, " on {dev}")?;
            }
            match &e.state {
                MountState::Mounted => {}
                MountState::AlreadyMounted { .. } => f.write_str(" (already mounted)")?,
                MountState::Skipped => f.write_str(" (noauto)")?,
                MountState::FailedNofail(_) => f.write_str(" (FAILED, nofail)")?,
            }
            for n in &e.notes {
                write!(f, " ({n})")?;
            }
        }
        Ok(())
    }
}

/// `root` + `inner` (an absolute path inside the new root); `..` is refused.
pub fn under_root(root: &Path, inner: &str) -> Result<PathBuf, MountError> {
    let bad = |reason| MountError::BadPath {
        path: inner.to_string(),
        reason,
    };
    if !inner.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    if inner.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut out = root.to_path_buf();
    for c in Path::new(inner).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(bad("contains `..`")),
            Component::Prefix(_) => return Err(bad("has a prefix")),
        }
    }
    Ok(out)
}

/// NixOS device semantics: an absolute device as given, a relative one against `/` of the
/// initrd (`initrd_root`), with `..` stopping at that root as it does at `/`.
pub fn resolve_device(initrd_root: &Path, device: &str) -> PathBuf {
    if device.starts_with('/') {
        return PathBuf::from(device);
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(device).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let mut out = initrd_root.to_path_buf();
    out.extend(parts);
    out
}

/// A loop device attached to a file.
#[derive(Debug)]
pub struct AttachedLoop<L> {
    /// Keep it until the mount is done (autoclear).
    pub handle: L,
    pub index: u32,
    pub device: String,
    /// The flags the kernel reports (direct I/O only when asked for).
    pub flags: LoopFlags,
    /// `LOOP_CONFIGURE` or `LOOP_SET_FD`.
    pub method: &'static str,
}

/// Attaches `backing` read-only with autoclear (and direct I/O if asked) to a free loop
/// device: `LOOP_CONFIGURE`, or `LOOP_SET_FD` + `LOOP_SET_STATUS64` on kernels without it;
/// a device another process took meanwhile (EBUSY) means trying the next free one.
pub fn attach_loop<S: MountOps>(
    sys: &S,
    backing: &Path,
    direct_io: bool,
) -> Result<AttachedLoop<S::Loop>, MountError> {
    let flags = LoopFlags {
        read_only: true,
        autoclear: true,
        direct_io,
    };
    for attempt in 1..=MAX_LOOP_ATTEMPTS {
        let index = sys
            .loop_get_free()
            .map_err(|errno| MountError::LoopGetFree { errno })?;
        let device = format!("{LOOP_DEVICE_PREFIX}{index}");
        let handle = sys.loop_open(index).map_err(|errno| MountError::LoopOpen {
            device: device.clone(),
            errno,
        })?;
        let attach_err = |step, errno| MountError::LoopAttach {
            backing: backing.to_path_buf(),
            device: device.clone(),
            step,
            errno,
        };
        let method = match sys.loop_configure(&handle, backing, flags) {
            Ok(()) => "LOOP_CONFIGURE",
            Err(Errno::EBUSY) => {
                log::debug!(
                    "{device} was taken by another process (attempt {attempt}); trying another"
                );
                continue;
            }
            Err(e) if loopdev::configure_unsupported(e) => {
                log::debug!("LOOP_CONFIGURE on {device}: {e}; using LOOP_SET_FD");
                match sys.loop_set_fd(&handle, backing) {
                    Ok(()) => {}
                    Err(Errno::EBUSY) => {
                        log::debug!("{device} was taken by another process (attempt {attempt}); trying another");
                        continue;
                    }
                    Err(e) => return Err(attach_err("LOOP_SET_FD", e)),
                }
                if let Err(e) = sys.loop_set_status(&handle, backing, flags) {
                    if let Err(c) = sys.loop_clear(&handle) {
                        log::warn!("detach {device} after a failed LOOP_SET_STATUS64: {c}");
                    }
                    return Err(attach_err("LOOP_SET_STATUS64", e));
                }
                if direct_io {
                    if let Err(e) = sys.loop_set_direct_io(&handle, true) {
                        log::warn!("{device}: LOOP_SET_DIRECT_IO refused ({e}); reading {} through the page cache", backing.display());
                    }
                }
                "LOOP_SET_FD"
            }
            Err(e) => return Err(attach_err("LOOP_CONFIGURE", e)),
        };
        let mut effective = flags;
        if direct_io {
            // The kernel silently drops direct I/O when the backing file system cannot do it.
            match sys.loop_get_flags(&handle) {
                Ok(got) => effective = got,
                Err(e) => log::warn!("{device}: LOOP_GET_STATUS64: {e}"),
            }
            if !effective.direct_io {
                log::warn!(
                    "{device}: direct I/O asked for but not in effect: the file system holding {} cannot do O_DIRECT (tmpfs before Linux 6.6, ramfs) or its block size does not fit",
                    backing.display()
                );
            }
        }
        log::debug!("{} -> {device} ({effective}, {method})", backing.display());
        return Ok(AttachedLoop {
            handle,
            index,
            device,
            flags: effective,
            method,
        });
    }
    Err(MountError::LoopBusy {
        backing: backing.to_path_buf(),
        attempts: MAX_LOOP_ATTEMPTS,
    })
}

/// Everything one entry needs besides the syscalls.
struct Ctx<'a> {
    target_root: PathBuf,
    initrd_root: &'a Path,
    table: mountinfo::MountTable,
}

/// Mounts `config.file_systems` in order under `config.target_root`.
///
/// `initrd_root` is `/` of the initrd (relative devices resolve against it); `mountinfo` is
/// `/proc/self/mountinfo`, read once to leave mounts already in place alone.
pub fn mount_all<S: MountOps>(
    sys: &S,
    config: &Config,
    initrd_root: &Path,
    mountinfo: &Path,
) -> anyhow::Result<MountsReport> {
    let table = match mountinfo::read(mountinfo) {
        Ok(table) => table,
        Err(e) => {
            log::warn!(
                "cannot read {}: {e}; assuming nothing is mounted under {}",
                mountinfo.display(),
                config.target_root
            );
            mountinfo::MountTable::default()
        }
    };
    if !table.skipped.is_empty() {
        log::debug!(
            "{}: skipped unreadable lines {:?}",
            mountinfo.display(),
            table.skipped
        );
    }
    let target_root = under_root(Path::new("/"), &config.target_root).context("targetRoot")?;
    let ctx = Ctx {
        target_root,
        initrd_root,
        table,
    };
    let mut report = MountsReport::default();
    for (i, fs) in config.file_systems.iter().enumerate() {
        let what = format!("fileSystems[{i}] {} ({})", fs.mount_point, fs.fs_type);
        let opts = options::parse(&fs.options)
            .map_err(MountError::from)
            .with_context(|| what.clone())?;
        let outcome = match mount_one(sys, &ctx, fs, &opts) {
            Ok(o) => o,
            Err(e) if opts.nofail => {
                let msg = format!("{e:#}");
                log::warn!("{what}: {msg}; going on (nofail)");
                MountOutcome {
                    mount_point: fs.mount_point.clone(),
                    target: under_root(&ctx.target_root, &fs.mount_point).unwrap_or_default(),
                    fs_type: fs.fs_type.clone(),
                    state: MountState::FailedNofail(msg),
                    loop_device: None,
                    notes: vec![],
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what)),
        };
        if outcome.state == MountState::Mounted {
            log::info!(
                "mounted {} on {}{}",
                fs.fs_type,
                outcome.target.display(),
                outcome
                    .loop_device
                    .as_ref()
                    .map(|d| format!(" via {d}"))
                    .unwrap_or_default()
            );
        }
        report.entries.push(outcome);
    }
    Ok(report)
}

/// The form of a path mountinfo shows.
fn path_key(p: &Path) -> String {
    let s = p.to_string_lossy();
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.into()
    }
}

fn mount_one<S: MountOps>(
    sys: &S,
    ctx: &Ctx<'_>,
    fs: &FileSystem,
    opts: &MountOptions,
) -> Result<MountOutcome, MountError> {
    let target = under_root(&ctx.target_root, &fs.mount_point)?;
    let mut outcome = MountOutcome {
        mount_point: fs.mount_point.clone(),
        target: target.clone(),
        fs_type: fs.fs_type.clone(),
        state: MountState::Mounted,
        loop_device: None,
        notes: vec![],
    };
    if opts.noauto {
        log::info!("{}: noauto, not mounted", fs.mount_point);
        outcome.state = MountState::Skipped;
        return Ok(outcome);
    }
    if let Some(m) = ctx.table.find(&path_key(&target)) {
        log::info!(
            "{} is already mounted ({} from {}); leaving it alone",
            target.display(),
            m.fs_type,
            m.source
        );
        if m.fs_type != fs.fs_type {
            log::warn!(
                "{}: the config says {}, but {} is mounted there",
                target.display(),
                fs.fs_type,
                m.fs_type
            );
        }
        outcome.state = MountState::AlreadyMounted {
            fs_type: m.fs_type.clone(),
            source: m.source.clone(),
        };
        return Ok(outcome);
    }
    if !opts.ignored.is_empty() {
        log::debug!(
            "{}: not passed to the kernel: {}",
            fs.mount_point,
            opts.ignored.join(",")
        );
    }
    let mkdir = |path: &Path| {
        sys.mkdir_all(path).map_err(|errno| MountError::Mkdir {
            path: path.to_path_buf(),
            errno,
        })
    };
    mkdir(&target)?;

    if fs.fs_type == "overlay" {
        return mount_overlay(sys, ctx, fs, opts, outcome, &mkdir);
    }

    let mut flags = opts.flags;
    let squash = fs.fs_type == "squashfs";
    if squash {
        flags.insert(MsFlags::MS_RDONLY);
    }
    let device = fs.device.as_deref().unwrap_or("");
    // A file needs a loop device: asked for with `loop`, or found to be a regular file.
    let as_path =
        (opts.loop_device || device.contains('/')).then(|| resolve_device(ctx.initrd_root, device));
    let is_file = as_path
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.is_file());
    let missing = as_path.as_deref().is_some_and(|p| !p.exists());
    // A squashfs "device" that is not there is most likely the image file: say so.
    let use_loop = opts.loop_device || is_file || (squash && missing);
    if use_loop && device.is_empty() {
        return Err(MountError::NoDevice(fs.fs_type.clone()));
    }

    let mut superblock = None;
    let mut attached = None;
    let source = match (&as_path, use_loop) {
        (Some(file), true) => {
            if squash {
                let sb = squashfs::check_image(file)?;
                log::debug!("{}: {sb}", file.display());
                superblock = Some(sb);
            } else if !file.exists() {
                return Err(MountError::MissingFile { path: file.clone() });
            }
            let lo = attach_loop(sys, file, opts.direct_io())?;
            let dev = lo.device.clone();
            outcome.loop_device = Some(dev.clone());
            if opts.direct_io() && !lo.flags.direct_io {
                outcome.notes.push("direct I/O not in effect".into());
            }
            attached = Some(lo);
            dev
        }
        (Some(p), false) => {
            // A block device holding a squashfs: same checks, minus the size.
            if squash {
                superblock = Some(squashfs::check_image(p)?);
            }
            p.to_string_lossy().into_owned()
        }
        (None, _) if device.is_empty() => fs.fs_type.clone(),
        (None, _) => device.to_string(),
    };

    let mut data = opts.data.clone();
    let result = loop {
        let data_s = data.join(",");
        match sys.mount(&source, &target, &fs.fs_type, flags, &data_s) {
            Ok(()) => break Ok(()),
            Err(Errno::EINVAL) if squash && data.iter().any(|d| d.starts_with("threads=")) => {
                let refused: Vec<String> = data
                    .iter()
                    .filter(|d| d.starts_with("threads="))
                    .cloned()
                    .collect();
                log::warn!(
                    "the kernel refused squashfs option {} on {} (EINVAL): choosing the decompressor per mount needs Linux >= 6.2 built with CONFIG_SQUASHFS_CHOICE_DECOMP_BY_MOUNT; mounting without it",
                    refused.join(","),
                    target.display()
                );
                outcome
                    .notes
                    .push(format!("{} refused, mounted without", refused.join(",")));
                data.retain(|d| !d.starts_with("threads="));
            }
            Err(errno) => break Err((errno, data_s)),
        }
    };
    // The file system holds the loop device now (or the mount failed and autoclear detaches).
    drop(attached);
    if let Err((errno, data_s)) = result {
        return Err(MountError::Mount(Box::new(MountFailure {
            device: source,
            target,
            fstype: fs.fs_type.clone(),
            flags: FlagNames(flags).to_string(),
            data: data_s,
            errno,
            hint: mount_hint(&fs.fs_type, errno, superblock.as_ref()),
        })));
    }
    Ok(outcome)
}

fn mount_hint(fs_type: &str, errno: Errno, sb: Option<&squashfs::Superblock>) -> String {
    match (errno, sb) {
        (Errno::EINVAL, Some(sb)) => format!(
            ": the superblock is sound ({sb}), so the kernel may lack the {} decompressor ({}); see the kernel log",
            sb.compressor_name(),
            sb.compressor_config()
        ),
        (Errno::ENODEV, _) => format!(
            ": the kernel has no {fs_type} file system (module not loaded or not built)"
        ),
        (Errno::ENOENT, _) => ": the mount point or the device does not exist".into(),
        (Errno::ENOTBLK, _) => ": the device is not a block device (missing `loop` option?)".into(),
        (Errno::ENXIO, _) | (Errno::ENODATA, _) => ": the device has no medium".into(),
        _ => String::new(),
    }
}

fn mount_overlay<S: MountOps>(
    sys: &S,
    ctx: &Ctx<'_>,
    fs: &FileSystem,
    opts: &MountOptions,
    outcome: MountOutcome,
    mkdir: &dyn Fn(&Path) -> Result<(), MountError>,
) -> Result<MountOutcome, MountError> {
    // Layers from `overlay = { ... }`, or the older `lowerdir=` style in the options; either
    // way paths inside the new root.
    let mut lower: Vec<String> = vec![];
    let mut upper = None;
    let mut work = None;
    let mut extra = vec![];
    for d in &opts.data {
        match d.split_once('=') {
            Some(("lowerdir", v)) => lower.extend(overlay::split_lowerdir(v)),
            Some(("upperdir", v)) => upper = Some(overlay::unescape(v)),
            Some(("workdir", v)) => work = Some(overlay::unescape(v)),
            _ => extra.push(d.clone()),
        }
    }
    if let Some(o) = &fs.overlay {
        lower = o.lowerdir.clone();
        upper = o.upperdir.clone();
        work = o.workdir.clone();
    }
    let root = &ctx.target_root;
    let layers = overlay::Layers {
        lower: lower
            .iter()
            .map(|l| under_root(root, l))
            .collect::<Result<_, _>>()?,
        upper: upper.as_deref().map(|u| under_root(root, u)).transpose()?,
        work: work.as_deref().map(|w| under_root(root, w)).transpose()?,
    };
    let data = overlay::data(&layers, &extra)?;
    for dir in [&layers.upper, &layers.work].into_iter().flatten() {
        mkdir(dir)?;
    }
    let source = fs.device.as_deref().unwrap_or("overlay");
    sys.mount(source, &outcome.target, "overlay", opts.flags, &data)
        .map_err(|errno| {
            MountError::Mount(Box::new(MountFailure {
                device: source.to_string(),
                target: outcome.target.clone(),
                fstype: "overlay".into(),
                flags: FlagNames(opts.flags).to_string(),
                data: data.clone(),
                errno,
                hint: mount_hint("overlay", errno, None),
            }))
        })?;
    Ok(outcome)
}

/// A loop device opened by [`crate::sys::Real`].
#[derive(Debug)]
pub struct RealLoop {
    file: std::fs::File,
    path: PathBuf,
}

impl RealLoop {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }
}

fn open_backing(backing: &Path) -> Result<std::fs::File, Errno> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(backing)
        .map_err(|e| crate::sys::io_errno(&e))
}

fn backing_name(backing: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    backing.as_os_str().as_bytes().to_vec()
}

impl MountOps for crate::sys::Real {
    type Loop = RealLoop;

    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| crate::sys::io_errno(&e))
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), Errno> {
        let data = (!data.is_empty()).then_some(data);
        nix::mount::mount(Some(source), target, Some(fstype), flags, data)
    }

    fn umount(&self, target: &Path) -> Result<(), Errno> {
        nix::mount::umount2(target, nix::mount::MntFlags::empty())
    }

    fn loop_get_free(&self) -> Result<u32, Errno> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(|e| crate::sys::io_errno(&e))?;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = unsafe { loopdev::ctl_get_free(ctl.as_raw_fd()) }?;
        u32::try_from(n).map_err(|_| Errno::ERANGE)
    }

    fn loop_open(&self, index: u32) -> Result<RealLoop, Errno> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = PathBuf::from(format!("{LOOP_DEVICE_PREFIX}{index}"));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| crate::sys::io_errno(&e))
        };
        let file = match open() {
            // /dev without devtmpfs: make the node from the number sysfs gives.
            Err(Errno::ENOENT) => {
                // `MAJOR:MINOR`; anything longer is not the attribute we know.
                let sysfs_dev = PathBuf::from(format!("/sys/block/loop{index}/dev"));
                let dev =
                    crate::sys::read_text_limited(&sysfs_dev, 32).map_err(|_| Errno::ENOENT)?;
                let (major, minor) = dev.trim().split_once(':').ok_or(Errno::ENOENT)?;
                let major: u64 = major.parse().map_err(|_| Errno::ENOENT)?;
                let minor: u64 = minor.parse().map_err(|_| Errno::ENOENT)?;
                nix::sys::stat::mknod(
                    &path,
                    nix::sys::stat::SFlag::S_IFBLK,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(major, minor),
                )?;
                open()?
            }
            other => other?,
        };
        Ok(RealLoop { file, path })
    }

    fn loop_configure(
        &self,
        dev: &RealLoop,
        backing: &Path,
        flags: LoopFlags,
    ) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        let file = open_backing(backing)?;
        let cfg = loopdev::LoopConfig {
            fd: u32::try_from(file.as_raw_fd()).map_err(|_| Errno::EBADF)?,
            block_size: 0,
            info: loopdev::LoopInfo64::new(flags.bits(), &backing_name(backing)),
            reserved: [0; 8],
        };
        // SAFETY: cfg is a valid struct loop_config for the duration of the call.
        unsafe { loopdev::configure(dev.fd(), &cfg) }.map(drop)
    }

    fn loop_set_fd(&self, dev: &RealLoop, backing: &Path) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        let file = open_backing(backing)?;
        // SAFETY: the argument is a file descriptor, open for the duration of the call.
        unsafe { loopdev::set_fd(dev.fd(), file.as_raw_fd()) }.map(drop)
    }

    fn loop_set_status(
        &self,
        dev: &RealLoop,
        backing: &Path,
        flags: LoopFlags,
    ) -> Result<(), Errno> {
        let info =
            loopdev::LoopInfo64::new(flags.settable_by_status().bits(), &backing_name(backing));
        // SAFETY: info is a valid struct loop_info64 for the duration of the call.
        unsafe { loopdev::set_status64(dev.fd(), &info) }.map(drop)
    }

    fn loop_set_direct_io(&self, dev: &RealLoop, on: bool) -> Result<(), Errno> {
        // SAFETY: the argument is an integer.
        unsafe { loopdev::set_direct_io(dev.fd(), i32::from(on) as _) }.map(drop)
    }

    fn loop_get_flags(&self, dev: &RealLoop) -> Result<LoopFlags, Errno> {
        let mut info = loopdev::LoopInfo64::default();
        // SAFETY: info is a writable struct loop_info64.
        unsafe { loopdev::get_status64(dev.fd(), &mut info) }?;
        Ok(LoopFlags::from_bits(info.lo_flags))
    }

    fn loop_clear(&self, dev: &RealLoop) -> Result<(), Errno> {
        log::debug!("detaching {}", dev.path.display());
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { loopdev::clr_fd(dev.fd()) }.map(drop)
    }
}

/// A loop device the recorder "opened".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeLoop(pub u32);

impl fmt::Display for FakeLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LOOP_DEVICE_PREFIX}{}", self.0)
    }
}

/// Lines: `mkdir P`, `mount SRC TARGET FSTYPE flags=F data=D`, `umount T`, `loop-get-free`
/// (the Nth call returns N-1), `loop-open /dev/loopN`, `loop-configure DEV FILE FLAGS`,
/// `loop-set-fd DEV FILE`, `loop-set-status DEV FLAGS`, `loop-set-direct-io DEV on|off`,
/// `loop-get-flags DEV` (reports ro,autoclear,direct-io), `loop-clear DEV`.
impl MountOps for crate::sys::Fake {
    type Loop = FakeLoop;

    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        self.record(format!("mkdir {}", path.display()))
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), Errno> {
        self.record(format!(
            "mount {source} {} {fstype} flags={} data={data}",
            target.display(),
            FlagNames(flags)
        ))
    }

    fn umount(&self, target: &Path) -> Result<(), Errno> {
        self.record(format!("umount {}", target.display()))
    }

    fn loop_get_free(&self) -> Result<u32, Errno> {
        self.record("loop-get-free")?;
        let n = self.calls_starting_with("loop-get-free").len();
        Ok(u32::try_from(n.saturating_sub(1)).unwrap_or(u32::MAX))
    }

    fn loop_open(&self, index: u32) -> Result<FakeLoop, Errno> {
        let dev = FakeLoop(index);
        self.record(format!("loop-open {dev}"))?;
        Ok(dev)
    }

    fn loop_configure(
        &self,
        dev: &FakeLoop,
        backing: &Path,
        flags: LoopFlags,
    ) -> Result<(), Errno> {
        self.record(format!(
            "loop-configure {dev} {} {flags}",
            backing.display()
        ))
    }

    fn loop_set_fd(&self, dev: &FakeLoop, backing: &Path) -> Result<(), Errno> {
        self.record(format!("loop-set-fd {dev} {}", backing.display()))
    }

    fn loop_set_status(
        &self,
        dev: &FakeLoop,
        _backing: &Path,
        flags: LoopFlags,
    ) -> Result<(), Errno> {
        self.record(format!(
            "loop-set-status {dev} {}",
            flags.settable_by_status()
        ))
    }

    fn loop_set_direct_io(&self, dev: &FakeLoop, on: bool) -> Result<(), Errno> {
        self.record(format!(
            "loop-set-direct-io {dev} {}",
            if on { "on" } else { "off" }
        ))
    }

    fn loop_get_flags(&self, dev: &FakeLoop) -> Result<LoopFlags, Errno> {
        self.record(format!("loop-get-flags {dev}"))?;
        Ok(LoopFlags {
            read_only: true,
            autoclear: true,
            direct_io: true,
        })
    }

    fn loop_clear(&self, dev: &FakeLoop) -> Result<(), Errno> {
        self.record(format!("loop-clear {dev}"))
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
