//! Host set-up from nothing, idempotent: the bookworm-backports apt source (derived from the
//! machine's own sources, no mirror named here), the Debian packages the harness runs, and two real
//! kernels unpacked under `target/netboot/kernels/{6.1,6.12}`.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The apt source file this harness writes.
pub const BACKPORTS_FILE: &str = "netboot-init-backports.sources";

/// Packages from the default suite.
pub const PACKAGES: &[&str] = &[
    "squashfs-tools",
    "busybox-static",
    "nix-bin",
    "cpio",
    "zstd",
    "kmod",
    "patchelf",
    "xz-utils",
    "ipxe-qemu",
    "kexec-tools",
];
/// Packages from backports (the bookworm qemu-system conflicts with backports' qemu-utils).
pub const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86"];

/// A kernel to fetch: the meta package (with an optional `/suite`) and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec {
    pub dir: &'static str,
    pub meta: &'static str,
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        dir: "6.1",
        meta: "linux-image-amd64",
    },
    KernelSpec {
        dir: "6.12",
        meta: "linux-image-amd64/{codename}-backports",
    },
];

fn log(msg: &str) {
    eprintln!("setup: {msg}");
}

/// Runs a command, failing with its stderr when it exits non-zero; returns stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn setup(ws: &Path) -> Result<()> {
    let codename = os_codename(Path::new("/etc/os-release"))?;
    let sources_d = Path::new("/etc/apt/sources.list.d");
    let mut need_update =
        ensure_backports_source(Path::new("/etc/apt/sources.list"), sources_d, &codename)?;
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let missing_bp: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    let kernels_root = ws.join("target/netboot/kernels");
    let kernels_missing = KERNELS
        .iter()
        .any(|k| !kernel_done(&kernels_root.join(k.dir)));
    need_update |= (!missing.is_empty() || !missing_bp.is_empty() || kernels_missing)
        && !lists_have_backports(&codename);
    if need_update {
        log("apt-get update");
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    if !missing_bp.is_empty() {
        log(&format!(
            "installing from {codename}-backports: {}",
            missing_bp.join(" ")
        ));
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "-t"])
            .arg(format!("{codename}-backports"))
            .args(&missing_bp)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !missing.is_empty() {
        log(&format!("installing {}", missing.join(" ")));
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    for k in KERNELS {
        let meta = k.meta.replace("{codename}", &codename);
        fetch_kernel(
            &kernels_root.join(k.dir),
            &meta,
            &ws.join("target/netboot/downloads"),
        )
        .with_context(|| format!("fetching kernel {meta} into kernels/{}", k.dir))?;
    }
    log("done");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn lists_have_backports(codename: &str) -> bool {
    let needle = format!("{codename}-backports");
    fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(&format!("_dists_{needle}_"))
            })
        })
        .unwrap_or(false)
}

/// `VERSION_CODENAME` from os-release.
pub fn os_codename(os_release: &Path) -> Result<String> {
    let text = fs::read_to_string(os_release)
        .with_context(|| format!("reading {}", os_release.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{} has no VERSION_CODENAME", os_release.display()))
}

/// Makes sure some apt source carries `<codename>-backports`; returns true when it wrote one.
pub fn ensure_backports_source(
    sources_list: &Path,
    sources_d: &Path,
    codename: &str,
) -> Result<bool> {
    let mut texts: Vec<(PathBuf, String)> = Vec::new();
    if let Ok(t) = fs::read_to_string(sources_list) {
        texts.push((sources_list.to_path_buf(), t));
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(sources_d)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".sources") || name.ends_with(".list") {
            if let Ok(t) = fs::read_to_string(&p) {
                texts.push((p, t));
            }
        }
    }
    let suite = format!("{codename}-backports");
    for (p, t) in &texts {
        let deb822 = p.extension().is_some_and(|e| e == "sources");
        if has_suite(t, deb822, &suite) {
            return Ok(false);
        }
    }
    for (p, t) in &texts {
        let deb822 = p.extension().is_some_and(|e| e == "sources");
        if let Some(entry) = derive_backports(t, deb822, codename) {
            let out = sources_d.join(BACKPORTS_FILE);
            log(&format!(
                "adding {suite} from {} to {}",
                p.display(),
                out.display()
            ));
            fs::write(&out, entry).with_context(|| format!("writing {}", out.display()))?;
            return Ok(true);
        }
    }
    bail!("no apt source for the Debian `{codename}` suite to derive {suite} from")
}

/// Whether an apt source text (deb822 or one-line) already lists `suite`.
pub fn has_suite(text: &str, deb822: bool, suite: &str) -> bool {
    if deb822 {
        stanzas(text).iter().any(|s| {
            field(s, "Suites").is_some_and(|v| v.split_whitespace().any(|x| x == suite))
                && field(s, "Enabled").is_none_or(|v| v != "no")
        })
    } else {
        text.lines()
            .filter_map(parse_one_line)
            .any(|l| l.suite == suite)
    }
}

fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = cur.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(stanza: &'a [(String, String)], key: &str) -> Option<&'a str> {
    stanza
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

struct OneLine<'a> {
    options: Option<&'a str>,
    uri: &'a str,
    suite: &'a str,
    components: Vec<&'a str>,
}

fn parse_one_line(line: &str) -> Option<OneLine<'_>> {
    let line = line.trim();
    let rest = line.strip_prefix("deb ")?.trim_start();
    let (options, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (o, r) = r.split_once(']')?;
        (Some(o.trim()), r.trim_start())
    } else {
        (None, rest)
    };
    let mut words = rest.split_whitespace();
    let uri = words.next()?;
    let suite = words.next()?;
    Some(OneLine {
        options,
        uri,
        suite,
        components: words.collect(),
    })
}

/// Derives a deb822 backports entry from the first source that carries the plain `codename`
/// suite, keeping its URIs, components and keyring.
pub fn derive_backports(text: &str, deb822: bool, codename: &str) -> Option<String> {
    let suite = format!("{codename}-backports");
    if deb822 {
        let s = stanzas(text).into_iter().find(|s| {
            field(s, "Types").is_some_and(|t| t.split_whitespace().any(|x| x == "deb"))
                && field(s, "Suites").is_some_and(|v| v.split_whitespace().any(|x| x == codename))
                && field(s, "Enabled").is_none_or(|v| v != "no")
        })?;
        let mut out = String::from(
            "# Derived by netboot-qemu setup from the machine's own apt sources.\nTypes: deb\n",
        );
        out.push_str(&format!("URIs: {}\nSuites: {suite}\n", field(&s, "URIs")?));
        out.push_str(&format!(
            "Components: {}\n",
            field(&s, "Components").unwrap_or("main")
        ));
        for key in ["Signed-By", "Architectures", "Trusted"] {
            if let Some(v) = field(&s, key) {
                out.push_str(&format!("{key}: {v}\n"));
            }
        }
        Some(out)
    } else {
        let l = text
            .lines()
            .filter_map(parse_one_line)
            .find(|l| l.suite == codename)?;
        let mut out = String::from(
            "# Derived by netboot-qemu setup from the machine's own apt sources.\nTypes: deb\n",
        );
        out.push_str(&format!("URIs: {}\nSuites: {suite}\n", l.uri));
        out.push_str(&format!(
            "Components: {}\n",
            if l.components.is_empty() {
                "main".to_string()
            } else {
                l.components.join(" ")
            }
        ));
        for opt in l.options.unwrap_or("").split_whitespace() {
            if let Some(v) = opt.strip_prefix("signed-by=") {
                out.push_str(&format!("Signed-By: {v}\n"));
            } else if let Some(v) = opt.strip_prefix("arch=") {
                out.push_str(&format!("Architectures: {}\n", v.replace(',', " ")));
            }
        }
        Some(out)
    }
}

const MARKER: &str = ".netboot-setup-done";

/// A kernel tree is complete when it has its `version`, the image and `modules.dep`.
pub fn kernel_done(dir: &Path) -> bool {
    let Ok(v) = fs::read_to_string(dir.join("version")) else {
        return false;
    };
    let v = v.trim();
    !v.is_empty()
        && dir.join(format!("boot/vmlinuz-{v}")).is_file()
        && dir.join(format!("lib/modules/{v}/modules.dep")).is_file()
}

/// The image package a kernel meta package depends on, from its `Depends` field.
pub fn image_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends.split(',').find_map(|alt| {
        let first = alt.split('|').next()?.trim();
        let (name, ver) = match first.split_once('(') {
            Some((n, v)) => (n.trim(), v.trim_end_matches(')').trim()),
            None => (first, ""),
        };
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = ver.strip_prefix('=').map(|v| v.trim().to_string());
        Some((name.to_string(), version))
    })
}

fn newest_deb(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with(&format!("{prefix}_")) && n.ends_with(".deb")
        })
        .collect();
    debs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().with_context(|| {
        format!(
            "apt-get download left no {prefix}_*.deb in {}",
            dir.display()
        )
    })
}

/// Downloads the meta package, its image dependency, unpacks it into `dest`, writes `version`,
/// runs depmod. Skips when `dest` is already complete.
pub fn fetch_kernel(dest: &Path, meta: &str, downloads: &Path) -> Result<()> {
    if dest.join(MARKER).is_file() || kernel_done(dest) {
        if !dest.join(MARKER).is_file() {
            fs::write(dest.join(MARKER), "complete\n")?;
        }
        return Ok(());
    }
    if downloads.starts_with(dest) {
        bail!(
            "the download directory {} must not be inside {}, which is replaced",
            downloads.display(),
            dest.display()
        );
    }
    fs::create_dir_all(downloads)?;
    log(&format!("apt-get download {meta}"));
    run(Command::new("apt-get")
        .args(["download", "-q", meta])
        .current_dir(downloads))?;
    let meta_name = meta.split('/').next().unwrap_or(meta);
    let meta_deb = newest_deb(downloads, meta_name)?;
    let depends = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&meta_deb)
        .arg("Depends"))?;
    let (image, version) = image_dependency(&depends).with_context(|| {
        format!(
            "{} depends on no linux-image-*: {depends}",
            meta_deb.display()
        )
    })?;
    let spec = match &version {
        Some(v) => format!("{image}={v}"),
        None => image.clone(),
    };
    log(&format!("apt-get download {spec}"));
    run(Command::new("apt-get")
        .args(["download", "-q", &spec])
        .current_dir(downloads))?;
    let image_deb = newest_deb(downloads, &image)?;
    if dest.exists() {
        fs::remove_dir_all(dest)?;
    }
    fs::create_dir_all(dest)?;
    log(&format!(
        "unpacking {} into {}",
        image_deb.display(),
        dest.display()
    ));
    run(Command::new("dpkg-deb").arg("-x").arg(&image_deb).arg(dest))?;
    let release = image
        .strip_prefix("linux-image-")
        .unwrap_or(&image)
        .to_string();
    let mod_dir = dest.join("lib/modules").join(&release);
    if !mod_dir.is_dir() {
        bail!("{} has no lib/modules/{release}", image_deb.display());
    }
    fs::write(dest.join("version"), format!("{release}\n"))?;
    run(Command::new("depmod").arg("-b").arg(dest).arg(&release))?;
    if !kernel_done(dest) {
        bail!("{} is incomplete after unpacking", dest.display());
    }
    fs::write(
        dest.join(MARKER),
        format!("{image} {}\n", version.unwrap_or_default()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# comment\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn deb822_derivation() {
        assert!(!has_suite(DEB822, true, "bookworm-backports"));
        let d = derive_backports(DEB822, true, "bookworm").unwrap();
        assert!(d.contains("URIs: http://deb.example/debian\n"), "{d}");
        assert!(d.contains("Suites: bookworm-backports\n"));
        assert!(d.contains("Components: main contrib\n"));
        assert!(d.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
        assert!(has_suite(&d, true, "bookworm-backports"));
        assert!(derive_backports(DEB822, true, "trixie").is_none());
    }

    #[test]
    fn one_line_derivation() {
        let t = "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main non-free\ndeb http://m.example/debian-security bookworm-security main\n";
        let d = derive_backports(t, false, "bookworm").unwrap();
        assert!(d.contains("URIs: http://m.example/debian\n"), "{d}");
        assert!(d.contains("Components: main non-free\n"));
        assert!(d.contains("Signed-By: /k.gpg\n"));
        assert!(d.contains("Architectures: amd64\n"));
        assert!(!has_suite(t, false, "bookworm-backports"));
        assert!(has_suite(
            "deb http://x bookworm-backports main\n",
            false,
            "bookworm-backports"
        ));
    }

    #[test]
    fn ensure_writes_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sources.list.d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("debian.sources"), DEB822).unwrap();
        assert!(ensure_backports_source(&dir.path().join("none"), &d, "bookworm").unwrap());
        assert!(d.join(BACKPORTS_FILE).is_file());
        assert!(!ensure_backports_source(&dir.path().join("none"), &d, "bookworm").unwrap());
    }

    #[test]
    fn depends_parsing() {
        assert_eq!(
            image_dependency("linux-image-6.1.0-56-amd64 (= 6.1.158-1)"),
            Some((
                "linux-image-6.1.0-56-amd64".into(),
                Some("6.1.158-1".into())
            ))
        );
        assert_eq!(
            image_dependency("foo, linux-image-6.12.95+deb12-amd64"),
            Some(("linux-image-6.12.95+deb12-amd64".into(), None))
        );
        assert_eq!(image_dependency("libc6"), None);
    }
}
