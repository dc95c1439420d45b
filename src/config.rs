//! The JSON config shipped in the initrd at [`CONFIG_PATH`].
//!
//! File systems are shaped like NixOS `fileSystems` entries so the NixOS module can serialize
//! its own options. Parsing is pure: [`Config::parse`] takes the text and returns either a
//! validated config or an error naming the field (`fileSystems[1].fsType: missing`).

use serde::{Deserialize, Serialize};

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
