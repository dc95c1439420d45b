//! Phase 2: the kernel modules the boot needs, loaded natively (no modprobe, udev or libkmod).
//!
//! What to load: the config's `kernelModules` plus what the file systems imply
//! ([`implied_by_file_systems`]). [`index::ModulesIndex`] resolves names and aliases through
//! the depmod indices and orders the dependency closure; [`load`] loads it, independent
//! modules in parallel, with the kernel decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` files where it
//! can and the process doing it where it cannot.

pub mod decompress;
pub mod glob;
pub mod index;
pub mod load;

pub use load::{LoadError, Method, ModuleLoad, Parallelism};

use crate::cmdline::Cmdline;
use crate::config::Config;
use crate::sys::{Fake, Real};
use anyhow::{bail, Context};
use nix::errno::Errno;
use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::path::Path;

/// `finit_module` flags (include/uapi/linux/module.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinitFlags(u32);

impl FinitFlags {
    pub const NONE: FinitFlags = FinitFlags(0);
    /// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the file (Linux 5.17+ with
    /// CONFIG_MODULE_DECOMPRESS; EOPNOTSUPP without it, EINVAL before 5.17 or for a format
    /// the kernel was not built for).
    pub const COMPRESSED_FILE: FinitFlags = FinitFlags(4);

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Display for FinitFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FinitFlags::NONE => f.write_str("none"),
            FinitFlags::COMPRESSED_FILE => f.write_str("compressed"),
            FinitFlags(other) => write!(f, "{other:#x}"),
        }
    }
}

/// The syscalls of this phase.
pub trait ModuleOps: Sync {
    /// `finit_module(open(file), params, flags)`.
    fn finit_module(&self, file: &Path, params: &str, flags: FinitFlags) -> Result<(), Errno>;
    /// `init_module(image, len, params)`.
    fn init_module(&self, image: &[u8], params: &str) -> Result<(), Errno>;
}

fn c_params(params: &str) -> Result<CString, Errno> {
    CString::new(params).map_err(|_| Errno::EINVAL)
}

impl ModuleOps for Real {
    fn finit_module(&self, file: &Path, params: &str, flags: FinitFlags) -> Result<(), Errno> {
        let params = c_params(params)?;
        // std opens with O_CLOEXEC.
        let f = std::fs::File::open(file).map_err(|e| crate::sys::io_errno(&e))?;
        nix::kmod::finit_module(
            &f,
            &params,
            nix::kmod::ModuleInitFlags::from_bits_retain(flags.bits()),
        )
    }

    fn init_module(&self, image: &[u8], params: &str) -> Result<(), Errno> {
        nix::kmod::init_module(image, &c_params(params)?)
    }
}

/// The `name=` the kernel reads from a module's `.modinfo`, for the fake's record lines.
fn modinfo_name(image: &[u8]) -> String {
    const KEY: &[u8] = b"name=";
    image
        .windows(KEY.len())
        .enumerate()
        .find(|&(i, w)| w == KEY && (i == 0 || image[i - 1] == 0))
        .map(|(i, _)| {
            let rest = &image[i + KEY.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .unwrap_or_else(|| "?".into())
}

/// Records `finit_module squashfs.ko.xz flags=compressed params=` and
/// `init_module squashfs (123456 bytes) params=`.
impl ModuleOps for Fake {
    fn finit_module(&self, file: &Path, params: &str, flags: FinitFlags) -> Result<(), Errno> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.record(format!("finit_module {name} flags={flags} params={params}"))
    }

    fn init_module(&self, image: &[u8], params: &str) -> Result<(), Errno> {
        self.record(format!(
            "init_module {} ({} bytes) params={params}",
            modinfo_name(image),
            image.len()
        ))
    }
}

/// File systems that are always built in or need no module.
const NO_MODULE_FS: &[&str] = &[
    "", "auto", "none", "rootfs", "tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "devpts", "bind",
    "rbind",
];

/// The modules the file systems need: the module named after each fsType (`squashfs`,
/// `overlay`, otherwise the kernel's own alias `fs-<type>`) and `loop` for the `loop` option.
/// In-kernel file systems (tmpfs, proc, ...) are left out; builtins are skipped at load time.
/// Deduplicated, in file-system order.
pub fn implied_by_file_systems(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |m: String| {
        if !out.contains(&m) {
            out.push(m);
        }
    };
    for fs in &config.file_systems {
        let ty = fs.fs_type.trim();
        if fs.options.iter().any(|o| o == "loop") {
            add("loop".into());
        }
        match ty {
            "squashfs" | "overlay" => add(ty.to_string()),
            t if NO_MODULE_FS.contains(&t) => {}
            t => add(format!("fs-{t}")),
        }
    }
    out
}

/// The names a config asks for: its `kernelModules`, then [`implied_by_file_systems`];
/// duplicates (with `-` and `_` equal) removed.
pub fn requested_modules(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in config
        .kernel_modules
        .iter()
        .chain(&implied_by_file_systems(config))
    {
        let name = name.trim();
        if !name.is_empty()
            && !out
                .iter()
                .any(|r| index::normalize_name(r) == index::normalize_name(name))
        {
            out.push(name.to_string());
        }
    }
    out
}

/// What a config needs from one modules tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// [`requested_modules`].
    pub requested: Vec<String>,
    /// What to load, dependencies first ([`index::ModulesIndex::closure`]).
    pub entries: Vec<index::ModuleEntry>,
    /// Requested names built into the kernel.
    pub builtin: Vec<String>,
    /// Implied `fs-<type>` aliases that resolve to nothing: best effort, since a file system
    /// may be built in without the indices saying so, and the mount names the problem.
    pub unresolved: Vec<String>,
}

/// Resolves what `config` needs against `index`: the rules the boot applies, for tools that
/// build an initrd's module tree too. Any other name that resolves to nothing is an error
/// naming the modules directory.
pub fn plan(index: &index::ModulesIndex, config: &Config) -> Result<Plan, index::IndexError> {
    let implied = implied_by_file_systems(config);
    let mut plan = Plan {
        requested: requested_modules(config),
        ..Plan::default()
    };
    let mut roots: Vec<String> = Vec::new();
    for name in &plan.requested {
        let optional = name.starts_with("fs-") && implied.contains(name);
        match index.resolve(name) {
            Ok(index::Resolved::Builtin(b)) => {
                log::debug!("{name}: built into the kernel ({b})");
                plan.builtin.push(name.clone());
            }
            Ok(index::Resolved::Modules(_)) => roots.push(name.clone()),
            Err(index::IndexError::NotFound { .. }) if optional => {
                plan.unresolved.push(name.clone());
            }
            Err(e) => return Err(e),
        }
    }
    plan.entries = index.closure(&roots)?;
    Ok(plan)
}

/// How [`load_for_boot_with`] loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Parallel by default; [`Parallelism::Sequential`] loads one module at a time (the
    /// benchmark's baseline).
    pub parallelism: Parallelism,
}

/// What the phase did. `Display` is the one-line summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesReport {
    /// The names asked for (config modules, then implied ones).
    pub requested: Vec<String>,
    /// Every module the kernel was asked to load, in completion order, with timings
    /// (CLOCK_MONOTONIC microseconds, like the timeline).
    pub loads: Vec<ModuleLoad>,
    /// Requested names that are built into the kernel.
    pub builtin: Vec<String>,
    /// Implied `fs-<type>` aliases that resolved to nothing (the mount will tell).
    pub unresolved: Vec<String>,
    pub parallelism: Option<Parallelism>,
    /// Time spent reading the indices and resolving, before the first load.
    pub resolve_us: u64,
    pub start_us: u64,
    pub end_us: u64,
}

impl ModulesReport {
    /// Modules this boot loaded.
    pub fn loaded(&self) -> impl Iterator<Item = &ModuleLoad> {
        self.loads.iter().filter(|l| !l.already_loaded)
    }

    /// Modules the kernel already had (EEXIST).
    pub fn already_loaded(&self) -> impl Iterator<Item = &ModuleLoad> {
        self.loads.iter().filter(|l| l.already_loaded)
    }
}

impl fmt::Display for ModulesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loaded: Vec<&str> = self.loaded().map(|l| l.name.as_str()).collect();
        write!(
            f,
            "loaded {} module{}",
            loaded.len(),
            if loaded.len() == 1 { "" } else { "s" }
        )?;
        if !loaded.is_empty() {
            write!(f, " ({})", loaded.join(", "))?;
        }
        write!(
            f,
            ", {} builtin, {} already loaded",
            self.builtin.len(),
            self.already_loaded().count()
        )
    }
}

/// Loads what the boot needs from `modules_dir` (`<modulesDir>/<release>`): in parallel, or
/// one at a time when the command line says `netboot.modules=sequential`.
pub fn load_for_boot<S: ModuleOps>(
    sys: &S,
    config: &Config,
    cmdline: &Cmdline,
    modules_dir: &Path,
    running_release: &str,
) -> anyhow::Result<ModulesReport> {
    let options = LoadOptions {
        parallelism: if cmdline.modules_sequential {
            Parallelism::Sequential
        } else {
            Parallelism::default()
        },
    };
    load_for_boot_with(sys, config, cmdline, modules_dir, running_release, options)
}

/// [`load_for_boot`] with a choice of scheduling.
pub fn load_for_boot_with<S: ModuleOps>(
    sys: &S,
    config: &Config,
    cmdline: &Cmdline,
    modules_dir: &Path,
    running_release: &str,
    options: LoadOptions,
) -> anyhow::Result<ModulesReport> {
    let start_us = crate::timeline::now_us();
    let mut report = ModulesReport {
        start_us,
        parallelism: Some(options.parallelism),
        ..ModulesReport::default()
    };
    report.requested = requested_modules(config);
    if report.requested.is_empty() {
        report.end_us = crate::timeline::now_us();
        return Ok(report);
    }

    check_release(modules_dir, running_release)?;
    let index = index::ModulesIndex::load(modules_dir).context("reading the module indices")?;
    let plan = plan(&index, config).context("resolving the kernel modules to load")?;
    report.resolve_us = crate::timeline::now_us().saturating_sub(start_us);
    for name in &plan.unresolved {
        log::warn!(
            "no module for {name} in {}; assuming the kernel has it",
            modules_dir.display()
        );
    }
    report.builtin = plan.builtin;
    report.unresolved = plan.unresolved;
    let entries = plan.entries;
    log::debug!(
        "loading {} ({})",
        entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        options.parallelism
    );

    let params = module_params(config, &cmdline.module_params);
    let lookup = |name: &str| params.get(name).cloned().unwrap_or_default();
    let outcome = load::load_all(sys, modules_dir, &entries, &lookup, options.parallelism);
    report.loads = outcome.loads;
    report.end_us = crate::timeline::now_us();
    let mut by_method: Vec<(String, Vec<&str>)> = Vec::new();
    for l in &report.loads {
        let method = l.method.to_string();
        match by_method.iter_mut().find(|(m, _)| *m == method) {
            Some((_, names)) => names.push(&l.name),
            None => by_method.push((method, vec![&l.name])),
        }
    }
    for (method, names) in &by_method {
        log::info!("{method}: {}", names.join(", "));
    }
    log::debug!(
        "module indices read and resolved in {}",
        crate::timeline::ms(report.resolve_us)
    );
    for l in &report.loads {
        log::debug!(
            "module {}: {}{} in {} (decompression {}), worker {}",
            l.name,
            l.method,
            if l.already_loaded {
                ", already loaded"
            } else {
                ""
            },
            crate::timeline::ms(l.duration_us()),
            crate::timeline::ms(l.decompress_us),
            l.worker
        );
    }
    let mut errors = outcome.errors.into_iter();
    if let Some(first) = errors.next() {
        for other in errors {
            log::error!("{other}");
        }
        if !report.loads.is_empty() {
            let done: Vec<&str> = report.loads.iter().map(|l| l.name.as_str()).collect();
            log::info!("loaded before the failure: {}", done.join(", "));
        }
        return Err(first.into());
    }
    Ok(report)
}

/// Refuses a tree built for another kernel before anything is loaded.
fn check_release(modules_dir: &Path, running_release: &str) -> anyhow::Result<()> {
    let dir_release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir_release != running_release {
        bail!(
            "modules tree {} is for kernel {dir_release}, but the running kernel is {running_release}; no module was loaded",
            modules_dir.display()
        );
    }
    if !modules_dir.is_dir() {
        let parent = modules_dir.parent().unwrap_or(Path::new("/"));
        let mut found: Vec<String> = std::fs::read_dir(parent)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .take(64)
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        let found = if found.is_empty() {
            "none".to_string()
        } else {
            found.join(", ")
        };
        bail!(
            "no modules for the running kernel {running_release}: {} does not exist (modules trees in {}: {found})",
            modules_dir.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Parameters per module: the config's string, then the command line's `module.param=value`
/// entries in order, space-separated (the kernel applies later values last).
fn module_params(config: &Config, cmdline: &[(String, String)]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut add = |module: &str, value: &str| {
        let value = value.trim();
        if value.is_empty() {
            return;
        }
        let entry = out.entry(index::normalize_name(module)).or_default();
        if !entry.is_empty() {
            entry.push(' ');
        }
        entry.push_str(value);
    };
    for (module, value) in &config.module_params {
        add(module, value);
    }
    for (module, value) in cmdline {
        add(module, value);
    }
    out
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
