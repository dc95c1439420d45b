//! The baseline: a busybox shell stage 1 that does the netboot steps the way NixOS
//! `stage-1-init.sh` does them (one `modprobe` per module, `mount -o loop`, one `mount` per
//! entry, `chroot ... nix-store --load-db`, `switch_root`), in an initrd made by
//! `initrd-layout` from the same config, kernel and store image as netboot-init's.
//!
//! Debian's kmod 30 `modprobe` is dynamic: it goes in with its libraries under `/lib/kmod`
//! (interpreter and rpath set with patchelf, as the kernel's modprobe helper runs without
//! `LD_LIBRARY_PATH`). It cannot read the 6.12 `.ko.xz` files, so it gets the decompressed
//! modules initrd-layout ships, plus the binary indices depmod makes for them.

use crate::fixture::{copy_exe, libraries, BUSYBOX_BIN};
use crate::setup::run;
use anyhow::{bail, Context, Result};
use initrd_layout::ExtraFile;
use netboot_init::config::Config;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The script, with `@name@` placeholders.
pub const TEMPLATE: &str = include_str!("../../bench-assets/stage1-shell.sh");
/// Debian's kmod (modprobe is a link to it).
pub const KMOD_BIN: &str = "/usr/bin/kmod";
/// Where kmod's libraries and loader go in the initrd.
pub const KMOD_LIB_DIR: &str = "/lib/kmod";
/// Busybox applets left out because kmod provides them.
const KMOD_APPLETS: [&str; 6] = ["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"];
/// The NixOS pseudo-options a shell `mount` must not see.
const PSEUDO_OPTIONS: [&str; 6] = ["loop", "defaults", "nofail", "noauto", "auto", "bootwait"];

/// What the script needs to know besides the config.
#[derive(Debug, Clone)]
pub struct ScriptInputs<'a> {
    pub config: &'a Config,
    /// The default stage-2 init (`init=` on the kernel command line wins, as in NixOS).
    pub stage2_init: &'a str,
    /// The system toplevel the profile points at.
    pub toplevel: &'a str,
    /// The image's `nix-store`, a path inside the new root.
    pub nix_store: &'a str,
    /// Modules to `modprobe`, in order (netboot.nix: squashfs, loop, overlay).
    pub modules: &'a [String],
}

/// Words the script inserts unquoted must be plain: paths, module names, mount options.
fn plain(what: &str, word: &str) -> Result<String> {
    let ok = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-=,:%".contains(c));
    if !ok {
        bail!("{what} {word:?} cannot go into the shell stage 1 unquoted");
    }
    Ok(word.to_string())
}

fn under_target(path: &str) -> Result<String> {
    let p = plain("path", path)?;
    Ok(if p == "/" {
        "$targetRoot".to_string()
    } else {
        format!("$targetRoot/{}", p.trim_start_matches('/'))
    })
}

/// One `mkdir -p` and `mount` per file system, as stage-1-init.sh's `mountFS` runs them.
/// A squashfs with `threads=...` that the kernel refuses is mounted again without it.
pub fn mount_commands(config: &Config) -> Result<String> {
    let mut out = String::new();
    for fs in &config.file_systems {
        let mp = under_target(&fs.mount_point)?;
        let ty = plain("fsType", &fs.fs_type)?;
        let loop_dev = fs.options.iter().any(|o| o == "loop");
        let mut opts: Vec<String> = Vec::new();
        for o in &fs.options {
            if PSEUDO_OPTIONS.contains(&o.as_str()) || o.starts_with("x-") {
                continue;
            }
            opts.push(plain("option", o)?);
        }
        out.push_str(&format!("mkdir -p {mp}\n"));
        if let Some(ov) = &fs.overlay {
            let lower: Vec<String> = ov
                .lowerdir
                .iter()
                .map(|l| under_target(l))
                .collect::<Result<_>>()?;
            let mut data = format!("lowerdir={}", lower.join(":"));
            if let (Some(up), Some(work)) = (&ov.upperdir, &ov.workdir) {
                let (up, work) = (under_target(up)?, under_target(work)?);
                out.push_str(&format!("mkdir -p {up} {work}\n"));
                data.push_str(&format!(",upperdir={up},workdir={work}"));
            }
            for o in &opts {
                data.push(',');
                data.push_str(o);
            }
            out.push_str(&format!(
                "mount -t overlay -o {data} overlay {mp} || fail \"mount {mp}\"\n"
            ));
            continue;
        }
        let dev = plain("device", fs.device.as_deref().unwrap_or(&fs.fs_type))?;
        if loop_dev {
            opts.insert(0, "loop".into());
        }
        if ty == "squashfs" && !opts.iter().any(|o| o == "ro") {
            opts.insert(usize::from(loop_dev), "ro".into());
        }
        let o = |opts: &[String]| {
            if opts.is_empty() {
                String::new()
            } else {
                format!(" -o {}", opts.join(","))
            }
        };
        let without_threads: Vec<String> = opts
            .iter()
            .filter(|o| !o.starts_with("threads="))
            .cloned()
            .collect();
        if without_threads.len() != opts.len() {
            // Kernels without CONFIG_SQUASHFS_CHOICE_DECOMP_BY_MOUNT refuse threads=.
            out.push_str(&format!(
                "mount -t {ty}{} {dev} {mp} 2>/dev/null || mount -t {ty}{} {dev} {mp} || fail \"mount {mp}\"\n",
                o(&opts),
                o(&without_threads)
            ));
        } else {
            out.push_str(&format!(
                "mount -t {ty}{} {dev} {mp} || fail \"mount {mp}\"\n",
                o(&opts)
            ));
        }
    }
    Ok(out)
}

/// The first `@name@` in `text`.
fn placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(i) = rest.find('@') {
        let after = &rest[i + 1..];
        let n = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        if n > 0 && after[n..].starts_with('@') {
            return Some(&after[..n]);
        }
        rest = after;
    }
    None
}

/// The stage-1 script for `inputs`.
pub fn stage1_script(inputs: &ScriptInputs) -> Result<String> {
    let modules: Vec<String> = inputs
        .modules
        .iter()
        .map(|m| plain("module", m))
        .collect::<Result<_>>()?;
    let reg_file = plain(
        "registrationFile",
        &inputs.config.registration.registration_file,
    )?;
    let mut s = TEMPLATE
        .replace(
            "@targetRoot@",
            &plain("targetRoot", &inputs.config.target_root)?,
        )
        .replace("@stage2Init@", &plain("stage-2 init", inputs.stage2_init)?)
        .replace("@kernelModules@", &modules.join(" "))
        .replace("@mountCommands@", mount_commands(inputs.config)?.trim_end())
        .replace("@nixStore@", &plain("nix-store", inputs.nix_store)?)
        .replace("@registrationFile@", &reg_file)
        .replace("@toplevel@", &plain("toplevel", inputs.toplevel)?);
    if let Some(left) = placeholder(&s) {
        bail!("stage-1 script template: placeholder @{left}@ not filled in");
    }
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// Stages everything the shell stage 1 needs besides the script into `work` and returns the
/// extra files for initrd-layout: busybox with its applet links in /bin, kmod as
/// /sbin/modprobe with its libraries, and depmod's binary indices for the shipped modules.
pub fn stage_extras(
    work: &Path,
    modules_tree: &Path,
    release: &str,
    config: &Config,
) -> Result<Vec<ExtraFile>> {
    crate::fixture::remove_tree(work)?;
    fs::create_dir_all(work)?;
    let mut extras = Vec::new();

    let bin = work.join("bin");
    copy_exe(Path::new(BUSYBOX_BIN), &bin.join("busybox"))?;
    let applets = run(Command::new(BUSYBOX_BIN).arg("--list"))?;
    for a in applets.lines().map(str::trim) {
        if a.is_empty() || a == "busybox" || a.contains('/') || KMOD_APPLETS.contains(&a) {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(a))?;
    }
    extras.push(ExtraFile {
        source: bin,
        dest: "/bin".into(),
    });

    let (libs, interp) = libraries(&[KMOD_BIN])?;
    let libdir = work.join("kmod-libs");
    fs::create_dir_all(&libdir)?;
    for (soname, src) in &libs {
        let dst = libdir.join(soname);
        copy_exe(src, &dst)?;
        if !soname.starts_with("libc.so") {
            run(Command::new("patchelf")
                .arg("--set-rpath")
                .arg(KMOD_LIB_DIR)
                .arg(&dst))?;
        }
    }
    let interp_name = interp
        .file_name()
        .context("interpreter name")?
        .to_string_lossy()
        .into_owned();
    copy_exe(&interp, &libdir.join(&interp_name))?;
    extras.push(ExtraFile {
        source: libdir,
        dest: KMOD_LIB_DIR.into(),
    });
    let sbin = work.join("sbin");
    copy_exe(Path::new(KMOD_BIN), &sbin.join("kmod"))?;
    run(Command::new("patchelf")
        .arg("--set-interpreter")
        .arg(format!("{KMOD_LIB_DIR}/{interp_name}"))
        .arg("--set-rpath")
        .arg(KMOD_LIB_DIR)
        .arg(sbin.join("kmod")))?;
    std::os::unix::fs::symlink("kmod", sbin.join("modprobe"))?;
    extras.push(ExtraFile {
        source: sbin,
        dest: "/sbin".into(),
    });

    // depmod over the decompressed closure, as initrd-layout ships it.
    let root = work.join("modroot");
    let tree = root.join("lib/modules").join(release);
    let names = initrd_layout::upstream::needed_modules(config);
    for m in initrd_layout::upstream::module_closure(modules_tree, &names)? {
        let rel = m.path.to_string_lossy().into_owned();
        let data = fs::read(modules_tree.join(&m.path))
            .with_context(|| format!("reading module {rel}"))?;
        let (rel, data) = initrd_layout::build::decompress_module(&rel, data)?;
        let dst = tree.join(&rel);
        fs::create_dir_all(dst.parent().context("module path")?)?;
        fs::write(&dst, data)?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if modules_tree.join(f).is_file() {
            fs::copy(modules_tree.join(f), tree.join(f))?;
        }
    }
    run(Command::new("depmod").arg("-b").arg(&root).arg(release))?;
    let dest_dir = format!("{}/{release}", config.modules_dir.trim_end_matches('/'));
    let mut bins: Vec<PathBuf> = fs::read_dir(&tree)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    bins.sort();
    if !bins.iter().any(|p| p.ends_with("modules.dep.bin")) {
        bail!("depmod made no modules.dep.bin in {}", tree.display());
    }
    for p in bins {
        let name = p
            .file_name()
            .context("index name")?
            .to_string_lossy()
            .into_owned();
        extras.push(ExtraFile {
            source: p,
            dest: format!("{dest_dir}/{name}"),
        });
    }
    Ok(extras)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"{"version":1,"fileSystems":[
              {"mountPoint":"/","device":"tmpfs","fsType":"tmpfs","options":["mode=0755"]},
              {"mountPoint":"/nix/.ro-store","device":"../nix-store.squashfs","fsType":"squashfs",
               "options":["loop","threads=multi","x-netboot.loop-direct-io=on"]},
              {"mountPoint":"/nix/.rw-store","device":"tmpfs","fsType":"tmpfs","options":["mode=0755"]},
              {"mountPoint":"/nix/store","device":"overlay","fsType":"overlay",
               "overlay":{"lowerdir":["/nix/.ro-store"],"upperdir":"/nix/.rw-store/store","workdir":"/nix/.rw-store/work"}}],
              "registration":{"nixStore":"/nix/store/def-nix/bin/nix-store"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn mounts_like_stage_1() {
        let got = mount_commands(&config()).unwrap();
        let want = "mkdir -p $targetRoot\n\
mount -t tmpfs -o mode=0755 tmpfs $targetRoot || fail \"mount $targetRoot\"\n\
mkdir -p $targetRoot/nix/.ro-store\n\
mount -t squashfs -o loop,ro,threads=multi ../nix-store.squashfs $targetRoot/nix/.ro-store 2>/dev/null || mount -t squashfs -o loop,ro ../nix-store.squashfs $targetRoot/nix/.ro-store || fail \"mount $targetRoot/nix/.ro-store\"\n\
mkdir -p $targetRoot/nix/.rw-store\n\
mount -t tmpfs -o mode=0755 tmpfs $targetRoot/nix/.rw-store || fail \"mount $targetRoot/nix/.rw-store\"\n\
mkdir -p $targetRoot/nix/store\n\
mkdir -p $targetRoot/nix/.rw-store/store $targetRoot/nix/.rw-store/work\n\
mount -t overlay -o lowerdir=$targetRoot/nix/.ro-store,upperdir=$targetRoot/nix/.rw-store/store,workdir=$targetRoot/nix/.rw-store/work overlay $targetRoot/nix/store || fail \"mount $targetRoot/nix/store\"\n";
        assert_eq!(got, want);
    }

    #[test]
    fn script() {
        let c = config();
        let modules = ["squashfs".to_string(), "loop".into(), "overlay".into()];
        let inputs = ScriptInputs {
            config: &c,
            stage2_init: "/nix/store/abc-system/init",
            toplevel: "/nix/store/abc-system",
            nix_store: "/nix/store/def-nix/bin/nix-store",
            modules: &modules,
        };
        let s = stage1_script(&inputs).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("targetRoot=/mnt-root\n"));
        assert!(s.contains("for i in squashfs loop overlay; do"));
        assert!(s.contains(
            "/bin/chroot $targetRoot /nix/store/def-nix/bin/nix-store --load-db \\\n    < $targetRoot/nix/store/nix-path-registration"
        ));
        assert!(s.contains(
            "ln -sfn /nix/store/abc-system $targetRoot/nix/var/nix/profiles/system-1-link"
        ));
        assert!(s.contains("exec env -i /bin/switch_root $targetRoot $stage2Init \"$@\""));
        assert_eq!(placeholder(&s), None);
        assert_eq!(placeholder("a $@ @x@"), Some("x"));

        let bad = ScriptInputs {
            toplevel: "/nix/store/x; rm -rf /",
            ..inputs.clone()
        };
        assert!(stage1_script(&bad)
            .unwrap_err()
            .to_string()
            .contains("unquoted"));
    }

    /// The script is valid for a real shell (syntax only).
    #[test]
    fn script_parses() {
        let c = config();
        let modules = ["loop".to_string()];
        let inputs = ScriptInputs {
            config: &c,
            stage2_init: "/init2",
            toplevel: "/t",
            nix_store: "/n",
            modules: &modules,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init");
        fs::write(&p, stage1_script(&inputs).unwrap()).unwrap();
        let st = Command::new(BUSYBOX_BIN)
            .args(["sh", "-n"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}
