//! The registration phase on the recording Fake: call sequences per mode and failure messages.
//! The registration file and the store paths it names are real files in a temp dir.

use super::*;
use crate::config::Config;
use std::fs;

const NIX: &str = "/nix/store/7l9sgafayvxh31jfqqxa615f1r8vil8m-nix";
const NIX_STORE: &str = "/nix/store/7l9sgafayvxh31jfqqxa615f1r8vil8m-nix/bin/nix-store";
const LIB: &str = "/nix/store/1b8m03r63zqhnjf7l5wnldhh7c134ap5-lib";
const SYSTEM: &str = "/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-nixos-system-test";
const HEX: &str = "601f5c23aab2a6e202fa08239321db45d8e9c7689ffa466374c31062a037664d";

struct Env {
    _tmp: tempfile::TempDir,
    target: PathBuf,
    initrd: PathBuf,
    config: Config,
}

impl Env {
    fn t(&self) -> String {
        self.target.display().to_string()
    }
    fn i(&self) -> String {
        self.initrd.display().to_string()
    }
    fn registration_file(&self) -> PathBuf {
        under(&self.target, "/nix/store/nix-path-registration")
    }
    fn write_registration(&self, text: &str) {
        fs::write(self.registration_file(), text).unwrap();
    }
    fn run(&self, fake: &Fake) -> anyhow::Result<RegistrationReport> {
        register(fake, &self.config, &format!("{SYSTEM}/init"), &self.initrd)
    }
}

fn infos() -> Vec<PathInfo> {
    let info = |path: &str, refs: &[&str]| PathInfo {
        path: path.into(),
        nar_hash: HEX.into(),
        nar_size: 512,
        deriver: None,
        references: refs.iter().map(|r| r.to_string()).collect(),
    };
    vec![info(LIB, &[]), info(NIX, &[LIB, NIX]), info(SYSTEM, &[NIX])]
}

fn env(mode: RegistrationMode) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("mnt-root");
    let initrd = tmp.path().join("initrd");
    for info in infos() {
        fs::create_dir_all(under(&target, &info.path)).unwrap();
    }
    let db = under(&initrd, "/nix-db");
    fs::create_dir_all(&db).unwrap();
    fs::write(db.join("db.sqlite"), "sqlite").unwrap();
    fs::write(db.join("schema"), "10").unwrap();
    let mut config: Config = serde_json::from_str(r#"{"version":1,"fileSystems":[]}"#).unwrap();
    config.target_root = target.display().to_string();
    config.registration.mode = mode;
    config.registration.nix_store = Some(NIX_STORE.into());
    let e = Env {
        _tmp: tmp,
        target,
        initrd,
        config,
    };
    e.write_registration(&parse::write(&infos()));
    e
}

/// What every mode does after the database: marker and profile.
fn marker_and_profile(t: &str) -> Vec<String> {
    let auto = parse::nix_base32_encode(&profile::sha1(b"/nix/var/nix/profiles/system-1-link"));
    vec![
        format!("mkdir -p {t}/etc"),
        format!("write {t}/etc/NIXOS (0 bytes)"),
        format!("mkdir -p {t}/nix/var/nix/profiles"),
        format!("symlink {SYSTEM} {t}/nix/var/nix/profiles/system-1-link"),
        format!("mkdir -p {t}/nix/var/nix/gcroots/auto"),
        format!("symlink /nix/var/nix/profiles/system-1-link {t}/nix/var/nix/gcroots/auto/{auto}"),
        format!("symlink system-1-link {t}/nix/var/nix/profiles/system"),
    ]
}

#[test]
fn load_db_sequence() {
    let e = env(RegistrationMode::LoadDb);
    let fake = Fake::new();
    let report = e.run(&fake).unwrap();
    let t = e.t();
    let mut want = vec![
        format!("mkdir -p {t}/proc"),
        format!("mkdir -p {t}/dev"),
        format!("mount proc {t}/proc proc"),
        format!("bind {}/dev {t}/dev", e.i()),
        format!(
            "spawn-chrooted {t} {NIX_STORE} --load-db <stdin {t}/nix/store/nix-path-registration"
        ),
        format!("umount {t}/dev"),
        format!("umount {t}/proc"),
    ];
    want.extend(marker_and_profile(&t));
    assert_eq!(fake.calls(), want);
    assert_eq!(report.paths, Some(3));
    assert_eq!(
        report.to_string(),
        format!(
            "load-db: 3 paths registered, /etc/NIXOS, system profile system-1-link -> {SYSTEM}"
        )
    );
}

#[test]
fn load_db_command_has_a_clean_environment() {
    let cmd = load_db_command(
        Path::new("/mnt-root"),
        Path::new(NIX_STORE),
        Path::new("/r"),
    );
    let keys: Vec<&str> = cmd.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["PATH", "HOME", "USER", "NIX_REMOTE"]);
    assert_eq!(cmd.args, ["--load-db"]);
}

#[test]
fn prebuilt_sequence_runs_nothing() {
    let e = env(RegistrationMode::Prebuilt);
    // The registration file is not read in this mode.
    fs::remove_file(e.registration_file()).unwrap();
    let fake = Fake::new();
    let report = e.run(&fake).unwrap();
    let t = e.t();
    let mut want = vec![
        format!("mkdir -p {t}/nix/var/nix"),
        format!("copy-tree {}/nix-db -> {t}/nix/var/nix/db", e.i()),
    ];
    want.extend(marker_and_profile(&t));
    assert_eq!(fake.calls(), want);
    assert!(fake.calls_starting_with("spawn").is_empty());
    assert!(report
        .to_string()
        .starts_with("prebuilt database installed"));
}

#[test]
fn none_sequence() {
    let e = env(RegistrationMode::None);
    let fake = Fake::new();
    e.run(&fake).unwrap();
    assert_eq!(fake.calls(), marker_and_profile(&e.t()));
}

#[test]
fn none_without_marker_or_profile_does_nothing() {
    let mut e = env(RegistrationMode::None);
    e.config.registration.nixos_marker = false;
    e.config.registration.system_profile = false;
    let fake = Fake::new();
    let report = e.run(&fake).unwrap();
    assert!(fake.calls().is_empty());
    assert_eq!(report.to_string(), "no database, no system profile");
}

fn err(e: &Env, fake: &Fake) -> String {
    format!("{:#}", e.run(fake).unwrap_err())
}

#[test]
fn non_zero_exit_names_status_and_stderr_tail_and_still_unmounts() {
    let e = env(RegistrationMode::LoadDb);
    let fake = Fake::new();
    let stderr: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    fake.respond_on(
        "spawn-chrooted",
        &format!("1\n{stderr}error: database is locked\n"),
    );
    let msg = err(&e, &fake);
    assert!(msg.contains(&format!("`{NIX_STORE} --load-db < ")), "{msg}");
    assert!(msg.contains("failed with exit status 1"), "{msg}");
    assert!(
        msg.ends_with("line 20 | error: database is locked"),
        "{msg}"
    );
    assert!(!msg.contains("line 11 |"), "only the tail: {msg}");
    assert!(msg.contains("line 12 |"), "{msg}");
    let t = e.t();
    assert_eq!(
        fake.calls_starting_with("umount"),
        [format!("umount {t}/dev"), format!("umount {t}/proc")]
    );
    assert!(
        fake.calls_starting_with("write").is_empty(),
        "no marker after a failure"
    );
}

#[test]
fn spawn_enoent_is_reported_with_program_and_root() {
    let e = env(RegistrationMode::LoadDb);
    let fake = Fake::new();
    fake.fail_on("spawn-chrooted", Errno::ENOENT);
    let msg = err(&e, &fake);
    assert_eq!(
        msg,
        format!(
            "cannot start {NIX_STORE} in {}: ENOENT: No such file or directory",
            e.t()
        )
    );
    assert_eq!(fake.calls_starting_with("umount").len(), 2);
}

#[test]
fn mount_failure_stops_before_spawning() {
    let e = env(RegistrationMode::LoadDb);
    let fake = Fake::new();
    fake.fail_on("bind", Errno::EACCES);
    let msg = err(&e, &fake);
    assert!(
        msg.starts_with(&format!("bind /dev on {}/dev: EACCES", e.t())),
        "{msg}"
    );
    assert!(fake.calls_starting_with("spawn").is_empty());
    // The proc mount made before is undone.
    assert_eq!(
        fake.calls_starting_with("umount"),
        [format!("umount {}/proc", e.t())]
    );
}

#[test]
fn missing_registration_file() {
    let e = env(RegistrationMode::LoadDb);
    fs::remove_file(e.registration_file()).unwrap();
    let fake = Fake::new();
    // The cause once, not repeated by `{:#}`.
    assert_eq!(
        err(&e, &fake),
        format!(
            "cannot read registration file {}: No such file or directory (os error 2)",
            e.registration_file().display()
        )
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn registration_file_that_is_not_text() {
    let e = env(RegistrationMode::LoadDb);
    fs::write(e.registration_file(), b"/nix/store/\xff\n").unwrap();
    let fake = Fake::new();
    assert_eq!(
        err(&e, &fake),
        format!(
            "cannot read registration file {}: not UTF-8 text: invalid utf-8 sequence of 1 bytes from index 11",
            e.registration_file().display()
        )
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn malformed_line_is_named() {
    let e = env(RegistrationMode::LoadDb);
    e.write_registration(&parse::write(&infos()).replacen("\n512\n", "\nfive hundred\n", 1));
    let fake = Fake::new();
    let msg = err(&e, &fake);
    assert!(
        msg.contains("nix-path-registration: line 3: expected the NAR size of"),
        "{msg}"
    );
    assert_eq!(msg.matches("line 3").count(), 1, "{msg}");
    assert!(fake.calls().is_empty());
}

#[test]
fn path_missing_from_image_is_named() {
    let e = env(RegistrationMode::LoadDb);
    fs::remove_dir(under(&e.target, LIB)).unwrap();
    let fake = Fake::new();
    let msg = err(&e, &fake);
    assert!(
        msg.contains("names 1 path(s) missing from the image"),
        "{msg}"
    );
    assert!(msg.ends_with(LIB), "{msg}");
    assert!(fake.calls().is_empty());
}

#[test]
fn many_missing_paths_are_summarised() {
    let e = env(RegistrationMode::LoadDb);
    let mut all = infos();
    for i in 0..10 {
        let mut extra = all[0].clone();
        extra.path = format!("/nix/store/1b8m03r63zqhnjf7l5wnldhh7c134ap5-gone-{i}");
        all.push(extra);
    }
    e.write_registration(&parse::write(&all));
    let msg = err(&e, &Fake::new());
    assert!(msg.contains("names 10 path(s) missing"), "{msg}");
    assert!(msg.ends_with("and 5 more"), "{msg}");
}

#[test]
fn dangling_reference_is_named() {
    let e = env(RegistrationMode::LoadDb);
    let mut all = infos();
    all[2]
        .references
        .push("/nix/store/1b8m03r63zqhnjf7l5wnldhh7c134ap5-elsewhere".into());
    e.write_registration(&parse::write(&all));
    let msg = err(&e, &Fake::new());
    assert!(
        msg.contains(&format!("{SYSTEM} references /nix/store/1b8m03r63zqhnjf7l5wnldhh7c134ap5-elsewhere, which is not registered")),
        "{msg}"
    );
}

#[test]
fn toplevel_must_be_registered_in_load_db_mode() {
    let e = env(RegistrationMode::LoadDb);
    e.write_registration(&parse::write(&infos()[..2]));
    let fake = Fake::new();
    let msg = err(&e, &fake);
    assert!(
        msg.contains(&format!("does not register the system toplevel {SYSTEM}")),
        "{msg}"
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn nix_store_is_required_for_load_db() {
    let mut e = env(RegistrationMode::LoadDb);
    e.config.registration.nix_store = None;
    assert_eq!(
        err(&e, &Fake::new()),
        "registration.nixStore is required for mode load-db"
    );
}

#[test]
fn missing_prebuilt_db() {
    let mut e = env(RegistrationMode::Prebuilt);
    e.config.registration.prebuilt_db = "/no-db".into();
    let fake = Fake::new();
    let msg = err(&e, &fake);
    assert!(
        msg.starts_with(&format!(
            "prebuilt Nix database {}/no-db has no db.sqlite",
            e.i()
        )),
        "{msg}"
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn copy_failure_names_the_step() {
    let e = env(RegistrationMode::Prebuilt);
    let fake = Fake::new();
    fake.fail_on("copy-tree", Errno::ENOSPC);
    let msg = err(&e, &fake);
    assert!(
        msg.contains(&format!(
            "copy prebuilt database to {}/nix/var/nix/db: ENOSPC",
            e.t()
        )),
        "{msg}"
    );
}

#[test]
fn toplevel_from_config_or_init() {
    let mut e = env(RegistrationMode::None);
    assert_eq!(
        toplevel(&e.config, &format!("{SYSTEM}/init")),
        Ok(SYSTEM.to_string())
    );
    assert!(toplevel(&e.config, "/bin/sh").is_err());
    assert!(toplevel(&e.config, &format!("{SYSTEM}/sw/bin/sh")).is_err());
    assert!(toplevel(&e.config, "init").is_err());
    e.config.registration.toplevel = Some(NIX.into());
    assert_eq!(toplevel(&e.config, "/bin/sh"), Ok(NIX.to_string()));
    e.config.registration.toplevel = Some("/etc/system".into());
    assert!(toplevel(&e.config, "/bin/sh").is_err());
}

#[test]
fn init_outside_the_store_skips_the_profile_with_a_warning() {
    let e = env(RegistrationMode::None);
    let fake = Fake::new();
    let report = register(&fake, &e.config, "/bin/sh", &e.initrd).unwrap();
    assert!(fake.calls_starting_with("symlink").is_empty());
    assert_eq!(report.profile, None);
    assert!(
        report
            .to_string()
            .contains("warning: no system profile: cannot derive"),
        "{report}"
    );
}

#[test]
fn bad_configured_toplevel_is_an_error() {
    let mut e = env(RegistrationMode::None);
    e.config.registration.toplevel = Some("/etc/system".into());
    assert!(
        err(&e, &Fake::new()).contains("registration.toplevel \"/etc/system\" is not a store path")
    );
}

#[test]
fn existing_generation_is_reused_or_superseded() {
    let e = env(RegistrationMode::None);
    let profiles = under(&e.target, "/nix/var/nix/profiles");
    fs::create_dir_all(&profiles).unwrap();
    std::os::unix::fs::symlink(NIX, profiles.join("system-1-link")).unwrap();
    std::os::unix::fs::symlink("system-1-link", profiles.join("system")).unwrap();
    let fake = Fake::new();
    e.run(&fake).unwrap();
    let t = e.t();
    assert_eq!(
        fake.calls_starting_with("symlink system"),
        [format!(
            "symlink system-2-link {t}/nix/var/nix/profiles/.system-2-link.tmp"
        )]
    );
    assert_eq!(
        fake.calls_starting_with("rename"),
        [format!(
            "rename {t}/nix/var/nix/profiles/.system-2-link.tmp {t}/nix/var/nix/profiles/system"
        )]
    );
    assert!(fake.calls().contains(&format!(
        "symlink {SYSTEM} {t}/nix/var/nix/profiles/system-2-link"
    )));

    // Pointing at the same toplevel: nix-env reuses the generation.
    fs::remove_file(profiles.join("system-1-link")).unwrap();
    std::os::unix::fs::symlink(SYSTEM, profiles.join("system-1-link")).unwrap();
    let fake = Fake::new();
    let report = e.run(&fake).unwrap();
    assert_eq!(
        report.profile,
        Some(("system-1-link".into(), SYSTEM.into()))
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| c.starts_with(&format!("symlink {SYSTEM}"))));
}

#[test]
fn toplevel_missing_from_image_is_a_warning_in_prebuilt_mode() {
    let e = env(RegistrationMode::Prebuilt);
    fs::remove_dir(under(&e.target, SYSTEM)).unwrap();
    let report = e.run(&Fake::new()).unwrap();
    assert_eq!(
        report.warnings,
        [format!("the system toplevel {SYSTEM} is not in the image")]
    );
}

#[test]
fn captured_output_keeps_the_end_within_the_limit() {
    let mut input = vec![b'a'; 3 * MAX_CAPTURED_BYTES];
    input.extend_from_slice(b"last line\n");
    let kept = drain_tail(&input[..]);
    assert_eq!(kept.len(), MAX_CAPTURED_BYTES);
    assert!(kept.starts_with(b"aaa") && kept.ends_with(b"aaalast line\n"));
    assert_eq!(drain_tail(&b"short"[..]), b"short");
}

#[test]
fn a_child_is_waited_for_with_its_output() {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "echo out; echo err >&2; exit 4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, out, err) = wait_with_timeout(&mut child, Duration::from_secs(30)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(4));
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
}
