//! The JSON config shipped in the initrd at [`CONFIG_PATH`].
//!
//! File systems are shaped like NixOS `fileSystems` entries so the NixOS module can serialize
//! its own options. Parsing is pure: [`Config::parse`] takes the text and returns either a
//! validated config or an error naming the field (`fileSystems[1].fsType: missing`).

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// Where the init looks for its config inside the initrd.
pub const CONFIG_PATH: &str = "/etc/netboot-init.json";

/// The only config version this init understands.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// The stage-2 init to exec when the kernel command line has no `init=`.
    #[serde(default)]
    pub init: Option<String>,
    /// Where the new root is assembled (NixOS stage 1 uses `/mnt-root`).
    #[serde(default = "default_target_root")]
    pub target_root: String,
    /// The kernel modules tree in the initrd; `<modulesDir>/<uname -r>` is searched.
    #[serde(default = "default_modules_dir")]
    pub modules_dir: String,
    /// Modules to load besides those the file systems imply (squashfs, overlay, loop).
    #[serde(default)]
    pub kernel_modules: Vec<String>,
    /// Parameters per module, e.g. `{ "loop": "max_loop=8" }`; the kernel command line's
    /// `module.param=value` entries are appended.
    #[serde(default)]
    pub module_params: std::collections::BTreeMap<String, String>,
    /// Mounted in order, each under `targetRoot`.
    pub file_systems: Vec<FileSystem>,
    #[serde(default)]
    pub registration: Registration,
    #[serde(default)]
    pub failure: Failure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSystem {
    pub mount_point: String,
    /// A path, `tmpfs`/`overlay` pseudo-devices, or a file for `loop` (relative paths resolve
    /// against `/` of the initrd, as NixOS does for `../nix-store.squashfs`).
    #[serde(default)]
    pub device: Option<String>,
    pub fs_type: String,
    /// Kernel options plus NixOS pseudo-options (`loop`, `x-*`, `nofail`, ...).
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub overlay: Option<Overlay>,
    /// Accepted because NixOS serializes it; every entry here is needed for boot.
    #[serde(default)]
    pub needed_for_boot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overlay {
    pub lowerdir: Vec<String>,
    #[serde(default)]
    pub upperdir: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationMode {
    /// Run the image's own `nix-store --load-db` on the new root.
    #[default]
    LoadDb,
    /// Install a database built with the image; nothing is executed at boot.
    Prebuilt,
    /// No registration at all.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    #[serde(default)]
    pub mode: RegistrationMode,
    /// The image's `nix-store`, a path inside the new root (mode `load-db`).
    #[serde(default)]
    pub nix_store: Option<String>,
    /// The registration file inside the new root.
    #[serde(default = "default_registration_file")]
    pub registration_file: String,
    /// The prebuilt database directory inside the initrd (mode `prebuilt`).
    #[serde(default = "default_prebuilt_db")]
    pub prebuilt_db: String,
    /// The system toplevel for the profile; derived from `init=` (its parent) when absent.
    #[serde(default)]
    pub toplevel: Option<String>,
    /// Create `/etc/NIXOS` on the new root.
    #[serde(default = "default_true")]
    pub nixos_marker: bool,
    /// Create the system profile `/nix/var/nix/profiles/system -> system-1-link -> toplevel`.
    #[serde(default = "default_true")]
    pub system_profile: bool,
}

impl Default for Registration {
    fn default() -> Self {
        Registration {
            mode: RegistrationMode::default(),
            nix_store: None,
            registration_file: default_registration_file(),
            prebuilt_db: default_prebuilt_db(),
            toplevel: None,
            nixos_marker: true,
            system_profile: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failure {
    /// Like systemd-initrd's `emergencyAccess`: without it `boot.shell_on_fail` opens no shell.
    #[serde(default)]
    pub emergency_access: bool,
    /// The emergency shell inside the initrd.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Seconds to wait before rebooting when neither a panic nor a shell was asked for.
    #[serde(default = "default_reboot_timeout")]
    pub reboot_timeout_secs: u32,
}

impl Default for Failure {
    fn default() -> Self {
        Failure {
            emergency_access: false,
            shell: default_shell(),
            reboot_timeout_secs: default_reboot_timeout(),
        }
    }
}

fn default_target_root() -> String {
    "/mnt-root".into()
}
fn default_modules_dir() -> String {
    "/lib/modules".into()
}
fn default_registration_file() -> String {
    "/nix/store/nix-path-registration".into()
}
fn default_prebuilt_db() -> String {
    "/nix-db".into()
}
fn default_shell() -> String {
    "/bin/sh".into()
}
fn default_reboot_timeout() -> u32 {
    10
}
fn default_true() -> bool {
    true
}

/// A config larger than this is refused before it is parsed.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Limits on counts and lengths, so a corrupt config is an error rather than a huge boot.
pub const MAX_FILE_SYSTEMS: usize = 64;
pub const MAX_OPTIONS: usize = 64;
pub const MAX_LOWERDIRS: usize = 128;
pub const MAX_KERNEL_MODULES: usize = 1024;
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_NAME_BYTES: usize = 255;

/// A config that cannot be used: `path` names the field (`fileSystems[1].fsType`, or
/// `config` for the document as a whole, or the file for I/O errors) and `problem` says what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    pub path: String,
    pub problem: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

type Check = Result<(), ConfigError>;

impl Config {
    /// Parses and validates a config. Every error names the field and the problem.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                "config",
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        // The version is checked on its own first: a config written for another version is
        // reported as that, not as a list of unknown fields.
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new("config", format!("invalid JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(ConfigError::new("config", "expected a JSON object"));
        };
        match object.get("version") {
            None => return Err(ConfigError::new("version", "missing")),
            Some(v) if v.as_u64() == Some(CONFIG_VERSION.into()) => {}
            Some(v) => {
                return Err(ConfigError::new(
                    "version",
                    format!("must be {CONFIG_VERSION} (got {v})"),
                ))
            }
        }
        drop(value);
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(serde_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses the config file at `path` ([`CONFIG_PATH`] at boot). I/O errors name
    /// the file; parse errors name the field.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file_error = |problem: String| ConfigError::new(path.display().to_string(), problem);
        let file =
            std::fs::File::open(path).map_err(|e| file_error(format!("cannot open: {e}")))?;
        let mut bytes = Vec::new();
        // One byte past the limit tells "too large" apart from "exactly at the limit".
        file.take(MAX_CONFIG_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| file_error(format!("cannot read: {e}")))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(file_error(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            file_error(format!(
                "not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Config::parse(&text)
    }

    /// The semantic checks [`Config::parse`] runs after deserializing, before anything is
    /// mounted.
    pub fn validate(&self) -> Check {
        if let Some(init) = &self.init {
            absolute("init", init)?;
        }
        normalized("targetRoot", &self.target_root)?;
        if self.target_root == "/" {
            return Err(ConfigError::new("targetRoot", "must not be \"/\""));
        }
        normalized("modulesDir", &self.modules_dir)?;
        if self.kernel_modules.len() > MAX_KERNEL_MODULES {
            return Err(ConfigError::new(
                "kernelModules",
                format!("more than {MAX_KERNEL_MODULES} entries"),
            ));
        }
        for (i, m) in self.kernel_modules.iter().enumerate() {
            module_or_alias(&format!("kernelModules[{i}]"), m)?;
        }
        if self.module_params.len() > MAX_KERNEL_MODULES {
            return Err(ConfigError::new(
                "moduleParams",
                format!("more than {MAX_KERNEL_MODULES} entries"),
            ));
        }
        for (module, params) in &self.module_params {
            let path = format!("moduleParams.{module}");
            if !is_module_name(module) {
                return Err(ConfigError::new(
                    path,
                    "not a module name (letters, digits, '_' and '-')",
                ));
            }
            text_field(&path, params, MAX_PATH_BYTES)?;
        }
        self.validate_file_systems()?;
        self.validate_registration()?;
        absolute("failure.shell", &self.failure.shell)?;
        Ok(())
    }

    fn validate_file_systems(&self) -> Check {
        let fss = &self.file_systems;
        if fss.len() > MAX_FILE_SYSTEMS {
            return Err(ConfigError::new(
                "fileSystems",
                format!("more than {MAX_FILE_SYSTEMS} entries"),
            ));
        }
        for (i, fs) in fss.iter().enumerate() {
            fs.validate(&format!("fileSystems[{i}]"))?;
        }
        for (i, fs) in fss.iter().enumerate() {
            let mp = fs.mount_point.as_str();
            let path = format!("fileSystems[{i}].mountPoint");
            if mp == "/" && i != 0 {
                return Err(ConfigError::new(path, "\"/\" must be the first entry"));
            }
            for (j, earlier) in fss[..i].iter().enumerate() {
                let other = earlier.mount_point.as_str();
                if other == mp {
                    return Err(ConfigError::new(
                        path,
                        format!("{mp:?} is already fileSystems[{j}]"),
                    ));
                }
                if is_under(other, mp) {
                    return Err(ConfigError::new(
                        path,
                        format!(
                            "{mp:?} must come before fileSystems[{j}] ({other:?}), which is under it"
                        ),
                    ));
                }
            }
        }
        // Directories an overlay uses must not be hidden by a file system mounted later.
        for (i, fs) in fss.iter().enumerate() {
            if let Some(overlay) = &fs.overlay {
                for (field, dir) in overlay.dirs() {
                    if let Some((k, later)) = fss
                        .iter()
                        .enumerate()
                        .skip(i + 1)
                        .find(|(_, l)| l.mount_point == dir || is_under(dir, &l.mount_point))
                    {
                        return Err(ConfigError::new(
                            format!("fileSystems[{i}].overlay.{field}"),
                            format!(
                                "{dir:?} is under fileSystems[{k}] ({:?}), which is mounted later",
                                later.mount_point
                            ),
                        ));
                    }
                }
            }
        }
        if fss.first().map(|fs| fs.mount_point.as_str()) != Some("/") {
            return Err(ConfigError::new(
                "fileSystems",
                "no entry for \"/\" (the new root) first",
            ));
        }
        Ok(())
    }

    fn validate_registration(&self) -> Check {
        let r = &self.registration;
        match (&r.nix_store, r.mode) {
            (None, RegistrationMode::LoadDb) => {
                return Err(ConfigError::new(
                    "registration.nixStore",
                    "missing (mode \"load-db\" runs it)",
                ))
            }
            (Some(nix_store), _) => absolute("registration.nixStore", nix_store)?,
            (None, _) => {}
        }
        absolute("registration.registrationFile", &r.registration_file)?;
        absolute("registration.prebuiltDb", &r.prebuilt_db)?;
        if let Some(toplevel) = &r.toplevel {
            absolute("registration.toplevel", toplevel)?;
        }
        Ok(())
    }
}

impl FileSystem {
    /// Whether `options` asks for a loop device.
    pub fn wants_loop(&self) -> bool {
        self.options.iter().any(|o| o == "loop")
    }

    fn validate(&self, at: &str) -> Check {
        normalized(&format!("{at}.mountPoint"), &self.mount_point)?;
        let fs_type = format!("{at}.fsType");
        text_field(&fs_type, &self.fs_type, MAX_NAME_BYTES)?;
        if self
            .fs_type
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b',')
        {
            return Err(ConfigError::new(
                fs_type,
                format!("not a file system type (got {:?})", self.fs_type),
            ));
        }
        if let Some(device) = &self.device {
            text_field(&format!("{at}.device"), device, MAX_PATH_BYTES)?;
        }
        if self.options.len() > MAX_OPTIONS {
            return Err(ConfigError::new(
                format!("{at}.options"),
                format!("more than {MAX_OPTIONS} entries"),
            ));
        }
        for (i, o) in self.options.iter().enumerate() {
            text_field(&format!("{at}.options[{i}]"), o, MAX_PATH_BYTES)?;
        }
        if self.wants_loop() && self.device.is_none() {
            return Err(ConfigError::new(
                format!("{at}.options"),
                "\"loop\" needs a device (the file to attach)",
            ));
        }
        match (&self.overlay, self.fs_type == "overlay") {
            (Some(overlay), true) => overlay.validate(&format!("{at}.overlay")),
            (Some(_), false) => Err(ConfigError::new(
                format!("{at}.overlay"),
                format!("only for fsType \"overlay\" (got {:?})", self.fs_type),
            )),
            (None, true) => Err(ConfigError::new(
                format!("{at}.overlay"),
                "missing (fsType \"overlay\" needs lowerdir)",
            )),
            (None, false) => Ok(()),
        }
    }
}

impl Overlay {
    /// Every directory the overlay uses, with its field name.
    fn dirs(&self) -> impl Iterator<Item = (String, &str)> {
        let lower = self
            .lowerdir
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("lowerdir[{i}]"), d.as_str()));
        let upper = self
            .upperdir
            .iter()
            .map(|d| ("upperdir".into(), d.as_str()));
        let work = self.workdir.iter().map(|d| ("workdir".into(), d.as_str()));
        lower.chain(upper).chain(work)
    }

    fn validate(&self, at: &str) -> Check {
        if self.lowerdir.is_empty() {
            return Err(ConfigError::new(format!("{at}.lowerdir"), "empty"));
        }
        if self.lowerdir.len() > MAX_LOWERDIRS {
            return Err(ConfigError::new(
                format!("{at}.lowerdir"),
                format!("more than {MAX_LOWERDIRS} entries"),
            ));
        }
        for (field, dir) in self.dirs() {
            let path = format!("{at}.{field}");
            normalized(&path, dir)?;
            // These separate entries in the overlay mount options.
            if dir.contains([':', ',']) {
                return Err(ConfigError::new(
                    path,
                    format!("must not contain ':' or ',' (got {dir:?})"),
                ));
            }
        }
        match (&self.upperdir, &self.workdir) {
            (Some(upper), Some(work)) => {
                let path = format!("{at}.workdir");
                if upper == work {
                    Err(ConfigError::new(path, "must differ from upperdir"))
                } else if is_under(work, upper) {
                    Err(ConfigError::new(
                        path,
                        format!("must not be inside upperdir ({upper:?})"),
                    ))
                } else if is_under(upper, work) {
                    Err(ConfigError::new(
                        format!("{at}.upperdir"),
                        format!("must not be inside workdir ({work:?})"),
                    ))
                } else {
                    Ok(())
                }
            }
            (Some(_), None) => Err(ConfigError::new(
                format!("{at}.workdir"),
                "missing (upperdir is set; give both or neither)",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                format!("{at}.upperdir"),
                "missing (workdir is set; give both or neither)",
            )),
            (None, None) => Ok(()),
        }
    }
}

/// Turns a deserialization error into `<field path>: <problem>`.
fn serde_error(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let inner = e.into_inner();
    let message = inner.to_string();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    let join = |path: &str, field: &str| {
        if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    let (path, problem) = if let Some(field) = backticked(message, "missing field ") {
        (join(&path, field), "missing".to_string())
    } else if let Some(field) = backticked(message, "duplicate field ") {
        (join(&path, field), "given more than once".to_string())
    } else if backticked(message, "unknown field ").is_some() {
        // The path already ends with the unknown key.
        let expected = message
            .split_once(", expected ")
            .map(|(_, list)| format!(" (expected {})", list.replace('`', "")))
            .unwrap_or_default();
        (path, format!("unknown field{expected}"))
    } else {
        (path, message.replace('`', "\""))
    };
    let path = if path.is_empty() {
        "config".into()
    } else {
        path
    };
    ConfigError::new(path, problem)
}

/// `prefix` followed by a backticked name: the name.
fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message
        .strip_prefix(prefix)?
        .strip_prefix('`')?
        .split('`')
        .next()
}

fn text_field(path: &str, s: &str, max: usize) -> Check {
    if s.is_empty() {
        Err(ConfigError::new(path, "empty"))
    } else if s.len() > max {
        Err(ConfigError::new(path, format!("longer than {max} bytes")))
    } else if s.contains('\0') {
        Err(ConfigError::new(path, "contains a NUL byte"))
    } else {
        Ok(())
    }
}

fn absolute(path: &str, s: &str) -> Check {
    text_field(path, s, MAX_PATH_BYTES)?;
    if !s.starts_with('/') {
        return Err(ConfigError::new(
            path,
            format!("must be an absolute path (got {s:?})"),
        ));
    }
    Ok(())
}

/// Absolute, and written the one way `mount` and `/proc/self/mountinfo` write it: no empty,
/// `.` or `..` components and no trailing slash.
fn normalized(path: &str, s: &str) -> Check {
    absolute(path, s)?;
    if s != "/"
        && s[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(ConfigError::new(
            path,
            format!("must be normalized: no \"//\", \".\", \"..\" or trailing \"/\" (got {s:?})"),
        ));
    }
    Ok(())
}

/// Whether normalized absolute path `child` is strictly below `parent`.
fn is_under(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return child != "/";
    }
    child.len() > parent.len()
        && child.starts_with(parent)
        && child.as_bytes()[parent.len()] == b'/'
}

fn is_module_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A module name or an alias (aliases carry `:`, `*`, ... but never whitespace or `/`).
fn module_or_alias(path: &str, s: &str) -> Check {
    text_field(path, s, MAX_NAME_BYTES)?;
    if s.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return Err(ConfigError::new(
            path,
            format!("not a module name or alias (got {s:?})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../initrd-layout/examples/netboot.json");

    #[test]
    fn example_config_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        let points: Vec<&str> = c
            .file_systems
            .iter()
            .map(|f| f.mount_point.as_str())
            .collect();
        assert_eq!(
            points,
            ["/", "/nix/.ro-store", "/nix/.rw-store", "/nix/store"]
        );
        let ro = &c.file_systems[1];
        assert_eq!(
            (
                ro.device.as_deref(),
                ro.fs_type.as_str(),
                ro.options.as_slice()
            ),
            (
                Some("../nix-store.squashfs"),
                "squashfs",
                &["loop".to_string(), "threads=multi".into()][..]
            )
        );
        assert!(ro.wants_loop());
        assert_eq!(
            c.file_systems[3].overlay,
            Some(Overlay {
                lowerdir: vec!["/nix/.ro-store".into()],
                upperdir: Some("/nix/.rw-store/store".into()),
                workdir: Some("/nix/.rw-store/work".into()),
            })
        );
        assert_eq!(c.registration.mode, RegistrationMode::LoadDb);
        assert!(!c.failure.emergency_access);
        assert_eq!(c.target_root, "/mnt-root");
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/initrd-layout/examples/netboot.json"
        ));
        assert_eq!(Config::load(path), Config::parse(EXAMPLE));
    }

    /// The example with `edit` applied to its JSON.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        edit(&mut v);
        v.to_string()
    }

    fn fs(v: &mut serde_json::Value, i: usize) -> &mut serde_json::Map<String, serde_json::Value> {
        v["fileSystems"][i].as_object_mut().unwrap()
    }

    #[test]
    fn bad_configs() {
        use serde_json::json;
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            // Structure, reported by serde with the field path.
            (Box::new(|v| { fs(v, 1).remove("fsType"); }), "fileSystems[1].fsType: missing"),
            (Box::new(|v| { v.as_object_mut().unwrap().remove("fileSystems"); }), "fileSystems: missing"),
            (Box::new(|v| { fs(v, 2).insert("fstype".into(), json!("tmpfs")); }),
             "fileSystems[2].fstype: unknown field (expected one of mountPoint, device, fsType, options, overlay, neededForBoot)"),
            (Box::new(|v| { v["extra"] = json!(1); }),
             "extra: unknown field (expected one of version, init, targetRoot, modulesDir, kernelModules, moduleParams, fileSystems, registration, failure)"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["lower"] = json!([]); }),
             "fileSystems[3].overlay.lower: unknown field (expected one of lowerdir, upperdir, workdir)"),
            (Box::new(|v| { v["registration"]["mode"] = json!("copy"); }),
             "registration.mode: unknown variant \"copy\", expected one of \"load-db\", \"prebuilt\", \"none\""),
            (Box::new(|v| { v["fileSystems"][0]["options"] = json!("mode=0755"); }),
             "fileSystems[0].options: invalid type: string \"mode=0755\", expected a sequence"),
            (Box::new(|v| { v["failure"]["rebootTimeoutSecs"] = json!(-1); }),
             "failure.rebootTimeoutSecs: invalid value: integer \"-1\", expected u32"),
            (Box::new(|v| { v["fileSystems"][1]["overlay"] = json!({}); }),
             "fileSystems[1].overlay.lowerdir: missing"),
            // The version.
            (Box::new(|v| { v["version"] = json!(2); }), "version: must be 1 (got 2)"),
            (Box::new(|v| { v["version"] = json!("1"); }), "version: must be 1 (got \"1\")"),
            (Box::new(|v| { v.as_object_mut().unwrap().remove("version"); }), "version: missing"),
            (Box::new(|v| { v["version"] = json!(2); v["future"] = json!(true); }), "version: must be 1 (got 2)"),
            // Paths.
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("nix/.rw-store")); }),
             "fileSystems[2].mountPoint: must be an absolute path (got \"nix/.rw-store\")"),
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("/nix//.rw-store")); }),
             "fileSystems[2].mountPoint: must be normalized: no \"//\", \".\", \"..\" or trailing \"/\" (got \"/nix//.rw-store\")"),
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("/nix/.rw-store/")); }),
             "fileSystems[2].mountPoint: must be normalized: no \"//\", \".\", \"..\" or trailing \"/\" (got \"/nix/.rw-store/\")"),
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("/nix/../etc")); }),
             "fileSystems[2].mountPoint: must be normalized: no \"//\", \".\", \"..\" or trailing \"/\" (got \"/nix/../etc\")"),
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("")); }), "fileSystems[2].mountPoint: empty"),
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("/a\u{0}b")); }),
             "fileSystems[2].mountPoint: contains a NUL byte"),
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!(format!("/{}", "a".repeat(MAX_PATH_BYTES)))); }),
             "fileSystems[2].mountPoint: longer than 4096 bytes"),
            (Box::new(|v| { v["init"] = json!("init"); }), "init: must be an absolute path (got \"init\")"),
            (Box::new(|v| { v["targetRoot"] = json!("/"); }), "targetRoot: must not be \"/\""),
            (Box::new(|v| { v["modulesDir"] = json!("lib/modules"); }), "modulesDir: must be an absolute path (got \"lib/modules\")"),
            (Box::new(|v| { v["failure"]["shell"] = json!("sh"); }), "failure.shell: must be an absolute path (got \"sh\")"),
            (Box::new(|v| { v["registration"]["registrationFile"] = json!("reg"); }),
             "registration.registrationFile: must be an absolute path (got \"reg\")"),
            (Box::new(|v| { v["registration"]["toplevel"] = json!(""); }), "registration.toplevel: empty"),
            // Order and duplicates.
            (Box::new(|v| { fs(v, 2).insert("mountPoint".into(), json!("/nix/.ro-store")); }),
             "fileSystems[2].mountPoint: \"/nix/.ro-store\" is already fileSystems[1]"),
            (Box::new(|v| { let a = v["fileSystems"].as_array_mut().unwrap(); a.swap(0, 1); }),
             "fileSystems[1].mountPoint: \"/\" must be the first entry"),
            (Box::new(|v| { v["fileSystems"].as_array_mut().unwrap().remove(0); }),
             "fileSystems: no entry for \"/\" (the new root) first"),
            (Box::new(|v| { v["fileSystems"] = json!([]); }), "fileSystems: no entry for \"/\" (the new root) first"),
            (Box::new(|v| { v["fileSystems"].as_array_mut().unwrap().push(json!({"mountPoint": "/nix", "fsType": "tmpfs"})); }),
             "fileSystems[4].mountPoint: \"/nix\" must come before fileSystems[1] (\"/nix/.ro-store\"), which is under it"),
            (Box::new(|v| { let a = v["fileSystems"].as_array_mut().unwrap(); a.swap(1, 3); }),
             "fileSystems[1].overlay.lowerdir[0]: \"/nix/.ro-store\" is under fileSystems[3] (\"/nix/.ro-store\"), which is mounted later"),
            (Box::new(|v| { let a = v["fileSystems"].as_array_mut().unwrap(); a.swap(2, 3); }),
             "fileSystems[2].overlay.upperdir: \"/nix/.rw-store/store\" is under fileSystems[3] (\"/nix/.rw-store\"), which is mounted later"),
            (Box::new(|v| { let a = v["fileSystems"].as_array_mut().unwrap(); for i in 0..65 { a.push(json!({"mountPoint": format!("/m{i}"), "fsType": "tmpfs"})); } }),
             "fileSystems: more than 64 entries"),
            // Entries.
            (Box::new(|v| { fs(v, 0).insert("fsType".into(), json!("")); }), "fileSystems[0].fsType: empty"),
            (Box::new(|v| { fs(v, 0).insert("fsType".into(), json!("tmpfs,ro")); }),
             "fileSystems[0].fsType: not a file system type (got \"tmpfs,ro\")"),
            (Box::new(|v| { fs(v, 0).insert("device".into(), json!("")); }), "fileSystems[0].device: empty"),
            (Box::new(|v| { fs(v, 0).insert("options".into(), json!(["mode=0755", ""])); }), "fileSystems[0].options[1]: empty"),
            (Box::new(|v| { fs(v, 0).insert("options".into(), json!(vec!["ro"; 65])); }), "fileSystems[0].options: more than 64 entries"),
            (Box::new(|v| { fs(v, 2).insert("options".into(), json!(["loop"])); }),
             "fileSystems[2].options: \"loop\" needs a device (the file to attach)"),
            // Overlays.
            (Box::new(|v| { fs(v, 3).insert("fsType".into(), json!("tmpfs")); }),
             "fileSystems[3].overlay: only for fsType \"overlay\" (got \"tmpfs\")"),
            (Box::new(|v| { fs(v, 3).remove("overlay"); }),
             "fileSystems[3].overlay: missing (fsType \"overlay\" needs lowerdir)"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["lowerdir"] = json!([]); }), "fileSystems[3].overlay.lowerdir: empty"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["lowerdir"] = json!(["/a", "b"]); }),
             "fileSystems[3].overlay.lowerdir[1]: must be an absolute path (got \"b\")"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["lowerdir"] = json!(["/a:/b"]); }),
             "fileSystems[3].overlay.lowerdir[0]: must not contain ':' or ',' (got \"/a:/b\")"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["lowerdir"] = json!(vec!["/a"; 129]); }),
             "fileSystems[3].overlay.lowerdir: more than 128 entries"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"].as_object_mut().unwrap().remove("workdir"); }),
             "fileSystems[3].overlay.workdir: missing (upperdir is set; give both or neither)"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"].as_object_mut().unwrap().remove("upperdir"); }),
             "fileSystems[3].overlay.upperdir: missing (workdir is set; give both or neither)"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["workdir"] = json!("/nix/.rw-store/store"); }),
             "fileSystems[3].overlay.workdir: must differ from upperdir"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["workdir"] = json!("/nix/.rw-store/store/w"); }),
             "fileSystems[3].overlay.workdir: must not be inside upperdir (\"/nix/.rw-store/store\")"),
            (Box::new(|v| { v["fileSystems"][3]["overlay"]["upperdir"] = json!("/nix/.rw-store/work/u"); }),
             "fileSystems[3].overlay.upperdir: must not be inside workdir (\"/nix/.rw-store/work\")"),
            // Registration and modules.
            (Box::new(|v| { v["registration"].as_object_mut().unwrap().remove("nixStore"); }),
             "registration.nixStore: missing (mode \"load-db\" runs it)"),
            (Box::new(|v| { v["registration"]["nixStore"] = json!("nix-store"); }),
             "registration.nixStore: must be an absolute path (got \"nix-store\")"),
            (Box::new(|v| { v["kernelModules"] = json!(["loop", ""]); }), "kernelModules[1]: empty"),
            (Box::new(|v| { v["kernelModules"] = json!(["../evil"]); }),
             "kernelModules[0]: not a module name or alias (got \"../evil\")"),
            (Box::new(|v| { v["moduleParams"] = json!({"lo op": "max_loop=8"}); }),
             "moduleParams.lo op: not a module name (letters, digits, '_' and '-')"),
            (Box::new(|v| { v["moduleParams"] = json!({"loop": ""}); }), "moduleParams.loop: empty"),
        ];
        for (edit, want) in cases {
            let text = edited(edit);
            match Config::parse(&text) {
                Ok(_) => panic!("accepted: {want}"),
                Err(e) => assert_eq!(e.to_string(), want),
            }
        }
    }

    #[test]
    fn bad_documents() {
        let cases: &[(&str, &str)] = &[
            (
                "",
                "config: invalid JSON: EOF while parsing a value at line 1 column 0",
            ),
            ("[1]", "config: expected a JSON object"),
            (
                "{\"version\": 1,}",
                "config: invalid JSON: trailing comma at line 1 column 15",
            ),
            (
                "{\"version\": 1, \"version\": 1, \"fileSystems\": []}",
                "version: given more than once",
            ),
            (
                &"[".repeat(1000),
                "config: invalid JSON: recursion limit exceeded at line 1 column 128",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Config::parse(text).unwrap_err().to_string(),
                *want,
                "{text:?}"
            );
        }
        let big = format!(
            "{{\"version\": 1, \"pad\": \"{}\"}}",
            " ".repeat(MAX_CONFIG_BYTES)
        );
        assert_eq!(
            Config::parse(&big).unwrap_err().to_string(),
            "config: larger than 1048576 bytes"
        );
    }

    #[test]
    fn good_variants() {
        use serde_json::json;
        let minimal = json!({"version": 1, "registration": {"mode": "none"},
            "fileSystems": [{"mountPoint": "/", "fsType": "tmpfs"}]});
        let c = Config::parse(&minimal.to_string()).unwrap();
        assert_eq!(c.registration.mode, RegistrationMode::None);
        assert_eq!(c.failure, Failure::default());
        // An overlay without upper and work dirs is a read-only overlay.
        let ro = edited(|v| {
            let o = v["fileSystems"][3]["overlay"].as_object_mut().unwrap();
            o.remove("upperdir");
            o.remove("workdir");
        });
        assert!(Config::parse(&ro).is_ok());
        let prebuilt = edited(|v| {
            v["registration"] = json!({"mode": "prebuilt", "prebuiltDb": "/nix-db"});
        });
        assert!(Config::parse(&prebuilt).is_ok());
    }

    #[test]
    fn load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        let e = Config::load(&missing).unwrap_err();
        assert_eq!(e.path, missing.display().to_string());
        assert!(e.problem.starts_with("cannot open: "), "{e}");

        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_CONFIG_BYTES + 1]).unwrap();
        assert_eq!(
            Config::load(&big).unwrap_err().problem,
            "larger than 1048576 bytes"
        );

        let binary = dir.path().join("bin.json");
        std::fs::write(&binary, b"{\"version\": \xff}").unwrap();
        assert_eq!(
            Config::load(&binary).unwrap_err().problem,
            "not UTF-8 (invalid byte at offset 12)"
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9._-]{0,8}"
    }

    fn abs_path() -> impl Strategy<Value = String> {
        prop::collection::vec(name(), 1..4).prop_map(|c| format!("/{}", c.join("/")))
    }

    fn option() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9=_]{0,10}"
    }

    /// A file system mounted at `/<top>`, with or without a device.
    fn plain_fs(top: String) -> impl Strategy<Value = FileSystem> {
        (
            prop::option::of("[a-z./-]{1,20}"),
            "[a-z0-9]{1,10}",
            prop::collection::vec(option(), 0..4),
            any::<bool>(),
            prop::option::of(any::<bool>()),
        )
            .prop_map(move |(device, fs_type, mut options, looped, needed)| {
                if looped && device.is_some() {
                    options.push("loop".into());
                }
                FileSystem {
                    mount_point: format!("/{top}"),
                    device,
                    fs_type: if fs_type == "overlay" {
                        "tmpfs".into()
                    } else {
                        fs_type
                    },
                    options,
                    overlay: None,
                    needed_for_boot: needed,
                }
            })
    }

    /// Valid configs: a root, up to five file systems on distinct top-level directories, and
    /// an overlay on top of them.
    fn config() -> impl Strategy<Value = Config> {
        let tops = prop::collection::btree_set("[a-z][a-z0-9]{0,6}", 0..6);
        let fss = tops.prop_flat_map(|tops| {
            let entries: Vec<_> = tops.iter().cloned().map(plain_fs).collect();
            let dirs: Vec<String> = tops.iter().map(|t| format!("/{t}")).collect();
            (
                entries,
                any::<bool>(),
                prop::sample::subsequence(dirs.clone(), 0..=dirs.len()),
            )
                .prop_map(|(mut entries, upper, lower)| {
                    entries.insert(
                        0,
                        FileSystem {
                            mount_point: "/".into(),
                            device: Some("tmpfs".into()),
                            fs_type: "tmpfs".into(),
                            options: vec!["mode=0755".into()],
                            overlay: None,
                            needed_for_boot: None,
                        },
                    );
                    if !lower.is_empty() {
                        entries.push(FileSystem {
                            mount_point: "/overlay-top/store".into(),
                            device: Some("overlay".into()),
                            fs_type: "overlay".into(),
                            options: vec![],
                            overlay: Some(Overlay {
                                lowerdir: lower,
                                upperdir: upper.then(|| "/rw/upper".into()),
                                workdir: upper.then(|| "/rw/work".into()),
                            }),
                            needed_for_boot: Some(true),
                        });
                    }
                    entries
                })
        });
        let registration = (
            prop_oneof![
                Just(RegistrationMode::LoadDb),
                Just(RegistrationMode::Prebuilt),
                Just(RegistrationMode::None)
            ],
            abs_path(),
            abs_path(),
            abs_path(),
            prop::option::of(abs_path()),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(mode, nix_store, registration_file, prebuilt_db, toplevel, m, p)| Registration {
                    mode,
                    nix_store: Some(nix_store),
                    registration_file,
                    prebuilt_db,
                    toplevel,
                    nixos_marker: m,
                    system_profile: p,
                },
            );
        let failure =
            (any::<bool>(), abs_path(), any::<u32>()).prop_map(|(e, shell, secs)| Failure {
                emergency_access: e,
                shell,
                reboot_timeout_secs: secs,
            });
        (
            prop::option::of(abs_path()),
            abs_path(),
            abs_path(),
            prop::collection::vec("[a-z0-9_-]{1,10}", 0..4),
            prop::collection::btree_map("[a-z0-9_-]{1,10}", option(), 0..3),
            fss,
            registration,
            failure,
        )
            .prop_map(
                |(
                    init,
                    target_root,
                    modules_dir,
                    kernel_modules,
                    module_params,
                    file_systems,
                    registration,
                    failure,
                )| {
                    Config {
                        version: CONFIG_VERSION,
                        init,
                        target_root,
                        modules_dir,
                        kernel_modules,
                        module_params,
                        file_systems,
                        registration,
                        failure,
                    }
                },
            )
    }

    /// Arbitrary JSON, to reach every deserializer error.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z/.=]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("version".to_string()),
                Just("fileSystems".to_string()),
                Just("mountPoint".to_string()),
                Just("fsType".to_string()),
                Just("overlay".to_string()),
                Just("lowerdir".to_string()),
                Just("registration".to_string()),
                Just("mode".to_string()),
                "[a-z]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_text(text in any::<String>()) {
            if let Err(e) = Config::parse(&text) {
                prop_assert!(!e.path.is_empty() && !e.problem.is_empty());
            }
        }

        #[test]
        fn never_panics_on_json(mut v in json(), version in any::<bool>()) {
            if version {
                if let Some(o) = v.as_object_mut() {
                    o.insert("version".into(), 1.into());
                }
            }
            if let Err(e) = Config::parse(&v.to_string()) {
                prop_assert!(!e.path.is_empty() && !e.problem.is_empty());
            }
        }

        #[test]
        fn never_panics_on_edited_example(at in 0usize..1200, len in 0usize..8, with in "[\\[\\]{}\",:a-z/0-9 ]{0,6}") {
            let text = include_str!("../initrd-layout/examples/netboot.json");
            let at = at.min(text.len());
            let end = (at + len).min(text.len());
            let edited = format!("{}{}{}", &text[..at], with, &text[end..]);
            if let Ok(c) = Config::parse(&edited) {
                // Whatever was accepted serializes back to the same config.
                let again = Config::parse(&serde_json::to_string(&c).unwrap());
                prop_assert_eq!(again, Ok(c));
            }
        }

        #[test]
        fn serialize_then_parse_round_trips(c in config()) {
            prop_assert_eq!(c.validate(), Ok(()));
            let compact = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(Config::parse(&compact), Ok(c.clone()));
            let pretty = serde_json::to_string_pretty(&c).unwrap();
            prop_assert_eq!(Config::parse(&pretty), Ok(c));
        }
    }
}
