//! `initrd-layout netboot-dir`: what netboot.nix hands its users besides the ramdisk.
//!
//! ```text
//! OUT/bzImage  OUT/initrd  OUT/netboot.ipxe
//! OUT/kexec-tree/{bzImage,initrd,kexec-boot}
//! ```
//!
//! iPXE reads a script line by splitting it at whitespace with no quoting at all, expands
//! `${setting}` in every word, treats a word starting with `#` as the start of a comment and
//! the words `||`, `&&` and `;` as command separators. Kernel parameters that would be changed
//! by any of that are refused before anything is written.

use crate::build::{self, BuildOptions, BuildReport};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// x86's COMMAND_LINE_SIZE, including the terminating NUL.
pub const MAX_CMDLINE: usize = 2048;

#[derive(Debug, Clone)]
pub enum InitrdSource {
    /// Build the initrd from these options (their `output` is replaced by `OUT/initrd`).
    Build(Box<BuildOptions>),
    /// Use an initrd built before.
    Prebuilt(PathBuf),
}

#[derive(Debug, Clone)]
pub struct NetbootDirOptions {
    /// The kernel image (bzImage, e.g. `/boot/vmlinuz-<release>`).
    pub kernel: PathBuf,
    pub initrd: InitrdSource,
    /// The stage-2 init passed as `init=`; defaults to the config's `init`.
    pub stage2_init: Option<String>,
    /// Further kernel parameters, one word each.
    pub kernel_params: Vec<String>,
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct NetbootDirReport {
    pub out_dir: PathBuf,
    /// The kernel command line written into both scripts (without iPXE's `${cmdline}`).
    pub cmdline: String,
    pub initrd: Option<BuildReport>,
}

impl std::fmt::Display for NetbootDirReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: bzImage, initrd, netboot.ipxe, kexec-tree/; command line: {}",
            self.out_dir.display(),
            self.cmdline
        )
    }
}

/// Checks one kernel parameter (or the `init=` path) against iPXE's script parsing.
pub fn check_param(p: &str) -> Result<()> {
    if p.is_empty() {
        bail!("empty kernel parameter");
    }
    if let Some(c) = p.chars().find(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "kernel parameter {p:?} contains {c:?}: iPXE splits script lines at whitespace and has no quoting, so it would arrive as several words"
        );
    }
    if p.contains('$') {
        bail!("kernel parameter {p:?} contains '$': iPXE expands ${{...}} settings in every word of its script");
    }
    if p.starts_with('#') {
        bail!("kernel parameter {p:?} starts with '#': iPXE would read it and everything after it (including ${{cmdline}}) as a comment");
    }
    if matches!(p, "||" | "&&" | ";") {
        bail!("kernel parameter {p:?} is an iPXE command separator");
    }
    if p.contains('\'') {
        bail!("kernel parameter {p:?} contains a single quote, which the kernel's command line parser does not treat as quoting");
    }
    Ok(())
}

/// The kernel command line: `init=<init>` followed by the parameters.
pub fn kernel_cmdline(stage2_init: &str, params: &[String]) -> Result<String> {
    if !stage2_init.starts_with('/') {
        bail!("stage-2 init {stage2_init:?} is not an absolute path");
    }
    let init = format!("init={stage2_init}");
    check_param(&init)?;
    for p in params {
        check_param(p)?;
        if p.starts_with("init=") {
            bail!("kernel parameter {p:?}: init= is set from the stage-2 init ({stage2_init})");
        }
    }
    let mut words = vec![init];
    words.extend(params.iter().cloned());
    let line = words.join(" ");
    if line.len() + 1 > MAX_CMDLINE {
        bail!("the kernel command line is {} bytes, over the kernel's limit of {} (COMMAND_LINE_SIZE)", line.len(), MAX_CMDLINE - 1);
    }
    Ok(line)
}

/// netboot.nix's script: `initrd=initrd` names the initrd for EFI-stub boots, and `${cmdline}`
/// lets a chainloading menu (netboot.xyz) add parameters.
pub fn ipxe_script(cmdline: &str) -> String {
    // The command line starts with the init= word; netboot.nix puts initrd= right after it.
    let (init, rest) = cmdline.split_once(' ').unwrap_or((cmdline, ""));
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("{rest} ")
    };
    format!(
        "#!ipxe\n\
         # Use the cmdline variable to allow the user to specify custom kernel params\n\
         # when chainloading this script from other iPXE scripts like netboot.xyz\n\
         kernel bzImage {init} initrd=initrd {rest}${{cmdline}}\n\
         initrd initrd\n\
         boot\n"
    )
}

/// The kexec script: finds its files next to itself from any working directory (through
/// symlinks to it too); arguments given to it are appended to the kernel command line.
pub fn kexec_script(cmdline: &str) -> String {
    let quoted = cmdline.replace('\'', r"'\''");
    format!(
        r#"#!/bin/sh
# Boots the NixOS netboot kernel and initrd next to this script with kexec.
# Arguments are appended to the kernel command line.
set -eu
if ! command -v kexec >/dev/null 2>&1; then
  echo "kexec-boot: kexec not found: please install kexec-tools" >&2
  exit 1
fi
self=$(readlink -f "$0" 2>/dev/null) || self=$0
dir=$(CDPATH= cd -- "$(dirname -- "$self")" && pwd)
cmdline='{quoted}'
if [ "$#" -gt 0 ]; then
  cmdline="$cmdline $*"
fi
kexec --load "$dir/bzImage" --initrd="$dir/initrd" --command-line="$cmdline"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl kexec
else
  kexec -e
fi
"#
    )
}

/// An x86 boot image has the "HdrS" signature at offset 0x202.
fn check_kernel(path: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("kernel image {}", path.display()))?;
    if !meta.is_file() {
        bail!("kernel image {} is not a regular file", path.display());
    }
    let mut head = [0u8; 0x206];
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("kernel image {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading kernel image {}", path.display()))?;
    if n < head.len() || &head[0x202..0x206] != b"HdrS" {
        bail!(
            "{} is not an x86 kernel boot image (bzImage): no \"HdrS\" boot header",
            path.display()
        );
    }
    Ok(())
}

/// Copies an input into the directory (never a hard link to it: editing the output must not
/// change the input).
fn copy_in(src: &Path, dest: &Path) -> Result<()> {
    remove_existing(dest)?;
    std::fs::copy(src, dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    Ok(())
}

/// The kexec tree shares the files of the directory: a hard link where possible.
fn link_within(src: &Path, dest: &Path) -> Result<()> {
    remove_existing(dest)?;
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    }
    Ok(())
}

fn remove_existing(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

pub fn make_netboot_dir(opts: &NetbootDirOptions) -> Result<NetbootDirReport> {
    check_kernel(&opts.kernel)?;
    let stage2_init = match (&opts.stage2_init, &opts.initrd) {
        (Some(i), _) => i.clone(),
        (None, InitrdSource::Build(b)) => {
            let (config, _) = build::load_config(&b.config)?;
            config
                .init
                .context("no stage-2 init: pass --stage2-init or set \"init\" in the config")?
        }
        (None, InitrdSource::Prebuilt(_)) => {
            bail!("no stage-2 init: pass --stage2-init with a prebuilt initrd")
        }
    };
    let cmdline = kernel_cmdline(&stage2_init, &opts.kernel_params)?;
    let out = &opts.out_dir;
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    let initrd_path = out.join("initrd");
    let report = match &opts.initrd {
        InitrdSource::Prebuilt(p) => {
            let meta = std::fs::metadata(p).with_context(|| format!("initrd {}", p.display()))?;
            if !meta.is_file() {
                bail!("initrd {} is not a regular file", p.display());
            }
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            copy_in(p, &initrd_path)?;
            None
        }
        InitrdSource::Build(b) => {
            let mut b = (**b).clone();
            b.output = initrd_path.clone();
            // Every input is checked before the directory is created.
            build::plan(&b)?;
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            Some(build::build(&b)?)
        }
    };
    copy_in(&opts.kernel, &out.join("bzImage"))?;
    write_file(&out.join("netboot.ipxe"), &ipxe_script(&cmdline), 0o644)?;
    let tree = out.join("kexec-tree");
    std::fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    link_within(&out.join("bzImage"), &tree.join("bzImage"))?;
    link_within(&initrd_path, &tree.join("initrd"))?;
    write_file(&tree.join("kexec-boot"), &kexec_script(&cmdline), 0o755)?;
    Ok(NetbootDirReport {
        out_dir: out.clone(),
        cmdline,
        initrd: report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_table() {
        for ok in [
            "console=ttyS0,115200",
            "boot.shell_on_fail",
            "foo=\"a\"",
            "--",
            "quiet",
            "x=1#2",
        ] {
            check_param(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        for bad in [
            "a b",
            "a\tb",
            "x=${net0/mac}",
            "x=$y",
            "#c",
            "||",
            "&&",
            ";",
            "",
            "a\nb",
            "it's",
        ] {
            assert!(check_param(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cmdline_and_scripts() {
        let params = vec!["console=ttyS0".to_string(), "loglevel=7".to_string()];
        let line = kernel_cmdline("/nix/store/abc-nixos-system/init", &params).unwrap();
        assert_eq!(
            line,
            "init=/nix/store/abc-nixos-system/init console=ttyS0 loglevel=7"
        );
        let s = ipxe_script(&line);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "\nkernel bzImage init=/nix/store/abc-nixos-system/init initrd=initrd console=ttyS0 loglevel=7 ${cmdline}\ninitrd initrd\nboot\n"
        ));
        let k = kexec_script(&line);
        assert!(k.contains(
            "cmdline='init=/nix/store/abc-nixos-system/init console=ttyS0 loglevel=7'\n"
        ));
        assert!(k.contains("--initrd=\"$dir/initrd\""));
        assert!(kernel_cmdline("relative/init", &[]).is_err());
        assert!(kernel_cmdline("/a/init", &["init=/b".to_string()]).is_err());
        assert!(kernel_cmdline("/a/init", &["x".repeat(3000)]).is_err());
    }

    /// iPXE's reading of a script line: whitespace-separated words, a word starting with `#`
    /// ends the line, `||` `&&` `;` separate commands, `${...}` expands (here: to nothing).
    fn ipxe_words(line: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for w in line.split_whitespace() {
            if w.starts_with('#') {
                break;
            }
            if matches!(w, "||" | "&&" | ";") {
                return None;
            }
            let mut expanded = String::new();
            let mut rest = w;
            while let Some(start) = rest.find("${") {
                let end = rest[start..].find('}')?;
                expanded.push_str(&rest[..start]);
                rest = &rest[start + end + 1..];
            }
            expanded.push_str(rest);
            if !expanded.is_empty() {
                out.push(expanded);
            }
        }
        Some(out)
    }

    proptest::proptest! {
        #[test]
        fn accepted_params_reach_the_kernel_unchanged(
            params in proptest::collection::vec("[ -~\t]{1,12}", 0..6)
        ) {
            let Ok(line) = kernel_cmdline("/nix/store/x-system/init", &params) else { return Ok(()) };
            let script = ipxe_script(&line);
            let kernel_line = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
            let words = ipxe_words(kernel_line).unwrap();
            let mut expected = vec!["kernel".to_string(), "bzImage".into(), "init=/nix/store/x-system/init".into(), "initrd=initrd".into()];
            expected.extend(params.iter().cloned());
            proptest::prop_assert_eq!(words, expected);
        }

        #[test]
        fn check_param_never_panics(p in "\\PC{0,40}") {
            let _ = check_param(&p);
        }
    }
}
