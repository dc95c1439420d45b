//! The Nix glue in `nix/`, evaluated by the real Nix (Debian's nix-bin): `nix/config.nix` on
//! the `fileSystems` NixOS makes of nixpkgs' netboot.nix (written out as merged attribute
//! sets, with every field NixOS adds), its JSON parsed by the init's own `Config::parse`;
//! `nix/module.nix` evaluated against a small stand-in for nixpkgs' `lib` and `pkgs` (nixpkgs
//! itself is not on this machine), and the script it writes for the prebuilt database run
//! with the real `nix-store`; every file in `nix/` parsed by `nix-instantiate --parse`.

use netboot_init::config::{Config, Failure, FileSystem, Overlay, RegistrationMode};
use netboot_init::registration::host::canonical;
use netboot_init::registration::parse;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NIX_INSTANTIATE: &str = "nix-instantiate";
const NIX_STORE: &str = "nix-store";

fn nix_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nix")
}

/// A Nix string literal.
fn nix_str(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "\\${");
    format!("\"{escaped}\"")
}

/// A Nix path expression for an absolute path.
fn nix_path(p: &Path) -> String {
    format!("(/. + {})", nix_str(&p.display().to_string()))
}

/// Runs Nix with its state, logs, config and store in a temp dir: no daemon, nothing of the
/// machine's own Nix state touched, works as root.
struct Nix {
    tmp: tempfile::TempDir,
}

impl Nix {
    fn new() -> Nix {
        let tmp = tempfile::Builder::new()
            .prefix("nix-glue-")
            .tempdir()
            .unwrap();
        for d in ["state", "log", "conf", "home", "store"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        Nix { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("NIX_STATE_DIR", self.path("state"))
            .env("NIX_LOG_DIR", self.path("log"))
            .env("NIX_CONF_DIR", self.path("conf"))
            .env("HOME", self.path("home"))
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_PATH");
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {program}: {e}: install Debian's nix-bin (cargo xtask setup)")
            })
    }

    /// `nix-instantiate --eval --strict --json` of `expr`: the value, or Nix's error text.
    fn eval(&self, expr: &str) -> Result<Value, String> {
        let file = self.path("expr.nix");
        std::fs::write(&file, expr).unwrap();
        let store = format!("local?root={}", self.path("store").display());
        let out = self.run(
            NIX_INSTANTIATE,
            &[
                "--eval",
                "--strict",
                "--json",
                "--store",
                &store,
                &file.display().to_string(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(stderr);
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("nix-instantiate printed no JSON ({e}): {stderr}"))
    }

    fn eval_ok(&self, expr: &str) -> Value {
        self.eval(expr)
            .unwrap_or_else(|e| panic!("evaluation failed:\n{e}\nexpression:\n{expr}"))
    }
}

impl Drop for Nix {
    /// The store keeps its directories read-only; without write permission a non-root user
    /// could not remove the temp dir.
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![self.tmp.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

/// Fields every merged NixOS `fileSystems` entry has (nixos/modules/tasks/filesystems.nix,
/// filesystems/overlayfs.nix, luksroot.nix, stratis), at their defaults.
const MERGED_DEFAULTS: &str = r#"{
    autoFormat = false; autoResize = false; depends = [ ]; formatOptions = null; enable = true;
    label = null; noCheck = false; neededForBoot = false; device = null;
    encrypted = { autoFormatDevice = false; blkDev = null; enable = false; keyFile = null; label = null; };
    stratis = { poolUuid = null; };
    overlay = { lowerdir = null; upperdir = null; workdir = null; useStage1BaseDirectories = true; };
  }"#;

/// config.fileSystems of a system importing today's netboot.nix, as NixOS merges it: the
/// overlay module turns `overlay` into options, filesystems.nix adds `x-initrd.mount` and
/// the special-fs device; plus a file system the boot does not need, which NixOS would mount
/// in stage 2 and which netboot-init could not (a label), and a disabled one.
fn netboot_file_systems() -> String {
    format!(
        r#"let d = {MERGED_DEFAULTS}; in {{
  "/" = d // {{ mountPoint = "/"; device = "tmpfs"; fsType = "tmpfs";
    options = [ "mode=0755" "x-initrd.mount" ]; }};
  "/nix/.ro-store" = d // {{ mountPoint = "/nix/.ro-store"; device = "../nix-store.squashfs";
    fsType = "squashfs"; options = [ "loop" "threads=multi" "x-initrd.mount" ]; neededForBoot = true; }};
  "/nix/.rw-store" = d // {{ mountPoint = "/nix/.rw-store"; device = "tmpfs"; fsType = "tmpfs";
    options = [ "mode=0755" "x-initrd.mount" ]; neededForBoot = true; }};
  "/nix/store" = d // {{ mountPoint = "/nix/store"; device = "overlay"; fsType = "overlay";
    options = [ "lowerdir=/nix/.ro-store" "upperdir=/nix/.rw-store/store" "workdir=/nix/.rw-store/work"
                "x-systemd.requires-mounts-for=/nix/.ro-store" "x-initrd.mount" ];
    neededForBoot = true;
    overlay = {{ lowerdir = [ "/nix/.ro-store" ]; upperdir = "/nix/.rw-store/store";
                workdir = "/nix/.rw-store/work"; useStage1BaseDirectories = true; }}; }};
  "/srv/data" = d // {{ mountPoint = "/srv/data"; label = "data"; fsType = "ext4";
    options = [ "defaults" ]; autoResize = true; }};
  "/nix/.old-store" = d // {{ mountPoint = "/nix/.old-store"; enable = false; neededForBoot = true;
    label = "old"; fsType = "auto"; options = [ "defaults" ]; }};
}}"#
    )
}

/// The same from an older nixpkgs (22.11-23.05): no `overlay` option, the overlay is written
/// as options with `depends`, the squashfs without `threads=multi`.
const OLD_NETBOOT_FILE_SYSTEMS: &str = r#"let d = {
    autoFormat = false; autoResize = false; depends = [ ]; formatOptions = null;
    label = null; noCheck = false; neededForBoot = false; device = null;
    encrypted = { autoFormatDevice = false; blkDev = null; enable = false; keyFile = null; label = null; };
  }; in {
  "/" = d // { mountPoint = "/"; device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
  "/nix/.ro-store" = d // { mountPoint = "/nix/.ro-store"; device = "../nix-store.squashfs";
    fsType = "squashfs"; options = [ "loop" ]; neededForBoot = true; };
  "/nix/.rw-store" = d // { mountPoint = "/nix/.rw-store"; device = "tmpfs"; fsType = "tmpfs";
    options = [ "mode=0755" ]; neededForBoot = true; };
  "/nix/store" = d // { mountPoint = "/nix/store"; device = "overlay"; fsType = "overlay";
    options = [ "lowerdir=/nix/.ro-store" "upperdir=/nix/.rw-store/store" "workdir=/nix/.rw-store/work" ];
    depends = [ "/nix/.ro-store" "/nix/.rw-store/store" "/nix/.rw-store/work" ]; };
}"#;

/// `builtins.toJSON (import nix/config.nix { ... })`, exactly what the module writes.
fn config_json_expr(file_systems: &str, settings: &str) -> String {
    format!(
        "builtins.toJSON (import {} {{ fileSystems = {file_systems}; settings = {settings}; }})",
        nix_path(&nix_dir().join("config.nix"))
    )
}

/// The JSON text nix/config.nix produces, and the init's parse of it.
fn config_from_nix(nix: &Nix, file_systems: &str, settings: &str) -> (Value, Config) {
    let text = nix.eval_ok(&config_json_expr(file_systems, settings));
    let text = text.as_str().expect("builtins.toJSON gives a string");
    let config = Config::parse(text)
        .unwrap_or_else(|e| panic!("the init refuses the config nix/config.nix made: {e}\n{text}"));
    (serde_json::from_str(text).unwrap(), config)
}

fn fs(mount_point: &str, device: Option<&str>, fs_type: &str, options: &[&str]) -> FileSystem {
    FileSystem {
        mount_point: mount_point.into(),
        device: device.map(Into::into),
        fs_type: fs_type.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
        overlay: None,
        needed_for_boot: None,
    }
}

fn netboot_overlay() -> FileSystem {
    FileSystem {
        overlay: Some(Overlay {
            lowerdir: vec!["/nix/.ro-store".into()],
            upperdir: Some("/nix/.rw-store/store".into()),
            workdir: Some("/nix/.rw-store/work".into()),
        }),
        ..fs("/nix/store", Some("overlay"), "overlay", &[])
    }
}

/// Every file system entry holds only fields the init's config has.
fn assert_only_init_fields(json: &Value) {
    let allowed = ["mountPoint", "device", "fsType", "options", "overlay"];
    for entry in json["fileSystems"].as_array().unwrap() {
        for key in entry.as_object().unwrap().keys() {
            assert!(
                allowed.contains(&key.as_str()),
                "unexpected field {key:?} in {entry}"
            );
        }
        if let Some(o) = entry.get("overlay") {
            for key in o.as_object().unwrap().keys() {
                assert!(
                    ["lowerdir", "upperdir", "workdir"].contains(&key.as_str()),
                    "unexpected overlay field {key:?} in {entry}"
                );
            }
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let nix = Nix::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(nix_dir())
        .expect("nix/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["config.nix", "module.nix", "package.nix"] {
        assert!(
            names.iter().any(|n| n == want),
            "nix/{want} missing: {names:?}"
        );
    }
    for f in &files {
        let out = nix.run(NIX_INSTANTIATE, &["--parse", &f.display().to_string()]);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // --parse reports syntax errors: one is caught.
    let bad = nix.path("bad.nix");
    std::fs::write(&bad, "{ a = ; }").unwrap();
    let out = nix.run(NIX_INSTANTIATE, &["--parse", &bad.display().to_string()]);
    assert!(!out.status.success());
}

#[test]
fn netboot_file_systems_become_the_init_config() {
    let nix = Nix::new();
    let settings = r#"{
      init = "/nix/store/00000000000000000000000000000000-nixos-system-netboot/init";
      kernelModules = [ "virtio_net" ];
      moduleParams = { loop = "max_loop=8"; };
      registration = { mode = "load-db"; nixStore = "/nix/store/11111111111111111111111111111111-nix-2.18.2/bin/nix-store"; toplevel = null; };
      failure = { emergencyAccess = true; rebootTimeoutSecs = 30; };
    }"#;
    let (json, c) = config_from_nix(&nix, &netboot_file_systems(), settings);
    assert_only_init_fields(&json);
    assert_eq!(
        c.file_systems,
        vec![
            fs("/", Some("tmpfs"), "tmpfs", &["mode=0755"]),
            fs(
                "/nix/.ro-store",
                Some("../nix-store.squashfs"),
                "squashfs",
                &["loop", "threads=multi"]
            ),
            fs("/nix/.rw-store", Some("tmpfs"), "tmpfs", &["mode=0755"]),
            netboot_overlay(),
        ]
    );
    assert_eq!(
        c.init.as_deref(),
        Some("/nix/store/00000000000000000000000000000000-nixos-system-netboot/init")
    );
    assert_eq!(c.kernel_modules, ["virtio_net"]);
    assert_eq!(
        c.module_params.get("loop").map(String::as_str),
        Some("max_loop=8")
    );
    assert_eq!(c.registration.mode, RegistrationMode::LoadDb);
    assert_eq!(
        c.registration.nix_store.as_deref(),
        Some("/nix/store/11111111111111111111111111111111-nix-2.18.2/bin/nix-store")
    );
    // A null setting is left out, so the init's default applies.
    assert!(json["registration"].get("toplevel").is_none());
    assert_eq!(c.registration.toplevel, None);
    assert_eq!(
        c.failure,
        Failure {
            emergency_access: true,
            reboot_timeout_secs: 30,
            ..Failure::default()
        }
    );
    // The rest at the init's defaults.
    assert_eq!(c.target_root, "/mnt-root");
    assert_eq!(c.modules_dir, "/lib/modules");
}

#[test]
fn same_file_systems_as_the_project_example() {
    // initrd-layout/examples/netboot.json reproduces netboot.nix by hand; the glue agrees
    // with it on every mount but the explicit "tmpfs" device NixOS gives /nix/.rw-store.
    let nix = Nix::new();
    let settings = r#"{ registration = { mode = "none"; }; }"#;
    let (_, c) = config_from_nix(&nix, &netboot_file_systems(), settings);
    let example = Config::parse(include_str!("../initrd-layout/examples/netboot.json")).unwrap();
    let mut want = example.file_systems.clone();
    want[2].device = Some("tmpfs".into());
    assert_eq!(c.file_systems, want);
}

#[test]
fn older_netboot_nix_overlay_options_become_overlay() {
    let nix = Nix::new();
    let settings = r#"{ registration = { mode = "none"; }; }"#;
    let (json, c) = config_from_nix(&nix, OLD_NETBOOT_FILE_SYSTEMS, settings);
    assert_only_init_fields(&json);
    assert_eq!(
        c.file_systems,
        vec![
            fs("/", Some("tmpfs"), "tmpfs", &["mode=0755"]),
            fs(
                "/nix/.ro-store",
                Some("../nix-store.squashfs"),
                "squashfs",
                &["loop"]
            ),
            fs("/nix/.rw-store", Some("tmpfs"), "tmpfs", &["mode=0755"]),
            netboot_overlay(),
        ]
    );
    // The overlay's options held only its directories: none are left.
    assert!(json["fileSystems"][3].get("options").is_none());
    assert_eq!(c.registration.mode, RegistrationMode::None);
}

#[test]
fn dependencies_order_the_mounts() {
    // Name order would mount the overlay /a first; its layers live on /y and /z, and /var
    // `depends` on /persist: those come first, the rest keeps name order. Mount points
    // NixOS always mounts in stage 1 (/var) count as needed for boot without neededForBoot.
    let nix = Nix::new();
    let file_systems = format!(
        r#"let d = {MERGED_DEFAULTS}; in {{
  "/" = d // {{ mountPoint = "/"; device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; }};
  "/a" = d // {{ mountPoint = "/a"; device = "overlay"; fsType = "overlay"; neededForBoot = true;
    options = [ "x-initrd.mount" ];
    overlay = {{ lowerdir = [ "/z/one" "/z/two" ]; upperdir = "/y/upper"; workdir = "/y/work"; useStage1BaseDirectories = true; }}; }};
  "/var" = d // {{ mountPoint = "/var"; device = "/persist/var"; fsType = "none"; options = [ "bind" ]; }};
  "/persist" = d // {{ mountPoint = "/persist"; device = "tmpfs"; fsType = "tmpfs"; neededForBoot = true; options = [ "size=1g" ]; }};
  "/y" = d // {{ mountPoint = "/y"; device = "tmpfs"; fsType = "tmpfs"; neededForBoot = true; options = [ "mode=0755" ]; }};
  "/z" = d // {{ mountPoint = "/z"; device = "tmpfs"; fsType = "tmpfs"; neededForBoot = true; options = [ "mode=0755" ]; }};
  "/home" = d // {{ mountPoint = "/home"; device = "/dev/vda2"; fsType = "ext4"; options = [ "defaults" ]; }};
}}"#
    );
    let (_, c) = config_from_nix(&nix, &file_systems, r#"{ registration.mode = "none"; }"#);
    let order: Vec<&str> = c
        .file_systems
        .iter()
        .map(|f| f.mount_point.as_str())
        .collect();
    assert_eq!(order, ["/", "/persist", "/var", "/y", "/z", "/a"]);
}

#[test]
fn what_the_init_cannot_do_is_an_evaluation_error() {
    let nix = Nix::new();
    let root = r#""/" = { mountPoint = "/"; device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };"#;
    let none = r#"{ registration.mode = "none"; }"#;
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(
                r#"{{ {root} "/data" = {{ label = "data"; fsType = "ext4"; neededForBoot = true; }}; }}"#
            ),
            none,
            r#"fileSystems."/data": label"#,
        ),
        (
            format!(r#"{{ {root} "/data" = {{ device = "/dev/vda1"; neededForBoot = true; }}; }}"#),
            none,
            r#"fileSystems."/data": fsType "auto""#,
        ),
        (
            format!(
                r#"{{ {root} "/data" = {{ device = "/dev/vda1"; fsType = "ext4"; neededForBoot = true;
                   encrypted = {{ enable = true; blkDev = "/dev/vda1"; label = "x"; }}; }}; }}"#
            ),
            none,
            r#"fileSystems."/data": encrypted"#,
        ),
        (
            format!(
                r#"{{ {root} "/data" = {{ device = "/dev/vda1"; fsType = "ext4"; neededForBoot = true; autoFormat = true; }}; }}"#
            ),
            none,
            r#"fileSystems."/data": autoFormat"#,
        ),
        (
            format!(
                r#"{{ {root} "/o" = {{ device = "overlay"; fsType = "overlay"; neededForBoot = true; options = [ "x-initrd.mount" ]; }}; }}"#
            ),
            none,
            r#"fileSystems."/o": an overlay needs overlay.lowerdir"#,
        ),
        (
            format!(
                r#"{{ {root} "/o" = {{ device = "overlay"; fsType = "overlay"; neededForBoot = true;
                   overlay = {{ lowerdir = [ "/run/lower" ]; upperdir = "/run/upper"; workdir = "/run/work";
                               useStage1BaseDirectories = false; }}; }}; }}"#
            ),
            none,
            r#"fileSystems."/o": overlay.useStage1BaseDirectories = false"#,
        ),
        (
            r#"{ "/nix/store" = { device = "tmpfs"; fsType = "tmpfs"; }; }"#.to_string(),
            none,
            r#"fileSystems has no entry for "/""#,
        ),
        (
            format!(
                r#"{{ {root} "/a" = {{ device = "tmpfs"; fsType = "tmpfs"; neededForBoot = true; depends = [ "/b/x" ]; }};
                   "/b" = {{ device = "tmpfs"; fsType = "tmpfs"; neededForBoot = true; depends = [ "/a/x" ]; }}; }}"#
            ),
            none,
            "fileSystems /a /b depend on each other in a cycle",
        ),
        (
            format!("{{ {root} }}"),
            r#"{ registration.mode = "none"; rebootTimeout = 5; }"#,
            "unknown settings rebootTimeout",
        ),
    ];
    for (file_systems, settings, want) in cases {
        match nix.eval(&config_json_expr(&file_systems, settings)) {
            Ok(v) => panic!("accepted ({want}): {v}"),
            Err(e) => assert!(
                e.contains(&format!("netboot-init: {want}")),
                "want {want:?} in:\n{e}"
            ),
        }
    }
    // The same file systems without neededForBoot are not the init's business: no error.
    let fine = format!(
        r#"{{ {root} "/data" = {{ label = "data"; fsType = "ext4"; encrypted.enable = true; }}; "/x" = {{ device = "/dev/vdb"; }}; }}"#
    );
    let (_, c) = config_from_nix(&nix, &fine, none);
    assert_eq!(c.file_systems.len(), 1);
}

/// What [`module_eval`] reports of the evaluated module.
const MODULE_REPORT: &str = r#"{
  declared = builtins.mapAttrs (n: o: { inherit (o) type; default = o.default; }) decls;
  enabled = c.condition;
  assertions = map (a: a.assertion) c.content.assertions;
  warnings = c.content.warnings;
  forcePriority = built.netbootRamdisk.priority;
  ramdiskName = ramdisk.name;
  script = ramdisk.script;
  layoutArgs = ramdisk.env.passthru.layoutArgs;
  configText = built.netbootInitConfig.text;
  sameConfig = ramdisk.env.passthru.config.outPath == built.netbootInitConfig.outPath;
  prebuiltDb = {
    # No outPath here: Nix would print the attribute set as that string.
    inherit (ramdisk.env.passthru.prebuiltDb) script name;
    inherit (ramdisk.env.passthru.prebuiltDb.env) registration;
    tools = map toString ramdisk.env.passthru.prebuiltDb.env.nativeBuildInputs;
  };
}"#;

/// nix/module.nix called as NixOS would call it, with `lib` and `pkgs` replaced by a
/// stand-in that has just what the module uses (mkIf and mkForce kept as markers, packages
/// as store paths) and the module's own option defaults where `user` sets nothing; `report`
/// is evaluated with `decls`, `c` (the module's config), `built` and `ramdisk` in scope.
fn module_expr(user: &str, with_netboot: bool, extra_config: &str, report: &str) -> String {
    format!(
        r#"let
  user = {user};
  store = name: "/nix/store/00000000000000000000000000000000-${{name}}";
  drv = name: attrs: attrs // {{ outPath = store name; inherit name; }};
  lib = rec {{
    mkOption = o: o;
    mkEnableOption = d: mkOption {{ type = types.bool; default = false; description = "Whether to enable ${{d}}."; }};
    types = {{ bool = "bool"; str = "str"; package = "package"; ints.unsigned = "ints.unsigned";
      enum = vs: {{ enum = vs; }}; listOf = t: {{ listOf = t; }}; attrsOf = t: {{ attrsOf = t; }}; }};
    literalExpression = text: {{ _type = "literalExpression"; inherit text; }};
    getBin = p: p;
    optionals = c: l: if c then l else [ ];
    optional = c: x: if c then [ x ] else [ ];
    escapeShellArg = a: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString a) + "'";
    escapeShellArgs = as: builtins.concatStringsSep " " (map escapeShellArg as);
    mkIf = condition: content: {{ _type = "if"; inherit condition content; }};
    mkForce = content: {{ _type = "override"; priority = 50; inherit content; }};
  }};
  pkgs = {{
    writeText = name: text: drv name {{ inherit text; }};
    runCommand = name: env: script: drv name {{ inherit env script; }};
    closureInfo = {{ rootPaths }}: drv "closure-info" {{ inherit rootPaths; }};
    callPackage = fn: args: drv "netboot-init-0.1.0" {{ }};
    pkgsStatic.busybox = drv "busybox-static-1.36.1" {{ }};
  }};
  options = if {with_netboot} then {{ netboot.storeContents = {{ }}; }} else {{ }};
  module = import {module} {{ inherit config lib pkgs options; }};
  decls = module.options.boot.initrd.netbootInit;
  update = a: b: a // builtins.mapAttrs (n: v:
    if builtins.isAttrs v && !(v ? outPath) && builtins.isAttrs (a.${{n}} or null) then update a.${{n}} v else v) b;
  config = update {{
    boot.initrd.netbootInit = builtins.mapAttrs (n: o: user.${{n}} or o.default) decls;
    boot.initrd.kernelModules = [ "loop" "overlay" "dm_mod" ];
    boot.kernelPackages.kernel.modDirVersion = "6.6.30";
    fileSystems = {file_systems};
    nix.package = drv "nix-2.18.2" {{ }};
    system.build.toplevel = drv "nixos-system-netboot-24.05" {{ }};
    system.build.squashfsStore = drv "squashfs.img" {{ }};
    system.modulesTree = drv "linux-6.6.30-modules" {{ }};
    netboot.storeContents = [ config.system.build.toplevel ];
  }} {extra_config};
  c = module.config;
  built = c.content.system.build;
  ramdisk = built.netbootRamdisk.content;
in {report}"#,
        module = nix_path(&nix_dir().join("module.nix")),
        file_systems = netboot_file_systems(),
    )
}

fn module_eval(nix: &Nix, user: &str, with_netboot: bool, extra_config: &str) -> Value {
    nix.eval_ok(&module_expr(
        user,
        with_netboot,
        extra_config,
        MODULE_REPORT,
    ))
}

fn store(name: &str) -> String {
    format!("/nix/store/00000000000000000000000000000000-{name}")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn module_options_and_defaults() {
    let nix = Nix::new();
    let m = module_eval(&nix, "{ }", true, "{ }");
    let declared = m["declared"].as_object().unwrap();
    for name in [
        "enable",
        "package",
        "registration",
        "emergencyAccess",
        "rebootTimeout",
        "extraModules",
        "moduleParams",
    ] {
        assert!(
            declared.contains_key(name),
            "option {name} missing: {declared:?}"
        );
    }
    assert_eq!(m["declared"]["enable"]["default"], json!(false));
    assert_eq!(
        m["declared"]["registration"]["type"],
        json!({"enum": ["load-db", "prebuilt", "none"]})
    );
    assert_eq!(m["declared"]["registration"]["default"], json!("load-db"));
    assert_eq!(m["declared"]["emergencyAccess"]["default"], json!(false));
    assert_eq!(m["declared"]["rebootTimeout"]["default"], json!(10));
    assert_eq!(
        m["declared"]["extraModules"]["default"],
        json!(["loop", "overlay", "dm_mod"]),
        "defaults to boot.initrd.kernelModules"
    );
    assert_eq!(m["declared"]["moduleParams"]["default"], json!({}));
    assert_eq!(
        m["declared"]["package"]["default"],
        json!(store("netboot-init-0.1.0"))
    );
    // Disabled by default: nothing changes.
    assert_eq!(m["enabled"], json!(false));
}

#[test]
fn module_builds_the_ramdisk_with_initrd_layout() {
    let nix = Nix::new();
    let m = module_eval(&nix, "{ enable = true; }", true, "{ }");
    assert_eq!(m["enabled"], json!(true));
    assert_eq!(m["assertions"], json!([true, true]));
    assert_eq!(
        m["forcePriority"],
        json!(50),
        "overrides netboot.nix's ramdisk"
    );
    assert_eq!(m["sameConfig"], json!(true));
    let args = strings(&m["layoutArgs"]);
    assert_eq!(
        args,
        [
            "--init".to_string(),
            format!("{}/bin/netboot-init", store("netboot-init-0.1.0")),
            "--config".into(),
            store("netboot-init.json"),
            "--modules".into(),
            format!("{}/lib/modules/6.6.30", store("linux-6.6.30-modules")),
            "--store-image".into(),
            store("squashfs.img"),
            "--compress".into(),
            "zstd:19".into(),
        ]
    );
    let script = m["script"].as_str().unwrap();
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    assert!(
        script.contains(&format!(
            "initrd-layout build {} -o $out/initrd",
            quoted.join(" ")
        )),
        "{script}"
    );

    let text = m["configText"].as_str().unwrap();
    let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        c.init.as_deref(),
        Some(format!("{}/init", store("nixos-system-netboot-24.05")).as_str())
    );
    assert_eq!(c.registration.mode, RegistrationMode::LoadDb);
    assert_eq!(
        c.registration.nix_store,
        Some(format!("{}/bin/nix-store", store("nix-2.18.2")))
    );
    // The init derives the profile's toplevel from the init= it boots.
    assert_eq!(c.registration.toplevel, None);
    assert_eq!(c.kernel_modules, ["loop", "overlay", "dm_mod"]);
    assert_eq!(c.failure, Failure::default());
    assert_eq!(c.file_systems.len(), 4);
    assert_eq!(c.file_systems[3], netboot_overlay());
}

#[test]
fn module_settings_reach_the_config_and_the_build() {
    let nix = Nix::new();
    let user = r#"{ enable = true; registration = "prebuilt"; emergencyAccess = true;
      rebootTimeout = 0; extraModules = [ "virtio_net" ]; moduleParams = { loop = "max_loop=8"; };
      compression = "xz:9"; }"#;
    let m = module_eval(&nix, user, true, "{ }");
    let args = strings(&m["layoutArgs"]);
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("{flag} missing: {args:?}"))
    };
    assert_eq!(after("--nix-db"), store("netboot-init-nix-db"));
    assert_eq!(
        after("--shell"),
        format!("{}/bin/busybox", store("busybox-static-1.36.1"))
    );
    assert_eq!(after("--compress"), "xz:9");
    let c = Config::parse(m["configText"].as_str().unwrap()).unwrap();
    assert_eq!(c.registration.mode, RegistrationMode::Prebuilt);
    assert_eq!(c.registration.nix_store, None, "prebuilt runs no nix-store");
    assert!(c.failure.emergency_access);
    assert_eq!(c.failure.reboot_timeout_secs, 0);
    assert_eq!(c.kernel_modules, ["virtio_net"]);
    assert_eq!(
        c.module_params.get("loop").map(String::as_str),
        Some("max_loop=8")
    );
    // The database is made from the registration make-squashfs.nix puts in the image.
    assert_eq!(
        m["prebuiltDb"]["registration"],
        json!(format!("{}/registration", store("closure-info")))
    );
    assert_eq!(m["prebuiltDb"]["tools"], json!([store("nix-2.18.2")]));

    // Without prebuilt or emergency access, neither the database nor busybox go in.
    let m = module_eval(
        &nix,
        r#"{ enable = true; registration = "none"; }"#,
        true,
        "{ }",
    );
    let args = strings(&m["layoutArgs"]);
    assert!(!args.contains(&"--nix-db".to_string()), "{args:?}");
    assert!(!args.contains(&"--shell".to_string()), "{args:?}");
    let c = Config::parse(m["configText"].as_str().unwrap()).unwrap();
    assert_eq!(c.registration.mode, RegistrationMode::None);
}

#[test]
fn module_asserts_netboot_nix_is_imported() {
    let nix = Nix::new();
    let user = "{ enable = true; }";
    let assertions = "map (a: a.assertion) c.content.assertions";
    let got = nix.eval_ok(&module_expr(user, false, "{ }", assertions));
    assert_eq!(got, json!([false, true]));
    // Building the ramdisk alone checks no assertions: it says what is missing itself.
    let e = nix
        .eval(&module_expr(user, false, "{ }", "ramdisk.script"))
        .unwrap_err();
    assert!(e.contains("needs nixpkgs' netboot module"), "{e}");
}

#[test]
fn module_asserts_load_db_has_a_nix_store() {
    let nix = Nix::new();
    let m = module_eval(&nix, "{ enable = true; }", true, "{ nix.enable = false; }");
    assert_eq!(m["assertions"], json!([true, false]));
    let m = module_eval(
        &nix,
        r#"{ enable = true; registration = "prebuilt"; }"#,
        true,
        "{ nix.enable = false; }",
    );
    assert_eq!(m["assertions"], json!([true, true]));
}

#[test]
fn module_warns_about_stage_1_settings_it_does_not_run() {
    let nix = Nix::new();
    let m = module_eval(&nix, "{ enable = true; }", true, "{ }");
    assert_eq!(m["warnings"], json!([]));
    let extra = r#"{ boot.initrd = { postMountCommands = "echo hi"; preLVMCommands = "";
      network.enable = true; secrets = { "/etc/key" = null; }; systemd.enable = false; }; }"#;
    let m = module_eval(&nix, "{ enable = true; }", true, extra);
    let warnings = strings(&m["warnings"]);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    for (w, name) in warnings.iter().zip([
        "boot.initrd.network.enable",
        "boot.initrd.secrets",
        "boot.initrd.postMountCommands",
    ]) {
        assert!(w.contains(name) && w.contains("does not run it"), "{w}");
    }
}

/// The module's script for the prebuilt database, run with the real nix-store on a real
/// registration; the database it leaves is installed the way the init installs it and read
/// back with `nix-store --dump-db`.
#[test]
fn prebuilt_database_script_with_real_nix() {
    let nix = Nix::new();
    let m = module_eval(
        &nix,
        r#"{ enable = true; registration = "prebuilt"; }"#,
        true,
        "{ }",
    );
    let script = m["prebuiltDb"]["script"].as_str().unwrap().to_string();

    // A registration of real store paths, as closureInfo writes one.
    let src = nix.path("src-root");
    let src_store = format!("local?root={}", src.display());
    let mut added = vec![];
    for (name, text) in [("a.txt", "one"), ("b.txt", "two")] {
        let file = nix.path(name);
        std::fs::write(&file, text).unwrap();
        let out = nix.run(
            NIX_STORE,
            &["--store", &src_store, "--add", &file.display().to_string()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        added.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    let out = nix.run(NIX_STORE, &["--store", &src_store, "--dump-db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registration = nix.path("registration");
    std::fs::write(&registration, &out.stdout).unwrap();
    let want = parse::parse(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(want.len(), 2);

    let out_dir = nix.path("db-out");
    let tmpdir = nix.path("build-tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let run = nix
        .command("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("registration", &registration)
        .env("out", &out_dir)
        .env("TMPDIR", &tmpdir)
        .output()
        .expect("bash");
    assert!(
        run.status.success(),
        "prebuilt-db script failed: {}\n{script}",
        String::from_utf8_lossy(&run.stderr)
    );
    for f in ["db.sqlite", "schema"] {
        assert!(out_dir.join(f).is_file(), "{f} missing from the database");
    }
    assert!(!out_dir.join("reserved").exists());

    let target = nix.path("target");
    let db = target.join("nix/var/nix/db");
    std::fs::create_dir_all(&db).unwrap();
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), db.join(entry.file_name())).unwrap();
    }
    let out = nix.run(
        NIX_STORE,
        &[
            "--store",
            &format!("local?root={}", target.display()),
            "--dump-db",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = parse::parse(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(canonical(&got), canonical(&want));
    for p in &added {
        assert!(got.iter().any(|i| &i.path == p), "{p} not registered");
    }
}

/// nix/package.nix with a stand-in for `lib`, `stdenv` and `rustPlatform` (buildRustPackage
/// returns its arguments); `lib.cleanSourceWith` is `builtins.path`, which copies the
/// source through package.nix's filter into the temp store for real.
fn package_eval(nix: &Nix, is_static: bool) -> Value {
    let expr = format!(
        r#"let
  lib = {{
    cleanSourceWith = {{ src, filter, name ? "source" }}: builtins.path {{ path = src; inherit filter name; }};
    removePrefix = p: s: let n = builtins.stringLength p; in
      if builtins.substring 0 n s == p then builtins.substring n (builtins.stringLength s) s else s;
    optionalString = c: s: if c then s else "";
    optionals = c: l: if c then l else [ ];
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  }};
  stdenv.hostPlatform = {{ isStatic = {is_static}; isGnu = !{is_static}; }};
  glibc.static = "/nix/store/00000000000000000000000000000000-glibc-2.39-static";
  rustPlatform.buildRustPackage = args: args;
  pkg = import {package} {{ inherit lib stdenv rustPlatform glibc; }};
in {{
  inherit (pkg) pname version cargoBuildFlags RUSTFLAGS buildInputs doCheck;
  src = "${{pkg.src}}";
  lockFile = toString pkg.cargoLock.lockFile;
}}"#,
        package = nix_path(&nix_dir().join("package.nix")),
    );
    let file = nix.path("package-expr.nix");
    std::fs::write(&file, &expr).unwrap();
    let store = format!("local?root={}", nix.path("store").display());
    // Read-write mode: builtins.path copies the source into the (temp) store.
    let out = nix.run(
        NIX_INSTANTIATE,
        &[
            "--eval",
            "--strict",
            "--json",
            "--read-write-mode",
            "--store",
            &store,
            &file.display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{expr}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn package_builds_both_binaries_statically_from_the_workspace() {
    let nix = Nix::new();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = package_eval(&nix, false);
    assert_eq!(p["pname"], json!("netboot-init"));
    assert_eq!(p["version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        strings(&p["cargoBuildFlags"]),
        ["--package", "netboot-init", "--package", "initrd-layout"]
    );
    assert_eq!(p["RUSTFLAGS"], json!("-C target-feature=+crt-static"));
    assert_eq!(
        p["buildInputs"],
        json!(["/nix/store/00000000000000000000000000000000-glibc-2.39-static"])
    );
    assert_eq!(
        p["lockFile"],
        json!(workspace.join("Cargo.lock").display().to_string())
    );
    assert_eq!(p["doCheck"], json!(false));
    // musl (pkgsStatic) links statically by itself.
    let s = package_eval(&nix, true);
    assert_eq!(s["RUSTFLAGS"], json!(""));
    assert_eq!(s["buildInputs"], json!([]));

    // The filtered source, as the build would see it.
    let logical = p["src"].as_str().unwrap();
    assert!(logical.starts_with("/nix/store/"), "{logical}");
    assert!(logical.ends_with("-netboot-init-source"), "{logical}");
    let src = nix.path("store").join(logical.trim_start_matches('/'));
    for present in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "src/lib.rs",
        "initrd-layout/Cargo.toml",
        "initrd-layout/src/main.rs",
        "initrd-layout/examples/netboot.json",
        "qemu/Cargo.toml",
        "qemu/bench-assets",
        "xtask/Cargo.toml",
    ] {
        assert!(
            src.join(present).exists(),
            "{present} missing from the source"
        );
    }
    for absent in ["target", "fuzz", "nix", ".cargo", ".git", ".ci"] {
        assert!(!src.join(absent).exists(), "{absent} is in the source");
    }
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                assert_ne!(entry.file_name(), "target", "{}", entry.path().display());
                stack.push(entry.path());
            }
        }
    }
    assert_eq!(
        std::fs::read(src.join("Cargo.lock")).unwrap(),
        std::fs::read(workspace.join("Cargo.lock")).unwrap()
    );

    // Cargo sees the whole workspace there: every member and both binaries.
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata on the filtered source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bins = vec![];
    for package in meta["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            if target["kind"] == json!(["bin"]) {
                bins.push(target["name"].as_str().unwrap().to_string());
            }
        }
    }
    for bin in ["netboot-init", "initrd-layout"] {
        assert!(bins.iter().any(|b| b == bin), "{bin} not in {bins:?}");
    }
}
