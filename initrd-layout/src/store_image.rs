//! `initrd-layout store-image`: the squashfs Nix store image, made the way nixpkgs'
//! `nixos/lib/make-squashfs.nix` makes it: a `nix-path-registration` file (the closure's
//! `nix-store --dump-db` output) at the top, then every store path of the closure as a top-level
//! directory, with `-no-hardlinks -keep-as-directory -all-root -b 1048576 -comp ...`.

use crate::compress::find_in_path;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// netboot.nix's setting (the make-squashfs.nix default is `xz -Xdict-size 100%`).
pub const DEFAULT_COMP: &str = "zstd -Xcompression-level 19";

const SQUASHFS_COMPRESSORS: [&str; 6] = ["gzip", "lzo", "lz4", "xz", "zstd", "lzma"];

#[derive(Debug, Clone)]
pub struct StoreImageOptions {
    /// Store paths (`/nix/store/...`); their closure goes into the image unless
    /// `registration` is given, in which case exactly these paths go in.
    pub store_paths: Vec<String>,
    /// The root of a chroot store (`nix-store --store local?root=DIR`); None for the host store.
    pub store_root: Option<PathBuf>,
    /// A registration file to ship instead of querying `nix-store --dump-db`.
    pub registration: Option<PathBuf>,
    /// The mksquashfs `-comp` argument, e.g. `zstd -Xcompression-level 19` or `xz -Xdict-size 100%`.
    pub comp: String,
    pub processors: Option<u32>,
    /// Inode and file system times (SOURCE_DATE_EPOCH, or 0).
    pub mtime: u32,
    pub output: PathBuf,
}

impl StoreImageOptions {
    pub fn new(store_paths: Vec<String>, store_root: Option<PathBuf>, output: &Path) -> Self {
        StoreImageOptions {
            store_paths,
            store_root,
            registration: None,
            comp: DEFAULT_COMP.to_string(),
            processors: None,
            mtime: 0,
            output: output.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreImageReport {
    pub output: PathBuf,
    /// The store paths in the image, sorted.
    pub paths: Vec<String>,
    pub size: u64,
}

impl std::fmt::Display for StoreImageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} store paths, {} bytes",
            self.output.display(),
            self.paths.len(),
            self.size
        )
    }
}

fn nix_store(root: Option<&Path>) -> Command {
    let mut c = Command::new("nix-store");
    if let Some(r) = root {
        c.arg("--store").arg(format!("local?root={}", r.display()));
    }
    c
}

fn run_capture(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{what}: output is not UTF-8"))
}

/// The argument words for mksquashfs's `-comp`.
pub fn parse_comp(comp: &str) -> Result<Vec<String>> {
    let words: Vec<String> = comp.split_whitespace().map(str::to_string).collect();
    match words.first() {
        Some(c) if SQUASHFS_COMPRESSORS.contains(&c.as_str()) => Ok(words),
        Some(c) => bail!(
            "squashfs compression {c:?} is not one of {}",
            SQUASHFS_COMPRESSORS.join(", ")
        ),
        None => bail!("empty squashfs compression setting"),
    }
}

/// Where a store path's files are on this machine.
fn physical(root: Option<&Path>, store_path: &str) -> PathBuf {
    match root {
        Some(r) => r.join(store_path.trim_start_matches('/')),
        None => PathBuf::from(store_path),
    }
}

pub fn make_store_image(opts: &StoreImageOptions) -> Result<StoreImageReport> {
    let comp = parse_comp(&opts.comp)?;
    if opts.store_paths.is_empty() {
        bail!("no store paths given");
    }
    for p in &opts.store_paths {
        if !p.starts_with("/nix/store/")
            || p["/nix/store/".len()..].contains('/')
            || p.len() <= "/nix/store/".len()
        {
            bail!("{p:?} is not a store path (expected /nix/store/<hash>-<name>)");
        }
    }
    let root = opts.store_root.as_deref();
    if let Some(r) = root {
        if !r.join("nix/store").is_dir() {
            bail!("store root {} has no nix/store directory", r.display());
        }
    }
    if find_in_path("mksquashfs").is_none() {
        bail!("mksquashfs is not installed (Debian package squashfs-tools)");
    }
    if let Some(parent) = opts.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("output directory {} does not exist", parent.display());
        }
    }

    let (paths, registration) = match &opts.registration {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("registration file {}", file.display()))?;
            let mut paths = opts.store_paths.clone();
            paths.sort();
            paths.dedup();
            (paths, text)
        }
        None => {
            if find_in_path("nix-store").is_none() {
                bail!("nix-store is not installed (Debian package nix-bin); pass --registration FILE instead");
            }
            log::info!(
                "store image: computing the closure of {} store paths",
                opts.store_paths.len()
            );
            let mut q = nix_store(root);
            q.arg("--query").arg("--requisites").args(&opts.store_paths);
            let mut paths: Vec<String> = run_capture(q, "nix-store --query --requisites")?
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            paths.sort();
            paths.dedup();
            let mut d = nix_store(root);
            d.arg("--dump-db").args(&paths);
            let reg = run_capture(d, "nix-store --dump-db")?;
            (paths, reg)
        }
    };
    for p in &paths {
        let phys = physical(root, p);
        if std::fs::symlink_metadata(&phys).is_err() {
            bail!(
                "store path {p} is missing: {} does not exist",
                phys.display()
            );
        }
    }

    let staging = tempfile_dir(&opts.output)?;
    let result = (|| {
        let reg_file = staging.join("nix-path-registration");
        std::fs::write(&reg_file, &registration)
            .with_context(|| format!("writing {}", reg_file.display()))?;
        let tmp_out = crate::build::temp_path(&opts.output);
        let mut cmd = Command::new("mksquashfs");
        cmd.arg(&reg_file);
        for p in &paths {
            cmd.arg(physical(root, p));
        }
        cmd.arg(&tmp_out)
            .args([
                "-no-hardlinks",
                "-keep-as-directory",
                "-all-root",
                "-b",
                "1048576",
                "-noappend",
                "-comp",
            ])
            .args(&comp)
            .env("SOURCE_DATE_EPOCH", opts.mtime.to_string())
            .stdin(Stdio::null());
        if let Some(n) = opts.processors {
            cmd.arg("-processors").arg(n.to_string());
        }
        log::info!(
            "store image: mksquashfs of {} store paths with -comp {}",
            paths.len(),
            comp.join(" ")
        );
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting mksquashfs")?;
        // mksquashfs draws its own progress bar on a terminal; these lines cover logs and CI.
        let mut last_report = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for mksquashfs")? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                let written = std::fs::metadata(&tmp_out).map(|m| m.len()).unwrap_or(0);
                log::info!(
                    "store image: mksquashfs running for {} s, {} MiB written",
                    started.elapsed().as_secs(),
                    written >> 20
                );
            }
        };
        if !status.success() {
            let _ = std::fs::remove_file(&tmp_out);
            bail!("mksquashfs failed ({status})");
        }
        std::fs::rename(&tmp_out, &opts.output).with_context(|| {
            format!(
                "renaming {} to {}",
                tmp_out.display(),
                opts.output.display()
            )
        })?;
        let size = std::fs::metadata(&opts.output)?.len();
        if size > crate::cpio::MAX_FILE_SIZE {
            log::warn!(
                "store image: {} is {size} bytes, over the 4 GiB - 1 a newc initrd can hold; \
                 `initrd-layout build` will refuse it (use stronger -comp settings or fewer paths)",
                opts.output.display()
            );
        }
        log::info!(
            "store image: done in {:.1} s, {} bytes",
            started.elapsed().as_secs_f64(),
            size
        );
        Ok(StoreImageReport {
            output: opts.output.clone(),
            paths: paths.clone(),
            size,
        })
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn tempfile_dir(output: &Path) -> Result<PathBuf> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(".store-image-staging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comp_words() {
        assert_eq!(
            parse_comp(DEFAULT_COMP).unwrap(),
            ["zstd", "-Xcompression-level", "19"]
        );
        assert_eq!(parse_comp("xz -Xdict-size 100%").unwrap()[0], "xz");
        assert!(parse_comp("brotli").is_err());
        assert!(parse_comp("  ").is_err());
    }
}
