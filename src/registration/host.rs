//! Host side of registration, used when the image is built and by tests and benchmarks:
//! the prebuilt database, a real `nix-store` packaged as store paths for a chroot, and a
//! generated closure to time each mode on.

use super::parse::{self, PathInfo};
use super::{under, Exit, RegistrationOps};
use crate::config::{Config, RegistrationMode};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Files of the database directory that are not copied: `reserved` is 8 MiB of disk space Nix
/// keeps for the garbage collector and recreates whenever it opens the store.
const DB_SKIP: &[&str] = &["reserved"];

/// Builds the Nix database for `registration_file` with the real `nix_store --load-db`
/// against a scratch root, checks it with `--dump-db`, and copies the database directory
/// (db.sqlite, schema, big-lock) to `out_db_dir`, which must not exist or be empty.
pub fn build_prebuilt_db(
    nix_store: &Path,
    registration_file: &Path,
    out_db_dir: &Path,
) -> anyhow::Result<()> {
    let text = fs::read_to_string(registration_file)
        .with_context(|| format!("reading registration file {}", registration_file.display()))?;
    let infos = parse::parse(&text)
        .with_context(|| format!("registration file {}", registration_file.display()))?;
    if out_db_dir.exists() && fs::read_dir(out_db_dir)?.next().is_some() {
        bail!("{} exists and is not empty", out_db_dir.display());
    }
    let scratch = scratch_dir(out_db_dir)?;
    let result = (|| {
        let store = format!("local?root={}", scratch.display());
        run(Command::new(nix_store)
            .args(["--store", &store, "--load-db"])
            .stdin(fs::File::open(registration_file)?))
        .context("building the prebuilt database")?;
        let dumped = run(Command::new(nix_store).args(["--store", &store, "--dump-db"]))?;
        let dumped = parse::parse(&String::from_utf8_lossy(&dumped))
            .context("parsing nix-store --dump-db of the prebuilt database")?;
        if canonical(&dumped) != canonical(&infos) {
            bail!(
                "the prebuilt database does not hold what {} registers",
                registration_file.display()
            );
        }
        let db = under(&scratch, super::NIX_DB_DIR);
        fs::create_dir_all(out_db_dir)?;
        for entry in fs::read_dir(&db)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if DB_SKIP.contains(&name.as_ref()) {
                continue;
            }
            if name.ends_with("-wal") || name.ends_with("-shm") || name.ends_with("-journal") {
                bail!(
                    "{} left an SQLite journal {name} behind",
                    nix_store.display()
                );
            }
            copy_tree(&entry.path(), &out_db_dir.join(&*name)).with_context(|| {
                format!(
                    "copying {} to {}",
                    entry.path().display(),
                    out_db_dir.display()
                )
            })?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// A registration as Nix sees it: by path (the last record wins), hashes decoded,
/// references as a set.
#[allow(clippy::type_complexity)]
pub fn canonical(
    infos: &[PathInfo],
) -> BTreeMap<String, (Option<[u8; 32]>, u64, Option<String>, Vec<String>)> {
    infos
        .iter()
        .map(|i| {
            let mut refs = i.references.clone();
            refs.sort();
            refs.dedup();
            (
                i.path.clone(),
                (
                    parse::nar_hash_digest(&i.nar_hash),
                    i.nar_size,
                    i.deriver.clone(),
                    refs,
                ),
            )
        })
        .collect()
}

fn scratch_dir(next_to: &Path) -> anyhow::Result<PathBuf> {
    let name = next_to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    let dir = next_to.with_file_name(format!(".{name}.scratch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `command`, returns its stdout; a failure names the command, its exit status and the
/// tail of its stderr.
fn run(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let shown = format!("{command:?}");
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !output.status.success() {
        let exit = Exit::from(output.status);
        bail!(
            "{shown} failed with {exit}: {}",
            super::tail(&output.stderr, 10)
        );
    }
    Ok(output.stdout)
}

/// Copies `from` to `to`: directories, regular files and symlinks, with permission bits.
/// Never overwrites a file; an existing directory is merged into.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let meta = fs::symlink_metadata(from)?;
    let mode = meta.permissions().mode() & 0o7777;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if kind.is_dir() {
        match fs::create_dir(to) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && to.is_dir() => {}
            other => other?,
        }
        // Writable while filling it (store directories are 0555).
        fs::set_permissions(to, fs::Permissions::from_mode(mode | 0o700))?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(mode))
    } else if kind.is_file() {
        let mut src = fs::File::open(from)?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(to)?;
        io::copy(&mut src, &mut dst)?;
        dst.set_permissions(fs::Permissions::from_mode(mode))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a directory, regular file or symlink",
                from.display()
            ),
        ))
    }
}

/// A real `nix-store` as two store paths: its shared libraries with the dynamic loader, and
/// the `nix` binary patched (patchelf) to use them, with `nix-store` and `nix-env` links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedNix {
    pub libs: String,
    pub nix: String,
    /// `<nix>/bin/nix-store`.
    pub nix_store: String,
}

/// Packages the host's `nix-store` (a dynamic binary) into the store under `store_root`
/// (added with `host_nix_store --store local?root=<store_root> --add`), so it runs chrooted
/// into a root holding those paths. Needs `ldd` and `patchelf`.
pub fn package_nix_store(host_nix_store: &Path, store_root: &Path) -> anyhow::Result<PackagedNix> {
    let binary = fs::canonicalize(host_nix_store)
        .with_context(|| format!("resolving {}", host_nix_store.display()))?;
    let staging = scratch_dir(&store_root.join("nix-staging"))?;
    let result = (|| {
        let ldd = run(Command::new("ldd").arg(&binary))?;
        let libs_dir = staging.join("nix-libs");
        fs::create_dir(&libs_dir)?;
        let mut interpreter = None;
        for line in String::from_utf8_lossy(&ldd).lines() {
            let line = line.trim();
            // "libfoo.so.1 => /lib/.../libfoo.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let (name, path) = match line.split_once(" => ") {
                Some((name, rest)) => (name.to_string(), rest.split(" (").next().unwrap_or("")),
                None if line.starts_with('/') => {
                    let path = line.split(" (").next().unwrap_or("");
                    let name = Path::new(path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    interpreter = Some(name.clone());
                    (name, path)
                }
                None => continue,
            };
            if path.is_empty() || name.is_empty() {
                continue;
            }
            let real = fs::canonicalize(path).with_context(|| format!("resolving {path}"))?;
            fs::copy(&real, libs_dir.join(&name))?;
        }
        let Some(interpreter) = interpreter else {
            bail!("ldd {} names no dynamic loader", binary.display());
        };
        // Debian's Nix libraries carry RUNPATH=/usr/lib/nix, which hides the executable's
        // RPATH from their own dependencies: point every library at its neighbours.
        let mut patch = Command::new("patchelf");
        patch.args(["--set-rpath", "$ORIGIN"]);
        for entry in fs::read_dir(&libs_dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()) != Some(interpreter.as_str()) {
                patch.arg(path);
            }
        }
        run(&mut patch)?;
        let store = format!("local?root={}", store_root.display());
        let add = |dir: &Path| -> anyhow::Result<String> {
            let out = run(Command::new(host_nix_store)
                .args(["--store", &store, "--add"])
                .arg(dir))?;
            Ok(String::from_utf8_lossy(&out).trim().to_string())
        };
        let libs = add(&libs_dir)?;

        let nix_dir = staging.join("nix");
        let bin = nix_dir.join("bin");
        fs::create_dir_all(&bin)?;
        fs::copy(&binary, bin.join("nix"))?;
        run(Command::new("patchelf")
            .args(["--set-interpreter", &format!("{libs}/{interpreter}")])
            // DT_RPATH (not RUNPATH) also applies to the libraries' own dependencies.
            .args(["--force-rpath", "--set-rpath", &libs])
            .arg(bin.join("nix")))?;
        for link in ["nix-store", "nix-env"] {
            std::os::unix::fs::symlink("nix", bin.join(link))?;
        }
        let nix = add(&nix_dir)?;
        Ok(PackagedNix {
            nix_store: format!("{nix}/bin/nix-store"),
            libs,
            nix,
        })
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

/// A store image to register: a source store made by the real Nix, and a target root holding
/// copies of its paths and the registration file, as the booted image has them.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub work_dir: PathBuf,
    /// The store `--add` made (`local?root=<source_root>`).
    pub source_root: PathBuf,
    /// What the registration registers, as written to the image.
    pub registration: Vec<PathInfo>,
    /// `config.target_root` is the target root; mode `load-db` with the packaged nix-store.
    pub config: Config,
    /// Holds the prebuilt database at `config.registration.prebuilt_db`.
    pub initrd_root: PathBuf,
    /// `<toplevel>/init`.
    pub stage2_init: String,
    pub nix: PackagedNix,
}

impl Fixture {
    pub fn target_root(&self) -> PathBuf {
        PathBuf::from(&self.config.target_root)
    }
}

/// Builds a [`Fixture`] in `work_dir` (emptied first) with `n_paths` generated store paths
/// (plain files, each referencing its predecessor and one earlier path, plus a toplevel
/// directory with an `init` referencing all of them), the packaged `nix-store`, a
/// registration from the real `--dump-db`, and a prebuilt database from
/// [`build_prebuilt_db`]. Needs root only to run the modes, not to build.
pub fn prepare_fixture(
    work_dir: &Path,
    n_paths: usize,
    host_nix_store: &Path,
) -> anyhow::Result<Fixture> {
    let _ = fs::remove_dir_all(work_dir);
    let source_root = work_dir.join("source");
    let staging = work_dir.join("staging");
    let target = work_dir.join("target");
    let initrd = work_dir.join("initrd");
    for d in [&source_root, &staging, &target, &initrd] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The initrd's /dev at boot; here the host's, bound into the target for nix-store.
    std::os::unix::fs::symlink("/dev", initrd.join("dev"))?;
    let store = format!("local?root={}", source_root.display());

    let nix = package_nix_store(host_nix_store, &source_root)?;

    let mut files = Vec::with_capacity(n_paths);
    for i in 0..n_paths {
        let f = staging.join(format!("path-{i}"));
        fs::write(&f, format!("generated store path {i}\n"))?;
        files.push(f);
    }
    let toplevel_dir = staging.join("nixos-system-bench");
    fs::create_dir(&toplevel_dir)?;
    fs::write(toplevel_dir.join("init"), "#!/bin/sh\necho stage 2\n")?;
    let mut generated = Vec::with_capacity(n_paths);
    for chunk in files.chunks(500) {
        let out = run(Command::new(host_nix_store)
            .args(["--store", &store, "--add"])
            .args(chunk))?;
        generated.extend(String::from_utf8_lossy(&out).lines().map(str::to_string));
    }
    if generated.len() != n_paths {
        bail!(
            "nix-store --add made {} paths, not {n_paths}",
            generated.len()
        );
    }
    let toplevel = String::from_utf8_lossy(&run(Command::new(host_nix_store)
        .args(["--store", &store, "--add"])
        .arg(&toplevel_dir))?)
    .trim()
    .to_string();
    fs::remove_dir_all(&staging)?;

    // References are what the image's closure claims; Nix takes them as given.
    let dumped = run(Command::new(host_nix_store).args(["--store", &store, "--dump-db"]))?;
    let mut registration = parse::parse(&String::from_utf8_lossy(&dumped))
        .context("parsing the source store's --dump-db")?;
    let index: BTreeMap<String, usize> = generated
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i))
        .collect();
    for info in &mut registration {
        if let Some(&i) = index.get(&info.path) {
            if i > 0 {
                info.references.push(generated[i - 1].clone());
                info.references.push(generated[i / 2].clone());
            }
        } else if info.path == nix.nix {
            info.references.push(nix.libs.clone());
        } else if info.path == toplevel {
            info.references.extend(generated.iter().cloned());
            info.references.push(nix.nix.clone());
        }
        info.references.sort();
        info.references.dedup();
    }

    let target_store = under(&target, parse::STORE_DIR);
    fs::create_dir_all(&target_store)?;
    for info in &registration {
        copy_tree(
            &under(&source_root, &info.path),
            &under(&target, &info.path),
        )
        .with_context(|| format!("copying {} into the target root", info.path))?;
    }
    let mut config: Config = serde_json::from_str(r#"{"version":1,"fileSystems":[]}"#)?;
    config.target_root = target.to_string_lossy().into_owned();
    config.registration.mode = RegistrationMode::LoadDb;
    config.registration.nix_store = Some(nix.nix_store.clone());
    let reg_file = under(&target, &config.registration.registration_file);
    fs::write(&reg_file, parse::write(&registration))?;
    build_prebuilt_db(
        host_nix_store,
        &reg_file,
        &under(&initrd, &config.registration.prebuilt_db),
    )?;
    Ok(Fixture {
        work_dir: work_dir.to_path_buf(),
        source_root,
        registration,
        config,
        initrd_root: initrd,
        stage2_init: format!("{toplevel}/init"),
        nix,
    })
}

/// Undoes a registration run on the fixture's target root (database, profile, marker).
pub fn reset_target(fixture: &Fixture) -> anyhow::Result<()> {
    let target = fixture.target_root();
    for dir in ["/nix/var", "/etc"] {
        let d = under(&target, dir);
        if d.exists() {
            fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    Ok(())
}

/// Runs `mode` on a freshly reset fixture with `sys` and returns how long `register` took.
pub fn time_mode<S: RegistrationOps>(
    sys: &S,
    fixture: &Fixture,
    mode: RegistrationMode,
) -> anyhow::Result<Duration> {
    reset_target(fixture)?;
    let mut config = fixture.config.clone();
    config.registration.mode = mode;
    let started = Instant::now();
    super::register(sys, &config, &fixture.stage2_init, &fixture.initrd_root)
        .with_context(|| format!("registration mode {mode:?}"))?;
    Ok(started.elapsed())
}

/// One mode's time in [`bench_modes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeTiming {
    pub mode: RegistrationMode,
    /// The whole `register` call: validation, the database, `/etc/NIXOS`, the profile.
    pub duration: Duration,
}

/// The benchmark hook: builds a [`Fixture`] of `n_paths` generated paths in `work_dir` and
/// times each mode `rounds` times with the real syscalls (load-db chroots and mounts: root
/// only). Returns the timings in run order, modes interleaved.
pub fn bench_modes(
    work_dir: &Path,
    n_paths: usize,
    host_nix_store: &Path,
    rounds: usize,
) -> anyhow::Result<Vec<ModeTiming>> {
    let fixture = prepare_fixture(work_dir, n_paths, host_nix_store)?;
    let mut timings = Vec::new();
    for _ in 0..rounds {
        for mode in [
            RegistrationMode::LoadDb,
            RegistrationMode::Prebuilt,
            RegistrationMode::None,
        ] {
            let duration = time_mode(&crate::sys::Real, &fixture, mode)?;
            timings.push(ModeTiming { mode, duration });
        }
    }
    reset_target(&fixture)?;
    Ok(timings)
}
