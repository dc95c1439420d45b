//! Mount options as NixOS `fileSystems.<name>.options` writes them.
//!
//! Three kinds of option: flags the kernel takes as `mount(2)` flag bits (`ro`, `nosuid`,
//! `relatime`, ...), pseudo-options that only userspace interprets (`loop`, `nofail`,
//! `x-*`, `defaults`, ...), and everything else, which goes to the file system as the data
//! string. [`parse`] is pure.

use nix::mount::MsFlags;
use std::fmt;

/// The option asking for the loop device to read its backing file with direct I/O
/// (`LO_FLAGS_DIRECT_IO`). `x-netboot.loop-direct-io` and `x-netboot.loop-direct-io=on` turn it
/// on, `x-netboot.loop-direct-io=off` turns it off; without it [`DEFAULT_LOOP_DIRECT_IO`]
/// applies. An `x-` option, so util-linux and systemd ignore it.
pub const LOOP_DIRECT_IO_OPTION: &str = "x-netboot.loop-direct-io";

/// Whether loop devices use direct I/O when the options do not say.
pub const DEFAULT_LOOP_DIRECT_IO: bool = false;

/// Limits against hostile or broken configs.
pub const MAX_OPTIONS: usize = 256;
pub const MAX_OPTION_LEN: usize = 4096;

/// `MS_NOSYMFOLLOW` (Linux 5.10); nix 0.29 does not name it.
const MS_NOSYMFOLLOW: u64 = 256;

/// What a list of options means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flag bits for `mount(2)`.
    pub flags: MsFlags,
    /// Options passed to the file system, in order (joined with `,` into the data string).
    pub data: Vec<String>,
    /// `loop`: attach the device (a file) to a loop device first.
    pub loop_device: bool,
    /// `x-netboot.loop-direct-io[=on|off]`, when given.
    pub loop_direct_io: Option<bool>,
    /// `nofail`: a failure is logged and the boot goes on.
    pub nofail: bool,
    /// `noauto`: the entry is not mounted at boot.
    pub noauto: bool,
    /// Pseudo-options seen and not passed to the kernel (for debug logs).
    pub ignored: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            data: vec![],
            loop_device: false,
            loop_direct_io: None,
            nofail: false,
            noauto: false,
            ignored: vec![],
        }
    }
}

impl MountOptions {
    /// The data string for `mount(2)`.
    pub fn data_string(&self) -> String {
        self.data.join(",")
    }

    /// Loop direct I/O, with the default applied.
    pub fn direct_io(&self) -> bool {
        self.loop_direct_io.unwrap_or(DEFAULT_LOOP_DIRECT_IO)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("too many options ({0}, at most {MAX_OPTIONS})")]
    TooMany(usize),
    #[error("option is {0} bytes long (at most {MAX_OPTION_LEN})")]
    TooLong(usize),
    #[error("empty option")]
    Empty,
    #[error("`{option}`: {reason}")]
    Unsupported {
        option: String,
        reason: &'static str,
    },
    #[error("`{option}`: expected on or off")]
    BadBool { option: String },
}

/// Flag options: name, bits set, whether the name clears the bits instead.
const FLAGS: &[(&str, u64, bool)] = &[
    ("ro", libc_ms::RDONLY, false),
    ("rw", libc_ms::RDONLY, true),
    ("nosuid", libc_ms::NOSUID, false),
    ("suid", libc_ms::NOSUID, true),
    ("nodev", libc_ms::NODEV, false),
    ("dev", libc_ms::NODEV, true),
    ("noexec", libc_ms::NOEXEC, false),
    ("exec", libc_ms::NOEXEC, true),
    ("sync", libc_ms::SYNCHRONOUS, false),
    ("async", libc_ms::SYNCHRONOUS, true),
    ("dirsync", libc_ms::DIRSYNC, false),
    ("mand", libc_ms::MANDLOCK, false),
    ("nomand", libc_ms::MANDLOCK, true),
    ("noatime", libc_ms::NOATIME, false),
    ("atime", libc_ms::NOATIME, true),
    ("nodiratime", libc_ms::NODIRATIME, false),
    ("diratime", libc_ms::NODIRATIME, true),
    ("relatime", libc_ms::RELATIME, false),
    ("norelatime", libc_ms::RELATIME, true),
    ("strictatime", libc_ms::STRICTATIME, false),
    ("nostrictatime", libc_ms::STRICTATIME, true),
    ("lazytime", libc_ms::LAZYTIME, false),
    ("nolazytime", libc_ms::LAZYTIME, true),
    ("iversion", libc_ms::I_VERSION, false),
    ("noiversion", libc_ms::I_VERSION, true),
    ("silent", libc_ms::SILENT, false),
    ("loud", libc_ms::SILENT, true),
    ("nosymfollow", MS_NOSYMFOLLOW, false),
    ("symfollow", MS_NOSYMFOLLOW, true),
    ("bind", libc_ms::BIND, false),
    ("rbind", libc_ms::BIND | libc_ms::REC, false),
];

/// Options only userspace reads (util-linux `mount`, systemd, NixOS); never sent to the kernel.
const PSEUDO: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "loop",
    "nobootwait",
    "bootwait",
];

/// Pseudo-options that take a value (`comment=...`).
const PSEUDO_WITH_VALUE: &[&str] = &["comment", "helper", "uhelper"];

/// Options this init cannot honour in a single `mount(2)` call.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("remount", "a remount is not a file system to mount"),
    ("move", "moving a mount is not a file system to mount"),
    (
        "shared",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "rshared",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "private",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "rprivate",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "slave",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "rslave",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "unbindable",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "runbindable",
        "propagation flags need a separate mount call; not supported here",
    ),
    (
        "loop=",
        "naming the loop device is not supported; use `loop`",
    ),
    ("offset=", "loop offsets are not supported"),
    ("sizelimit=", "loop size limits are not supported"),
    (
        "encryption=",
        "loop encryption does not exist in Linux any more",
    ),
];

mod libc_ms {
    use nix::libc;
    pub const RDONLY: u64 = libc::MS_RDONLY;
    pub const NOSUID: u64 = libc::MS_NOSUID;
    pub const NODEV: u64 = libc::MS_NODEV;
    pub const NOEXEC: u64 = libc::MS_NOEXEC;
    pub const SYNCHRONOUS: u64 = libc::MS_SYNCHRONOUS;
    pub const DIRSYNC: u64 = libc::MS_DIRSYNC;
    pub const MANDLOCK: u64 = libc::MS_MANDLOCK;
    pub const NOATIME: u64 = libc::MS_NOATIME;
    pub const NODIRATIME: u64 = libc::MS_NODIRATIME;
    pub const RELATIME: u64 = libc::MS_RELATIME;
    pub const STRICTATIME: u64 = libc::MS_STRICTATIME;
    pub const LAZYTIME: u64 = libc::MS_LAZYTIME;
    pub const I_VERSION: u64 = libc::MS_I_VERSION;
    pub const SILENT: u64 = libc::MS_SILENT;
    pub const BIND: u64 = libc::MS_BIND;
    pub const REC: u64 = libc::MS_REC;
}

/// Splits one entry on commas outside double quotes (`context="a,b"` stays whole), as
/// util-linux does, so `"ro,nosuid"` written as one entry still works.
fn split_entry(entry: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in entry.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&entry[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&entry[start..]);
    out
}

/// Interprets NixOS options.
pub fn parse<S: AsRef<str>>(options: &[S]) -> Result<MountOptions, OptionsError> {
    let mut out = MountOptions::default();
    let mut count = 0usize;
    for entry in options {
        let entry = entry.as_ref();
        if entry.len() > MAX_OPTION_LEN {
            return Err(OptionsError::TooLong(entry.len()));
        }
        for opt in split_entry(entry) {
            count += 1;
            if count > MAX_OPTIONS {
                return Err(OptionsError::TooMany(count));
            }
            parse_one(opt, &mut out)?;
        }
    }
    Ok(out)
}

fn parse_one(opt: &str, out: &mut MountOptions) -> Result<(), OptionsError> {
    if opt.is_empty() {
        return Err(OptionsError::Empty);
    }
    let (name, value) = match opt.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (opt, None),
    };
    if name == LOOP_DIRECT_IO_OPTION {
        out.loop_direct_io = Some(match value {
            None | Some("on") | Some("1") | Some("yes") | Some("true") => true,
            Some("off") | Some("0") | Some("no") | Some("false") => false,
            Some(_) => {
                return Err(OptionsError::BadBool {
                    option: opt.to_string(),
                })
            }
        });
        out.ignored.push(opt.to_string());
        return Ok(());
    }
    for (prefix, reason) in UNSUPPORTED {
        let hit = match prefix.strip_suffix('=') {
            Some(key) => name == key && value.is_some(),
            None => opt == *prefix,
        };
        if hit {
            return Err(OptionsError::Unsupported {
                option: opt.to_string(),
                reason,
            });
        }
    }
    if value.is_none() {
        if let Some((_, bits, clear)) = FLAGS.iter().find(|(n, _, _)| *n == name) {
            let bits = MsFlags::from_bits_retain(*bits);
            if *clear {
                out.flags.remove(bits);
            } else {
                out.flags.insert(bits);
            }
            // The atime modes exclude each other; the last one written wins.
            let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
            if !*clear && atime.intersects(bits) {
                out.flags.remove(atime.difference(bits));
            }
            return Ok(());
        }
        if PSEUDO.contains(&name) {
            match name {
                "loop" => out.loop_device = true,
                "nofail" => out.nofail = true,
                "noauto" => out.noauto = true,
                "auto" => out.noauto = false,
                _ => {}
            }
            out.ignored.push(opt.to_string());
            return Ok(());
        }
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("x-") || PSEUDO_WITH_VALUE.contains(&name) {
        out.ignored.push(opt.to_string());
        return Ok(());
    }
    out.data.push(opt.to_string());
    Ok(())
}

/// `MS_RDONLY|MS_NOSUID`, or `0`: flag names for logs and the recorder.
pub struct FlagNames(pub MsFlags);

impl fmt::Display for FlagNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("0");
        }
        let mut first = true;
        for (name, _) in self.0.iter_names() {
            if !first {
                f.write_str("|")?;
            }
            first = false;
            f.write_str(name)?;
        }
        let rest = self.0.bits() & !MsFlags::all().bits();
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            if rest == MS_NOSYMFOLLOW {
                f.write_str("MS_NOSYMFOLLOW")?;
            } else {
                write!(f, "{rest:#x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(opts: &[&str]) -> MountOptions {
        parse(opts).unwrap()
    }

    #[test]
    fn table() {
        let f = MsFlags::empty;
        // (options, flags, data, loop, direct io, nofail, noauto)
        #[allow(clippy::type_complexity)]
        let cases: &[(&[&str], MsFlags, &[&str], bool, Option<bool>, bool, bool)] = &[
            (&[], f(), &[], false, None, false, false),
            (
                &["mode=0755"],
                f(),
                &["mode=0755"],
                false,
                None,
                false,
                false,
            ),
            (
                &["mode=0755", "size=50%"],
                f(),
                &["mode=0755", "size=50%"],
                false,
                None,
                false,
                false,
            ),
            (
                &["loop", "threads=multi"],
                f(),
                &["threads=multi"],
                true,
                None,
                false,
                false,
            ),
            (&["defaults"], f(), &[], false, None, false, false),
            (&["ro"], MsFlags::MS_RDONLY, &[], false, None, false, false),
            (&["ro", "rw"], f(), &[], false, None, false, false),
            (
                &["ro,nosuid,nodev"],
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                &[],
                false,
                None,
                false,
                false,
            ),
            (&["noexec", "exec"], f(), &[], false, None, false, false),
            (
                &["relatime", "noatime"],
                MsFlags::MS_NOATIME,
                &[],
                false,
                None,
                false,
                false,
            ),
            (
                &["noatime", "strictatime"],
                MsFlags::MS_STRICTATIME,
                &[],
                false,
                None,
                false,
                false,
            ),
            (
                &["nofail", "x-systemd.device-timeout=5s"],
                f(),
                &[],
                false,
                None,
                true,
                false,
            ),
            (&["noauto"], f(), &[], false, None, false, true),
            (&["noauto", "auto"], f(), &[], false, None, false, false),
            (
                &[
                    "_netdev",
                    "user",
                    "nouser",
                    "users",
                    "owner",
                    "group",
                    "comment=x",
                ],
                f(),
                &[],
                false,
                None,
                false,
                false,
            ),
            (&["X-mount.mkdir"], f(), &[], false, None, false, false),
            (
                &["x-netboot.loop-direct-io"],
                f(),
                &[],
                false,
                Some(true),
                false,
                false,
            ),
            (
                &["x-netboot.loop-direct-io=on"],
                f(),
                &[],
                false,
                Some(true),
                false,
                false,
            ),
            (
                &["x-netboot.loop-direct-io=off"],
                f(),
                &[],
                false,
                Some(false),
                false,
                false,
            ),
            (
                &["context=\"system_u:object_r:tmp_t:s0,c1\""],
                f(),
                &["context=\"system_u:object_r:tmp_t:s0,c1\""],
                false,
                None,
                false,
                false,
            ),
            (&["ro=1"], f(), &["ro=1"], false, None, false, false),
            (
                &["rbind"],
                MsFlags::MS_BIND | MsFlags::MS_REC,
                &[],
                false,
                None,
                false,
                false,
            ),
            (
                &["lowerdir=/a:/b", "upperdir=/u"],
                f(),
                &["lowerdir=/a:/b", "upperdir=/u"],
                false,
                None,
                false,
                false,
            ),
        ];
        for (opts, flags, data, lp, dio, nofail, noauto) in cases {
            let got = p(opts);
            assert_eq!(got.flags, *flags, "{opts:?}");
            assert_eq!(got.data, data.to_vec(), "{opts:?}");
            assert_eq!(got.loop_device, *lp, "{opts:?}");
            assert_eq!(got.loop_direct_io, *dio, "{opts:?}");
            assert_eq!(got.nofail, *nofail, "{opts:?}");
            assert_eq!(got.noauto, *noauto, "{opts:?}");
        }
    }

    #[test]
    fn pseudo_options_are_remembered_not_passed() {
        let got = p(&["loop", "nofail", "x-initrd.mount", "mode=0755"]);
        assert_eq!(got.ignored, vec!["loop", "nofail", "x-initrd.mount"]);
        assert_eq!(got.data_string(), "mode=0755");
    }

    #[test]
    fn errors() {
        let cases: &[(&[&str], &str)] = &[
            (&[""], "empty option"),
            (&["ro,"], "empty option"),
            (
                &["remount"],
                "`remount`: a remount is not a file system to mount",
            ),
            (
                &["shared"],
                "`shared`: propagation flags need a separate mount call",
            ),
            (
                &["loop=/dev/loop3"],
                "`loop=/dev/loop3`: naming the loop device is not supported",
            ),
            (
                &["offset=4096"],
                "`offset=4096`: loop offsets are not supported",
            ),
            (
                &["x-netboot.loop-direct-io=maybe"],
                "`x-netboot.loop-direct-io=maybe`: expected on or off",
            ),
        ];
        for (opts, want) in cases {
            let err = parse(opts).unwrap_err().to_string();
            assert!(err.starts_with(want), "{opts:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_OPTIONS).map(|i| format!("o{i}")).collect();
        assert!(matches!(parse(&many), Err(OptionsError::TooMany(_))));
        assert!(matches!(
            parse(&["a".repeat(MAX_OPTION_LEN + 1)]),
            Err(OptionsError::TooLong(_))
        ));
    }

    #[test]
    fn flag_names() {
        assert_eq!(FlagNames(MsFlags::empty()).to_string(), "0");
        assert_eq!(
            FlagNames(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID).to_string(),
            "MS_RDONLY|MS_NOSUID"
        );
        assert_eq!(
            FlagNames(MsFlags::from_bits_retain(MS_NOSYMFOLLOW)).to_string(),
            "MS_NOSYMFOLLOW"
        );
    }

    #[test]
    fn no_panics_on_odd_input() {
        for s in [
            "=", "==", "\"", "\",", ",,,", "é,ü=", "x-", "loop=", "\u{0}",
        ] {
            let _ = parse(&[s]);
        }
    }
}
