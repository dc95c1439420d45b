//! `initrd-layout build`: the netboot initrd.
//!
//! Layout: a compressed newc archive with the small, hot part (`/init`, the config, the module
//! closure, the prebuilt Nix database, extras), then, at a 4-byte boundary, an uncompressed newc
//! archive holding only the store image (already compressed by squashfs; compressing it again
//! only costs unpack time). The kernel unpacks concatenated archives in order.

use crate::compress::Compression;
use crate::cpio::{self, Archive};
use crate::upstream;
use anyhow::{bail, Context, Result};
use netboot_init::config::{Config, RegistrationMode, CONFIG_PATH};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Index files the init (and modprobe-style tools) read, rewritten for the closure.
const COPIED_INDICES: [&str; 2] = ["modules.builtin", "modules.builtin.modinfo"];

/// A file or directory from the host placed at `dest` (absolute, inside the initrd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub source: PathBuf,
    pub dest: String,
}

impl ExtraFile {
    /// `SOURCE=DEST`, e.g. `./busybox=/bin/busybox`.
    pub fn parse(text: &str) -> Result<ExtraFile> {
        let Some((src, dest)) = text.split_once('=') else {
            bail!("--file {text:?}: expected SOURCE=/DEST/IN/INITRD");
        };
        if !dest.starts_with('/') {
            bail!("--file {text:?}: the destination {dest:?} must be an absolute path inside the initrd");
        }
        Ok(ExtraFile {
            source: PathBuf::from(src),
            dest: dest.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The netboot-init binary, installed as `/init`.
    pub init: PathBuf,
    /// The JSON config, installed at [`CONFIG_PATH`] byte for byte after validation.
    pub config: PathBuf,
    /// `/lib/modules/<release>` of the kernel, after depmod.
    pub modules_tree: PathBuf,
    /// Defaults to the modules tree's directory name.
    pub kernel_release: Option<String>,
    /// The squashfs store image (see [`crate::store_image`]).
    pub store_image: PathBuf,
    /// A prebuilt Nix database directory, installed at the config's `registration.prebuiltDb`.
    pub prebuilt_db: Option<PathBuf>,
    /// A static busybox, installed as `/bin/busybox` with the config's shell (`/bin/sh`) linked to it.
    pub shell: Option<PathBuf>,
    pub extra_files: Vec<ExtraFile>,
    pub compression: Compression,
    /// Ship modules as the kernel package has them (`.ko.xz`) instead of decompressed.
    pub keep_module_compression: bool,
    /// Everything, the store image included, in one compressed archive.
    pub single_archive: bool,
    /// The mtime of every entry (SOURCE_DATE_EPOCH, or 0).
    pub mtime: u32,
    pub output: PathBuf,
}

impl BuildOptions {
    /// Options with the defaults for everything but the required inputs.
    pub fn new(
        init: &Path,
        config: &Path,
        modules_tree: &Path,
        store_image: &Path,
        output: &Path,
    ) -> Self {
        BuildOptions {
            init: init.into(),
            config: config.into(),
            modules_tree: modules_tree.into(),
            kernel_release: None,
            store_image: store_image.into(),
            prebuilt_db: None,
            shell: None,
            extra_files: Vec::new(),
            compression: Compression::default(),
            keep_module_compression: false,
            single_archive: false,
            mtime: 0,
            output: output.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub output: PathBuf,
    pub total_len: u64,
    /// Where the uncompressed store-image archive starts (None in single-archive mode). The
    /// compressed part is `[0, offset)`, zero-padded to a multiple of 4.
    pub store_archive_offset: Option<u64>,
    /// Length of the compressed part itself, before the zero padding.
    pub compressed_len: u64,
    /// Size of the small part's cpio archive before compression.
    pub small_archive_len: u64,
    pub kernel_release: String,
    /// The modules shipped, in load order.
    pub modules: Vec<String>,
    /// The store image's path in the initrd (`/nix-store.squashfs`).
    pub store_image_dest: String,
}

impl std::fmt::Display for BuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} bytes, kernel {}, {} modules ({}), small part {} bytes uncompressed",
            self.output.display(),
            self.total_len,
            self.kernel_release,
            self.modules.len(),
            self.modules.join(" "),
            self.small_archive_len
        )?;
        match self.store_archive_offset {
            Some(o) => write!(f, ", store image archive at offset {o}"),
            None => write!(f, ", single archive"),
        }
    }
}

/// Everything validated and assembled; nothing written yet.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    pub small: Archive,
    pub kernel_release: String,
    pub modules: Vec<String>,
    pub store_image_dest: String,
}

fn require_file(what: &str, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    Ok(())
}

fn require_dir(what: &str, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{what} {} is not a directory", path.display());
    }
    Ok(())
}

/// Reads and validates the config file.
pub fn load_config(path: &Path) -> Result<(Config, Vec<u8>)> {
    require_file("config", path)?;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading config {}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("config {} is not UTF-8", path.display()))?;
    let config =
        upstream::parse_config(text).with_context(|| format!("config {}", path.display()))?;
    Ok((config, bytes))
}

/// Where the store image goes: the file the config's squashfs entry loop-mounts, resolved
/// against `/` of the initrd as NixOS does for `../nix-store.squashfs`.
pub fn store_image_dest(config: &Config) -> String {
    for fs in &config.file_systems {
        if fs.fs_type != "squashfs" {
            continue;
        }
        let Some(dev) = &fs.device else { continue };
        if dev.starts_with("/dev/") {
            continue;
        }
        let mut parts: Vec<&str> = Vec::new();
        for p in dev.split('/') {
            match p {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        if !parts.is_empty() {
            return format!("/{}", parts.join("/"));
        }
    }
    "/nix-store.squashfs".to_string()
}

/// Decompresses a module shipped as `.ko.xz`, `.ko.zst` or `.ko.gz`; returns the new relative path.
pub fn decompress_module(rel: &str, data: Vec<u8>) -> Result<(String, Vec<u8>)> {
    let fail = |e: String| anyhow::anyhow!("decompressing module {rel}: {e}");
    if let Some(stem) = rel.strip_suffix(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &data[..], &mut out).map_err(|e| fail(format!("{e:?}")))?;
        Ok((stem.to_string(), out))
    } else if let Some(stem) = rel.strip_suffix(".zst") {
        let mut out = Vec::new();
        let mut dec = ruzstd::StreamingDecoder::new(&data[..]).map_err(|e| fail(e.to_string()))?;
        dec.read_to_end(&mut out).map_err(|e| fail(e.to_string()))?;
        Ok((stem.to_string(), out))
    } else if let Some(stem) = rel.strip_suffix(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        Ok((stem.to_string(), out))
    } else {
        Ok((rel.to_string(), data))
    }
}

fn strip_compression(rel: &str) -> &str {
    rel.strip_suffix(".xz")
        .or_else(|| rel.strip_suffix(".zst"))
        .or_else(|| rel.strip_suffix(".gz"))
        .unwrap_or(rel)
}

/// The module part: the closure's files and its index files, keyed by path relative to the tree.
fn plan_modules(
    opts: &BuildOptions,
    config: &Config,
    small: &mut Archive,
    dest_dir: &str,
) -> Result<Vec<String>> {
    let tree = &opts.modules_tree;
    require_dir("modules tree", tree)?;
    let names = upstream::needed_modules(config);
    let closure =
        upstream::module_closure(tree, &names).context("resolving the modules the config needs")?;
    let dep_text = std::fs::read_to_string(tree.join("modules.dep"))
        .with_context(|| format!("reading {}", tree.join("modules.dep").display()))?;
    let rename = |p: &str| -> String {
        if opts.keep_module_compression {
            p.to_string()
        } else {
            strip_compression(p).to_string()
        }
    };
    let in_closure: std::collections::BTreeSet<String> = closure
        .iter()
        .map(|m| m.path.to_string_lossy().into_owned())
        .collect();
    let names_in_closure: std::collections::BTreeSet<String> =
        closure.iter().map(|m| m.name.replace('-', "_")).collect();

    let mut dep_out = String::new();
    for line in dep_text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        if !in_closure.contains(path.trim()) {
            continue;
        }
        dep_out.push_str(&rename(path.trim()));
        dep_out.push(':');
        for d in deps.split_whitespace() {
            dep_out.push(' ');
            dep_out.push_str(&rename(d));
        }
        dep_out.push('\n');
    }
    small.add_bytes(
        &format!("{dest_dir}/modules.dep"),
        0o644,
        dep_out.into_bytes(),
    )?;

    for m in &closure {
        let rel = m.path.to_string_lossy().into_owned();
        let src = tree.join(&m.path);
        let data = std::fs::read(&src).with_context(|| {
            format!(
                "module {} ({}) is listed in modules.dep but cannot be read",
                m.name,
                src.display()
            )
        })?;
        let (rel, data) = if opts.keep_module_compression {
            (rel, data)
        } else {
            decompress_module(&rel, data)?
        };
        small.add_bytes(&format!("{dest_dir}/{rel}"), 0o644, data)?;
    }

    let mut filter = |file: &str, keyword: &str, name_at: usize| -> Result<()> {
        let p = tree.join(file);
        let Ok(text) = std::fs::read_to_string(&p) else {
            return Ok(());
        };
        let mut out = String::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&keyword)
                && words
                    .get(name_at)
                    .is_some_and(|n| names_in_closure.contains(&n.replace('-', "_")))
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        small.add_bytes(&format!("{dest_dir}/{file}"), 0o644, out.into_bytes())?;
        Ok(())
    };
    filter("modules.alias", "alias", 2)?;
    filter("modules.softdep", "softdep", 1)?;
    for f in COPIED_INDICES {
        let p = tree.join(f);
        if p.is_file() {
            small.add_file(&format!("{dest_dir}/{f}"), 0o644, &p)?;
        }
    }
    Ok(closure.into_iter().map(|m| m.name).collect())
}

/// Validates every input and assembles the small archive in memory. Nothing is written
/// (the output location is not looked at).
pub fn plan(opts: &BuildOptions) -> Result<Plan> {
    require_file("init binary", &opts.init)?;
    let (config, config_bytes) = load_config(&opts.config)?;
    require_file("store image", &opts.store_image)?;
    let store_len = std::fs::metadata(&opts.store_image)?.len();
    if store_len > cpio::MAX_FILE_SIZE {
        return Err(cpio::CpioError::TooLarge {
            path: opts.store_image.display().to_string(),
            size: store_len,
        }
        .into());
    }
    opts.compression.validate()?;
    opts.compression.check_available()?;
    let release = match &opts.kernel_release {
        Some(r) => r.clone(),
        None => opts
            .modules_tree
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context(
                "cannot tell the kernel release from the modules tree path; pass --kernel-release",
            )?,
    };
    if release.is_empty() || release.contains('/') {
        bail!("kernel release {release:?} is not a directory name");
    }

    let mut small = Archive::new();
    small.add_file("init", 0o755, &opts.init)?;
    small.add_bytes(CONFIG_PATH, 0o644, config_bytes)?;
    for d in ["dev", "proc", "sys", "run", config.target_root.as_str()] {
        small.add_dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    small.add_char_dev("dev/console", 0o600, 5, 1)?;

    let modules_dest = format!("{}/{release}", config.modules_dir.trim_end_matches('/'));
    let modules = plan_modules(opts, &config, &mut small, &modules_dest)?;

    match (&opts.prebuilt_db, config.registration.mode) {
        (Some(db), _) => {
            require_dir("prebuilt Nix database", db)?;
            small.add_tree(&config.registration.prebuilt_db, db)?;
        }
        (None, RegistrationMode::Prebuilt) => bail!(
            "the config's registration.mode is \"prebuilt\" but no prebuilt Nix database was given (--nix-db DIR)"
        ),
        (None, _) => {}
    }
    if let Some(shell) = &opts.shell {
        require_file("shell (busybox)", shell)?;
        small.add_file("bin/busybox", 0o755, shell)?;
        if config.failure.shell != "/bin/busybox" {
            small.add_symlink(&config.failure.shell, "/bin/busybox")?;
        }
    }
    for extra in &opts.extra_files {
        if !extra.source.exists() {
            bail!(
                "extra file {} (for {}) does not exist",
                extra.source.display(),
                extra.dest
            );
        }
        small.add_tree(&extra.dest, &extra.source)?;
    }

    let store_image_dest = store_image_dest(&config);
    if small.get(&store_image_dest).is_some() {
        bail!(
            "{store_image_dest} (the store image) would replace a file of the initrd's small part"
        );
    }
    Ok(Plan {
        config,
        small,
        kernel_release: release,
        modules,
        store_image_dest,
    })
}

/// Builds the initrd at `opts.output` (written to a temporary file next to it, then renamed).
pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let mut plan = plan(opts)?;
    if let Some(parent) = opts.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        require_dir("output directory", parent)?;
    }
    let tmp = temp_path(&opts.output);
    let result = write(opts, &mut plan, &tmp);
    match result {
        Ok(mut report) => {
            std::fs::rename(&tmp, &opts.output).with_context(|| {
                format!("renaming {} to {}", tmp.display(), opts.output.display())
            })?;
            report.output = opts.output.clone();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub(crate) fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write(opts: &BuildOptions, plan: &mut Plan, tmp: &Path) -> Result<BuildReport> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    if opts.single_archive {
        plan.small
            .add_file(&plan.store_image_dest, 0o444, &opts.store_image)?;
    }
    let mut small_len = 0;
    let mtime = opts.mtime;
    let started = std::time::Instant::now();
    log::info!(
        "initrd: {} entries{}, compressing with {}",
        plan.small.len(),
        if opts.single_archive {
            " (store image included)"
        } else {
            ""
        },
        opts.compression
    );
    let small = &plan.small;
    opts.compression.compress_into(&file, &mut |w| {
        small_len = small.write_to(w, mtime)?;
        Ok(())
    })?;
    let mut end = file.seek(SeekFrom::End(0)).context("seeking the initrd")?;
    let compressed_len = end;
    let mut store_archive_offset = None;
    if !opts.single_archive {
        // The kernel only accepts the next archive's header at a 4-byte aligned offset and
        // skips the zero bytes before it.
        let pad = (4 - end % 4) % 4;
        let mut w = BufWriter::with_capacity(1 << 20, &mut file);
        w.write_all(&[0u8; 3][..pad as usize])
            .context("writing the initrd")?;
        store_archive_offset = Some(end + pad);
        log::info!(
            "initrd: compressed part {end} bytes in {:.1} s; appending the store image uncompressed",
            started.elapsed().as_secs_f64()
        );
        let n = cpio::write_single_file(
            &mut w,
            &plan.store_image_dest,
            0o444,
            &opts.store_image,
            mtime,
        )?;
        w.flush().context("writing the initrd")?;
        drop(w);
        end += pad + n;
    }
    file.sync_all().context("syncing the initrd")?;
    Ok(BuildReport {
        output: tmp.to_path_buf(),
        total_len: end,
        store_archive_offset,
        compressed_len,
        small_archive_len: small_len,
        kernel_release: plan.kernel_release.clone(),
        modules: plan.modules.clone(),
        store_image_dest: plan.store_image_dest.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_dest_from_config() {
        let mut c: Config = serde_json::from_str(
            r#"{"version":1,"fileSystems":[{"mountPoint":"/nix/.ro-store","fsType":"squashfs","device":"../nix-store.squashfs","options":["loop"]}]}"#,
        )
        .unwrap();
        assert_eq!(store_image_dest(&c), "/nix-store.squashfs");
        c.file_systems[0].device = Some("/images/store.img".into());
        assert_eq!(store_image_dest(&c), "/images/store.img");
        c.file_systems[0].device = Some("/dev/vda".into());
        assert_eq!(store_image_dest(&c), "/nix-store.squashfs");
    }

    #[test]
    fn extra_file_syntax() {
        assert_eq!(
            ExtraFile::parse("a/b=/bin/b").unwrap(),
            ExtraFile {
                source: "a/b".into(),
                dest: "/bin/b".into()
            }
        );
        assert!(ExtraFile::parse("a/b").is_err());
        assert!(ExtraFile::parse("a=b").is_err());
    }
}
