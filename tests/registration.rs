//! Registration against the real Nix (Debian's nix-bin): a store made by `nix-store --add`,
//! its registration from `--dump-db`, each mode run on a temp target root with the real
//! syscalls (load-db chroots into the root and runs a real nix-store packaged there), then
//! `nix-store --verify --check-contents` and `--dump-db` on the result.

use netboot_init::config::RegistrationMode;
use netboot_init::registration::host::{self, canonical, Fixture};
use netboot_init::registration::{parse, register, under, ChrootCommand, Exit, RegistrationOps};
use netboot_init::sys::Real;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const HOST_NIX_STORE: &str = "/usr/bin/nix-store";

/// The modes mount and chroot: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root_and_nix() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests chroot and mount: run them as root"
    );
    assert!(
        Path::new(HOST_NIX_STORE).exists(),
        "{HOST_NIX_STORE} missing: install Debian's nix-bin (cargo xtask setup)"
    );
}

fn fixture(name: &str, n: usize) -> (tempfile::TempDir, Fixture) {
    require_root_and_nix();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("registration-{name}-"))
        .tempdir()
        .unwrap();
    let f = host::prepare_fixture(&tmp.path().join("w"), n, Path::new(HOST_NIX_STORE))
        .unwrap_or_else(|e| panic!("preparing the fixture: {e:#}"));
    (tmp, f)
}

fn nix_store(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(HOST_NIX_STORE)
        .arg("--store")
        .arg(format!("local?root={}", root.display()))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_db_matches(f: &Fixture) {
    let target = f.target_root();
    let (ok, _, err) = nix_store(&target, &["--verify", "--check-contents"]);
    assert!(ok, "nix-store --verify --check-contents failed: {err}");
    assert!(
        !err.contains("error") && !err.contains("warning"),
        "--verify complained: {err}"
    );
    let (ok, dump, err) = nix_store(&target, &["--dump-db"]);
    assert!(ok, "--dump-db failed: {err}");
    let dumped = parse::parse(&dump).unwrap();
    assert_eq!(canonical(&dumped), canonical(&f.registration));
    assert!(dumped.len() > 3, "{dumped:?}");
}

fn check_marker_and_profile(f: &Fixture) {
    let target = f.target_root();
    let toplevel = f.stage2_init.trim_end_matches("/init");
    assert!(under(&target, "/etc/NIXOS").is_file());
    let profiles = under(&target, "/nix/var/nix/profiles");
    assert_eq!(
        std::fs::read_link(profiles.join("system")).unwrap(),
        PathBuf::from("system-1-link")
    );
    assert_eq!(
        std::fs::read_link(profiles.join("system-1-link")).unwrap(),
        PathBuf::from(toplevel)
    );
    let auto: Vec<_> = std::fs::read_dir(under(&target, "/nix/var/nix/gcroots/auto"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        auto,
        vec![PathBuf::from("/nix/var/nix/profiles/system-1-link")]
    );
}

/// What the real nix-env makes for the same toplevel, for comparison with ours.
fn nix_env_profile(root: &Path, toplevel: &str) -> Vec<(String, String)> {
    let profile = under(root, "/nix/var/nix/profiles/system");
    let out = Command::new("/usr/bin/nix-env")
        .arg("--store")
        .arg(format!("local?root={}", root.display()))
        .arg("-p")
        .arg(&profile)
        .args(["--set", toplevel])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix-env --set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_links(profile.parent().unwrap())
}

/// The symlinks in `dir`, by name, with their targets.
fn profile_links(dir: &Path) -> Vec<(String, String)> {
    let mut links: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let t = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                t.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    links.sort();
    links
}

#[test]
fn load_db_mode_with_the_images_own_nix_store() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, f) = fixture("load-db", 12);
    let report = register(&Real, &f.config, &f.stage2_init, &f.initrd_root)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.paths, Some(f.registration.len()));
    check_db_matches(&f);
    check_marker_and_profile(&f);
    // Our mounts are gone again.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*f.target_root().to_string_lossy()),
        "{mounts}"
    );
}

#[test]
fn prebuilt_mode_runs_nothing_and_nix_accepts_the_db() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, mut f) = fixture("prebuilt", 12);
    // No nix-store in the image is needed or used.
    f.config.registration.mode = RegistrationMode::Prebuilt;
    f.config.registration.nix_store = Some("/nix/store/no-such-nix-store".into());
    register(&Real, &f.config, &f.stage2_init, &f.initrd_root).unwrap_or_else(|e| panic!("{e:#}"));
    check_db_matches(&f);
    check_marker_and_profile(&f);
    // The db is the build's copy, minus the 8 MiB `reserved` file Nix makes itself.
    let db = under(&f.target_root(), "/nix/var/nix/db");
    let prebuilt = under(&f.initrd_root, &f.config.registration.prebuilt_db);
    for name in ["db.sqlite", "schema"] {
        assert_eq!(
            std::fs::read(db.join(name)).unwrap(),
            std::fs::read(prebuilt.join(name)).unwrap()
        );
    }
    assert!(!prebuilt.join("reserved").exists());
}

#[test]
fn none_mode_makes_marker_and_profile_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, mut f) = fixture("none", 3);
    f.config.registration.mode = RegistrationMode::None;
    register(&Real, &f.config, &f.stage2_init, &f.initrd_root).unwrap_or_else(|e| panic!("{e:#}"));
    check_marker_and_profile(&f);
    assert!(!under(&f.target_root(), "/nix/var/nix/db").exists());
}

#[test]
fn profile_matches_what_nix_env_makes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, mut f) = fixture("profile", 3);
    let toplevel = f.stage2_init.trim_end_matches("/init").to_string();
    f.config.registration.mode = RegistrationMode::Prebuilt;
    register(&Real, &f.config, &f.stage2_init, &f.initrd_root).unwrap_or_else(|e| panic!("{e:#}"));
    let ours = profile_links(&under(&f.target_root(), "/nix/var/nix/profiles"));
    // The real nix-env on the source store (which holds the same paths).
    let theirs = nix_env_profile(&f.source_root, &toplevel);
    assert_eq!(ours, theirs);
    // Setting the same toplevel again reuses the generation, as nix-env does.
    let again =
        netboot_init::registration::profile::set_system_profile(&Real, &f.target_root(), &toplevel)
            .unwrap();
    assert_eq!(again, "system-1-link");
}

#[test]
fn load_db_failure_reports_exit_status_and_stderr() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, f) = fixture("load-db-fails", 3);
    // A database directory nix-store cannot use: a file where the directory should be.
    let var = under(&f.target_root(), "/nix/var/nix");
    std::fs::create_dir_all(&var).unwrap();
    std::fs::write(var.join("db"), "not a directory").unwrap();
    let err = register(&Real, &f.config, &f.stage2_init, &f.initrd_root).unwrap_err();
    let msg = format!("{err:#}");
    eprintln!("message: {msg}");
    assert!(msg.contains("--load-db"), "{msg}");
    assert!(msg.contains("exit status 1"), "{msg}");
    assert!(msg.contains("error:"), "{msg}");
}

#[test]
fn registration_naming_a_missing_path_is_refused_before_running_nix() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, f) = fixture("missing", 3);
    let gone = &f.registration[1].path;
    std::fs::remove_file(under(&f.target_root(), gone))
        .or_else(|_| std::fs::remove_dir_all(under(&f.target_root(), gone)))
        .unwrap();
    let err = register(&Real, &f.config, &f.stage2_init, &f.initrd_root).unwrap_err();
    let msg = format!("{err:#}");
    eprintln!("message: {msg}");
    assert!(msg.contains(gone.as_str()), "{msg}");
    assert!(msg.contains("missing from the image"), "{msg}");
    assert!(!under(&f.target_root(), "/nix/var/nix/db").exists());
}

#[test]
fn registration_closure_info_form_loads_too() {
    // closureInfo writes `sha256:<base32>` hashes; load-db takes them and the result verifies.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, mut f) = fixture("closure-info", 4);
    for info in &mut f.registration {
        let digest = parse::nar_hash_digest(&info.nar_hash).unwrap();
        info.nar_hash = format!("sha256:{}", parse::nix_base32_encode(&digest));
    }
    let file = under(&f.target_root(), &f.config.registration.registration_file);
    std::fs::write(&file, parse::write(&f.registration)).unwrap();
    register(&Real, &f.config, &f.stage2_init, &f.initrd_root).unwrap_or_else(|e| panic!("{e:#}"));
    check_db_matches(&f);
}

#[test]
fn bench_hook_times_each_mode_on_a_1000_path_closure() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_nix();
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let timings = host::bench_modes(&tmp.path().join("w"), 1000, Path::new(HOST_NIX_STORE), 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("bench fixture + runs: {:?}", started.elapsed());
    assert_eq!(timings.len(), 6);
    for t in &timings {
        eprintln!("{:?}: {:.2} ms", t.mode, t.duration.as_secs_f64() * 1e3);
        assert!(t.duration > std::time::Duration::ZERO);
    }
}

fn host_command(program: &str, args: &[&str], timeout_ms: u64) -> ChrootCommand {
    ChrootCommand {
        // chroot("/") keeps the host's view, so host programs run.
        root: PathBuf::from("/"),
        program: PathBuf::from(program),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("PATH".into(), "/no-such-path".into())],
        stdin: PathBuf::from("/dev/null"),
        timeout: std::time::Duration::from_millis(timeout_ms),
    }
}

#[test]
fn real_spawn_reports_exit_output_enoent_and_timeout() {
    require_root_and_nix();
    let out = Real
        .spawn_chrooted(&host_command(
            "/bin/sh",
            &["-c", "echo out; echo err >&2; echo $PATH $HOME >&2; exit 3"],
            10_000,
        ))
        .unwrap();
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(out.stdout, b"out\n");
    // Only the given environment.
    assert_eq!(out.stderr, b"err\n/no-such-path\n");

    let err = Real
        .spawn_chrooted(&host_command("/no/such/program", &[], 10_000))
        .unwrap_err();
    assert_eq!(err, nix::errno::Errno::ENOENT);

    let started = std::time::Instant::now();
    let out = Real
        .spawn_chrooted(&host_command("/bin/sleep", &["30"], 300))
        .unwrap();
    assert_eq!(
        out.exit,
        Exit::TimedOut(std::time::Duration::from_millis(300))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
