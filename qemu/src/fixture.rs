//! The fixture system, made with the real Nix in a chroot store (`local?root=DIR`): the image's
//! own `nix-store` and kexec-tools packaged as store paths (patchelf onto a libraries path), a
//! static busybox, hundreds of filler paths, and a "system" toplevel whose `init` is the probe.
//! Registration comes from `nix-store --dump-db`; the prebuilt database from `--load-db` into a
//! fresh root. Cached under `target/netboot/fixture/` until an input changes.

use crate::setup::run;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bumped when the fixture's recipe changes.
const RECIPE: u32 = 4;
const FILLER_PATHS: usize = 320;

pub const NIX_STORE_BIN: &str = "/usr/bin/nix-store";
pub const KEXEC_BIN: &str = "/usr/sbin/kexec";
pub const BUSYBOX_BIN: &str = "/bin/busybox";

/// What the scenarios need to know about the fixture.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fixture {
    pub dir: PathBuf,
    /// The system toplevel (`/nix/store/...-nixos-system-probe`).
    pub toplevel: String,
    pub nix_store: String,
    pub busybox: String,
    pub kexec_bin: String,
    pub paths: usize,
    pub nar_bytes: u64,
    /// The store image (squashfs of the store plus `nix-path-registration`).
    pub store_image: PathBuf,
    /// A Nix database made by `nix-store --load-db` of the registration.
    pub prebuilt_db: PathBuf,
}

impl Fixture {
    pub fn init(&self) -> String {
        format!("{}/init", self.toplevel)
    }
}

fn stamp(probe: &Path) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut s = format!("recipe {RECIPE}\n");
    // The probe is relinked whenever the workspace changes; only its content matters.
    let bytes = fs::read(probe).with_context(|| format!("fixture input {}", probe.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    s.push_str(&format!(
        "{} {} {:016x}\n",
        probe.display(),
        bytes.len(),
        h.finish()
    ));
    for p in [
        Path::new(NIX_STORE_BIN),
        Path::new(KEXEC_BIN),
        Path::new(BUSYBOX_BIN),
    ] {
        let m = fs::metadata(p).with_context(|| format!("fixture input {}", p.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        s.push_str(&format!(
            "{} {} {:?}\n",
            p.display(),
            m.len(),
            mtime.map(|d| d.as_nanos())
        ));
    }
    Ok(s)
}

/// Makes the tree writable again (store paths are read-only) and removes it.
pub(crate) fn remove_tree(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(p).status();
    fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
}

/// The fixture, built when missing or stale.
pub fn ensure(ws: &Path, probe: &Path) -> Result<Fixture> {
    let dir = ws.join("target/netboot/fixture");
    let want = stamp(probe)?;
    let meta = dir.join("fixture.json");
    if fs::read_to_string(dir.join("stamp")).ok().as_deref() == Some(want.as_str()) {
        if let Ok(f) = fs::read_to_string(&meta)
            .map_err(anyhow::Error::from)
            .and_then(|t| Ok(serde_json::from_str::<Fixture>(&t)?))
        {
            if f.store_image.is_file() {
                return Ok(f);
            }
        }
    }
    eprintln!("fixture: building in {}", dir.display());
    remove_tree(&dir)?;
    fs::create_dir_all(&dir)?;
    let f = build(&dir, probe)?;
    fs::write(&meta, serde_json::to_string_pretty(&f)?)?;
    fs::write(dir.join("stamp"), want)?;
    Ok(f)
}

fn store_arg(root: &Path) -> String {
    format!("local?root={}", root.display())
}

/// `nix-store --add` each directory; returns the store paths in order.
fn nix_add(root: &Path, dirs: &[PathBuf]) -> Result<Vec<String>> {
    let out = run(Command::new("nix-store")
        .arg("--store")
        .arg(store_arg(root))
        .arg("--add")
        .args(dirs))?;
    let paths: Vec<String> = out.lines().map(str::to_string).collect();
    if paths.len() != dirs.len() {
        bail!(
            "nix-store --add of {} inputs printed {} paths",
            dirs.len(),
            paths.len()
        );
    }
    Ok(paths)
}

/// The shared libraries (soname -> file) and interpreter of dynamic executables, from ldd.
pub(crate) fn libraries(exes: &[&str]) -> Result<(BTreeMap<String, PathBuf>, PathBuf)> {
    let mut libs = BTreeMap::new();
    let mut interp = None;
    for exe in exes {
        let out = run(Command::new("ldd").arg(exe))?;
        for line in out.lines() {
            let line = line.trim();
            if let Some((name, rest)) = line.split_once(" => ") {
                let path = rest.split(" (").next().unwrap_or("").trim();
                if path.starts_with('/') {
                    libs.insert(name.trim().to_string(), PathBuf::from(path));
                }
            } else if line.starts_with('/') && line.contains("ld-linux") {
                interp = Some(PathBuf::from(line.split(" (").next().unwrap_or("").trim()));
            }
        }
    }
    Ok((libs, interp.context("ldd shows no ld-linux interpreter")?))
}

pub(crate) fn copy_exe(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst.parent().context("no parent")?)?;
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Deterministic filler bytes (xorshift), half of them text so the image compresses like a store.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    let text = seed & 1 == 0;
    const WORDS: &[&str] = &[
        "nix",
        "store",
        "netboot",
        "derivation",
        "closure",
        "kernel",
        "initrd",
        "overlay",
        "\n",
    ];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if text {
            out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn build(dir: &Path, probe: &Path) -> Result<Fixture> {
    let root = dir.join("root");
    let stage = dir.join("stage");
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&stage)?;

    // One path with every library nix-store and kexec need, ld-linux included; each library finds
    // its own dependencies next to itself ($ORIGIN), as the image has no /lib.
    let (libs, interp) = libraries(&[NIX_STORE_BIN, KEXEC_BIN])?;
    let libdir = stage.join("netboot-libs");
    fs::create_dir_all(libdir.join("lib"))?;
    for (soname, src) in &libs {
        let dst = libdir.join("lib").join(soname);
        fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
        if !soname.starts_with("libc.so") && !soname.starts_with("libm.so") {
            run(Command::new("patchelf")
                .arg("--set-rpath")
                .arg("$ORIGIN")
                .arg(&dst))?;
        }
    }
    let interp_name = interp.file_name().context("interpreter name")?.to_owned();
    copy_exe(&interp, &libdir.join("lib").join(&interp_name))?;
    let libs_path = nix_add(&root, &[libdir])?.remove(0);
    let interp_store = format!("{libs_path}/lib/{}", interp_name.to_string_lossy());

    let package = |name: &str, src: &str, rel: &str| -> Result<String> {
        let pdir = stage.join(name);
        let exe = pdir.join(rel);
        copy_exe(Path::new(src), &exe)?;
        run(Command::new("patchelf")
            .arg("--set-interpreter")
            .arg(&interp_store)
            .arg("--set-rpath")
            .arg(format!("{libs_path}/lib"))
            .arg(&exe))?;
        Ok(nix_add(&root, &[pdir])?.remove(0))
    };
    let nix_path = package("nix-2.8.0", NIX_STORE_BIN, "bin/nix-store")?;
    let kexec_path = package("kexec-tools", KEXEC_BIN, "bin/kexec")?;

    let bb = stage.join("busybox");
    copy_exe(Path::new(BUSYBOX_BIN), &bb.join("bin/busybox"))?;
    let applets = run(Command::new(BUSYBOX_BIN).arg("--list"))?;
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
    {
        std::os::unix::fs::symlink("busybox", bb.join("bin").join(a))?;
    }
    let busybox_path = nix_add(&root, &[bb])?.remove(0);

    let fill_root = stage.join("fill");
    let mut fill_dirs = Vec::new();
    for i in 0..FILLER_PATHS {
        let d = fill_root.join(format!("filler-{i:03}"));
        fs::create_dir_all(d.join("share"))?;
        let files = 1 + i % 4;
        for j in 0..files {
            let len = 2048 + ((i * 7919 + j * 104_729) % 56_000);
            fs::write(
                d.join("share").join(format!("data-{j}")),
                filler((i * 16 + j) as u64, len),
            )?;
        }
        fill_dirs.push(d);
    }
    let fillers = nix_add(&root, &fill_dirs)?;

    let sys = stage.join("nixos-system-netboot-probe");
    copy_exe(probe, &sys.join("init"))?;
    let pc = crate::probe::ProbeConfig {
        nix_store: format!("{nix_path}/bin/nix-store"),
        busybox: Some(busybox_path.clone()),
        kexec_bin: Some(format!("{kexec_path}/bin")),
    };
    fs::write(sys.join("probe.json"), serde_json::to_string_pretty(&pc)?)?;
    fs::write(sys.join("closure"), fillers.join("\n"))?;
    let toplevel = nix_add(&root, &[sys])?.remove(0);

    // Registration from the real database, with the references a real closure would have.
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    refs.insert(nix_path.clone(), vec![libs_path.clone()]);
    refs.insert(kexec_path.clone(), vec![libs_path.clone()]);
    let mut top_refs = vec![nix_path.clone(), kexec_path.clone(), busybox_path.clone()];
    top_refs.extend(fillers.iter().cloned());
    refs.insert(toplevel.clone(), top_refs);
    let dump = run(Command::new("nix-store")
        .arg("--store")
        .arg(store_arg(&root))
        .arg("--dump-db"))?;
    let (registration, paths, nar_bytes) = with_references(&dump, &refs)?;
    let reg_file = dir.join("nix-path-registration");
    fs::write(&reg_file, &registration)?;

    // The prebuilt database: what `nix-store --load-db` makes of the registration.
    let db_root = dir.join("db-root");
    fs::create_dir_all(&db_root)?;
    load_db(&db_root, &registration)?;
    let prebuilt_db = db_root.join("nix/var/nix/db");
    if !prebuilt_db.join("db.sqlite").is_file() {
        bail!(
            "nix-store --load-db made no {}",
            prebuilt_db.join("db.sqlite").display()
        );
    }

    let store_image = dir.join("nix-store.squashfs");
    let all: Vec<String> = registration
        .lines()
        .filter(|l| l.starts_with("/nix/store/"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut opts = initrd_layout::StoreImageOptions::new(all, Some(root.clone()), &store_image);
    opts.registration = Some(reg_file.clone());
    opts.processors = Some(2);
    initrd_layout::make_store_image(&opts).context("initrd-layout store-image")?;
    remove_tree(&stage)?;

    Ok(Fixture {
        dir: dir.to_path_buf(),
        toplevel,
        nix_store: pc.nix_store,
        busybox: busybox_path,
        kexec_bin: format!("{kexec_path}/bin"),
        paths,
        nar_bytes,
        store_image,
        prebuilt_db,
    })
}

fn load_db(root: &Path, registration: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("nix-store")
        .arg("--store")
        .arg(store_arg(root))
        .arg("--load-db")
        .stdin(Stdio::piped())
        .spawn()
        .context("running nix-store --load-db")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(registration.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("nix-store --load-db failed ({st})");
    }
    Ok(())
}

/// Rewrites the reference lists of a `--dump-db` text; returns it with the path count and the
/// total NAR size.
pub fn with_references(
    dump: &str,
    refs: &BTreeMap<String, Vec<String>>,
) -> Result<(String, usize, u64)> {
    let lines: Vec<&str> = dump.lines().collect();
    let mut out = String::new();
    let (mut i, mut count, mut bytes) = (0, 0, 0u64);
    while i < lines.len() {
        if lines[i].is_empty() {
            i += 1;
            continue;
        }
        let path = lines[i];
        let hash = lines.get(i + 1).context("dump-db: truncated")?;
        let size = lines.get(i + 2).context("dump-db: truncated")?;
        let deriver = lines.get(i + 3).context("dump-db: truncated")?;
        let n: usize = lines
            .get(i + 4)
            .context("dump-db: truncated")?
            .parse()
            .context("dump-db: reference count")?;
        let old = lines.get(i + 5..i + 5 + n).context("dump-db: truncated")?;
        i += 5 + n;
        let new: Vec<String> = refs
            .get(path)
            .cloned()
            .unwrap_or_else(|| old.iter().map(|s| s.to_string()).collect());
        out.push_str(&format!(
            "{path}\n{hash}\n{size}\n{deriver}\n{}\n",
            new.len()
        ));
        for r in &new {
            out.push_str(r);
            out.push('\n');
        }
        count += 1;
        bytes += size.parse::<u64>().unwrap_or(0);
    }
    Ok((out, count, bytes))
}
