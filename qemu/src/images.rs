//! Per-scenario boot images: the config, the module tree, the initrd made by `initrd-layout`,
//! and the deliberate damage failure scenarios need (a replaced config appended as one more
//! cpio archive, a store image cut off, the store image left out).

use crate::fixture::Fixture;
use crate::setup::run;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel tree under `target/netboot/kernels/<dir>`.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub release: String,
}

impl Kernel {
    pub fn load(ws: &Path, name: &str) -> Result<Kernel> {
        let dir = ws.join("target/netboot/kernels").join(name);
        let release = fs::read_to_string(dir.join("version"))
            .with_context(|| {
                format!(
                    "kernel {name} missing in {}: run `cargo xtask setup`",
                    dir.display()
                )
            })?
            .trim()
            .to_string();
        let k = Kernel { dir, release };
        if !k.image().is_file() || !k.modules().join("modules.dep").is_file() {
            bail!(
                "kernel tree {} is incomplete: run `cargo xtask setup`",
                k.dir.display()
            );
        }
        Ok(k)
    }
    pub fn image(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }
}

/// The netboot.nix layout as a netboot-init config, for the fixture system.
pub fn base_config(fx: &Fixture) -> Value {
    json!({
        "version": 1,
        "init": fx.init(),
        "fileSystems": [
            {"mountPoint": "/", "device": "tmpfs", "fsType": "tmpfs", "options": ["mode=0755"]},
            {"mountPoint": "/nix/.ro-store", "device": "../nix-store.squashfs", "fsType": "squashfs",
             "options": ["loop", "threads=multi"]},
            {"mountPoint": "/nix/.rw-store", "device": "tmpfs", "fsType": "tmpfs", "options": ["mode=0755"]},
            {"mountPoint": "/nix/store", "device": "overlay", "fsType": "overlay",
             "overlay": {"lowerdir": ["/nix/.ro-store"], "upperdir": "/nix/.rw-store/store",
                         "workdir": "/nix/.rw-store/work"}}
        ],
        "registration": {"mode": "load-db", "nixStore": fx.nix_store},
        "failure": {"emergencyAccess": false, "rebootTimeoutSecs": 1}
    })
}

/// A copy of the kernel's module tree with only `names`' closure, each module compressed with
/// `xz --check=crc32`, re-indexed by depmod. Cached by a marker.
pub fn xz_module_copy(ws: &Path, kernel: &Kernel, names: &[String]) -> Result<PathBuf> {
    let root = ws.join("target/netboot/kernels-xz").join(&kernel.release);
    let tree = root.join("lib/modules").join(&kernel.release);
    let marker = root.join(".done");
    let want = names.join(",");
    if fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return Ok(tree);
    }
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&tree)?;
    let closure = initrd_layout::upstream::module_closure(&kernel.modules(), names)?;
    for m in &closure {
        let src = kernel.modules().join(&m.path);
        let rel = m.path.to_string_lossy();
        let rel = rel.strip_suffix(".xz").unwrap_or(&rel);
        let dst = tree.join(rel);
        fs::create_dir_all(dst.parent().context("module path")?)?;
        fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        run(Command::new("xz").args(["--check=crc32", "-f"]).arg(&dst))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let src = kernel.modules().join(f);
        if src.is_file() {
            fs::copy(&src, tree.join(f))?;
        }
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(&kernel.release))?;
    fs::write(&marker, want)?;
    Ok(tree)
}

/// How to build one scenario's initrd.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub config: Value,
    pub modules_tree: PathBuf,
    pub keep_module_compression: bool,
    pub prebuilt_db: bool,
    /// Busybox as the initrd's `/bin/sh`.
    pub shell: bool,
    /// Replaces the config after the build (appended archive), for configs the builder refuses.
    pub replace_config: Option<String>,
    /// Leave the store image out.
    pub drop_store: bool,
    /// Ship only the first half of the store image.
    pub truncate_store: bool,
}

/// Builds the initrd into `dir/initrd`; returns its path and the modules it ships.
pub fn build_initrd(
    fx: &Fixture,
    spec: &ImageSpec,
    init: &Path,
    dir: &Path,
) -> Result<(PathBuf, Vec<String>)> {
    fs::create_dir_all(dir)?;
    let config_path = dir.join("netboot-init.json");
    fs::write(&config_path, serde_json::to_string_pretty(&spec.config)?)?;
    let mut store = fx.store_image.clone();
    if spec.truncate_store {
        let data = fs::read(&fx.store_image)?;
        store = dir.join("nix-store-truncated.squashfs");
        fs::write(&store, &data[..data.len() / 2])?;
    }
    let out = dir.join("initrd");
    let mut opts =
        initrd_layout::BuildOptions::new(init, &config_path, &spec.modules_tree, &store, &out);
    opts.keep_module_compression = spec.keep_module_compression;
    opts.compression = initrd_layout::Compression::Zstd { level: 3 };
    if spec.prebuilt_db {
        opts.prebuilt_db = Some(fx.prebuilt_db.clone());
    }
    if spec.shell {
        opts.shell = Some(PathBuf::from(crate::fixture::BUSYBOX_BIN));
    }
    let report = initrd_layout::build(&opts)
        .with_context(|| format!("initrd-layout build of {}", out.display()))?;
    if spec.drop_store {
        let offset = report
            .store_archive_offset
            .context("the initrd has no separate store archive")?;
        let f = fs::OpenOptions::new().write(true).open(&out)?;
        f.set_len(offset)?;
    }
    if let Some(text) = &spec.replace_config {
        let mut a = initrd_layout::cpio::Archive::new();
        a.add_bytes(
            netboot_init::config::CONFIG_PATH,
            0o644,
            text.as_bytes().to_vec(),
        )?;
        let bytes = a.to_bytes(0)?;
        let mut f = fs::OpenOptions::new().append(true).open(&out)?;
        let len = f.metadata()?.len();
        f.write_all(&[0u8; 3][..((4 - len % 4) % 4) as usize])?;
        f.write_all(&bytes)?;
    }
    let modules = report.modules.iter().map(|m| m.replace('-', "_")).collect();
    Ok((out, modules))
}
