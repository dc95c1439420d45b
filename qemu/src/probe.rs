//! The pure half of the stage-2 probe: parsing what the probe reads from the running system and
//! judging it. The probe binary (`src/bin/stage2-probe.rs`) does the I/O and prints one line per
//! check: `probe check NAME: ok` or `probe check NAME: FAILED (why)`.

use serde::{Deserialize, Serialize};

/// Printed by the probe when every check passed; the harness waits for it.
pub const ALL_PASSED: &str = "probe: all checks passed";
/// Printed by the probe when at least one check failed.
pub const SOME_FAILED: &str = "probe: checks failed";
/// Logged to /dev/kmsg first thing, so stage-1 time can be measured from kernel timestamps.
pub const STARTED: &str = "stage2-probe: started";
/// Kernel parameter the kexec tree's command line carries, so the second boot knows how it began.
pub const VIA_KEXEC_PARAM: &str = "probe.via=kexec";

/// `probe.json` in the system toplevel (the directory of the probe's `argv[0]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeConfig {
    /// The image's own `nix-store` binary (a store path).
    pub nix_store: String,
    /// A static busybox (a store path) that runs the kexec-boot script.
    #[serde(default)]
    pub busybox: Option<String>,
    /// The `bin` directory of the packaged kexec-tools.
    #[serde(default)]
    pub kexec_bin: Option<String>,
}

/// What the probe takes from `/proc/cmdline`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeCmdline {
    /// `probe.modules=a,b`: modules expected in /proc/modules.
    pub modules: Vec<String>,
    /// `probe.kexec=DEVICE`: after the checks, mount DEVICE (a squashfs with the kexec tree) and
    /// run its `kexec-boot`.
    pub kexec_device: Option<String>,
    /// `probe.via=kexec` present.
    pub via_kexec: bool,
    /// Words after `--`: the arguments the kernel hands to init.
    pub init_args: Vec<String>,
}

impl ProbeCmdline {
    pub fn parse(text: &str) -> ProbeCmdline {
        let mut out = ProbeCmdline::default();
        let mut words = text.split_whitespace();
        for w in words.by_ref() {
            if w == "--" {
                break;
            }
            if let Some(v) = w.strip_prefix("probe.modules=") {
                out.modules = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            } else if let Some(v) = w.strip_prefix("probe.kexec=") {
                out.kexec_device = Some(v.to_string());
            } else if w == VIA_KEXEC_PARAM {
                out.via_kexec = true;
            }
        }
        out.init_args = words.map(str::to_string).collect();
        out
    }
}

/// One line of /proc/self/mountinfo, the fields the probe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

/// Undoes the octal escapes (`\040`) the kernel uses in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 3 {
                return None;
            }
            Some(MountInfo {
                mount_point: unescape(l[4]),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
                super_options: r[2].split(',').map(unescape).collect(),
            })
        })
        .collect()
}

/// The mount visible at `point` (the last one mounted there wins).
pub fn mount_at<'a>(mounts: &'a [MountInfo], point: &str) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == point)
}

/// Checks the netboot mount layout; `Err` says what is wrong.
pub fn check_mounts(mounts: &[MountInfo]) -> Result<String, String> {
    let want = [
        ("/", "tmpfs"),
        ("/nix/.ro-store", "squashfs"),
        ("/nix/.rw-store", "tmpfs"),
        ("/nix/store", "overlay"),
    ];
    for (point, fs) in want {
        match mount_at(mounts, point) {
            None => return Err(format!("nothing mounted on {point}")),
            Some(m) if m.fs_type != fs => {
                return Err(format!("{point} is {} (want {fs})", m.fs_type))
            }
            Some(_) => {}
        }
    }
    let ro = mount_at(mounts, "/nix/.ro-store")
        .map(|m| m.source.clone())
        .unwrap_or_default();
    if !ro.starts_with("/dev/loop") {
        return Err(format!(
            "/nix/.ro-store source is {ro:?} (want a /dev/loopN)"
        ));
    }
    let overlay = mount_at(mounts, "/nix/store").ok_or("no overlay")?;
    let opt = |key: &str| {
        overlay
            .super_options
            .iter()
            .find_map(|o| o.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    // The kernel shows the paths as passed at mount time, i.e. possibly under the stage-1 target root.
    for (key, want) in [
        ("lowerdir", "/nix/.ro-store"),
        ("upperdir", "/nix/.rw-store/store"),
        ("workdir", "/nix/.rw-store/work"),
    ] {
        match opt(key) {
            Some(v)
                if v == want
                    || (v.ends_with(want) && v.len() > want.len() && v.starts_with('/')) => {}
            Some(v) => return Err(format!("overlay {key}={v} (want {want})")),
            None => return Err(format!("overlay has no {key} option")),
        }
    }
    Ok(format!(
        "/ tmpfs, /nix/.ro-store squashfs on {ro}, /nix/.rw-store tmpfs, /nix/store overlay lowerdir={}",
        opt("lowerdir").unwrap_or_default()
    ))
}

/// Names in /proc/modules.
pub fn parse_proc_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(' ').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Environment variables a clean stage-2 environment may hold.
pub const ALLOWED_ENV: &[&str] = &["HOME", "TERM", "PATH"];

/// Checks the environment is clean: only [`ALLOWED_ENV`] keys.
pub fn check_env(vars: &[(String, String)]) -> Result<String, String> {
    let extra: Vec<String> = vars
        .iter()
        .filter(|(k, _)| !ALLOWED_ENV.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if extra.is_empty() {
        let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        Ok(format!("{} variables: {}", vars.len(), keys.join(" ")))
    } else {
        Err(format!("unexpected variables: {}", extra.join(" ")))
    }
}

/// Checks the timeline record's shape.
pub fn check_timeline(text: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("version").and_then(|x| x.as_u64()) != Some(1) {
        return Err("version is not 1".into());
    }
    let phases = v
        .get("phases")
        .and_then(|p| p.as_array())
        .ok_or("no phases array")?;
    if phases.is_empty() {
        return Err("phases is empty".into());
    }
    let names: Vec<&str> = phases
        .iter()
        .filter_map(|p| p.get("name").and_then(|n| n.as_str()))
        .collect();
    Ok(format!("{} phases: {}", phases.len(), names.join(",")))
}

/// One result line as the probe prints it.
pub fn check_line(name: &str, result: &Result<String, String>) -> String {
    match result {
        Ok(detail) if detail.is_empty() => format!("probe check {name}: ok"),
        Ok(detail) => format!("probe check {name}: ok ({detail})"),
        Err(why) => format!("probe check {name}: FAILED ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - tmpfs tmpfs rw,mode=755
23 22 7:0 / /nix/.ro-store ro,relatime - squashfs /dev/loop0 ro,errors=continue
24 22 0:22 / /nix/.rw-store rw,relatime - tmpfs tmpfs rw,mode=755
25 22 0:23 / /nix/store rw,relatime - overlay overlay rw,lowerdir=/mnt-root/nix/.ro-store,upperdir=/mnt-root/nix/.rw-store/store,workdir=/mnt-root/nix/.rw-store/work
26 22 0:5 / /dev rw - devtmpfs devtmpfs rw
";

    #[test]
    fn mounts_ok() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        check_mounts(&m).unwrap();
    }

    #[test]
    fn mounts_wrong() {
        let bad = MOUNTINFO.replace("upperdir=/mnt-root/nix/.rw-store/store", "upperdir=/tmp/x");
        assert!(check_mounts(&parse_mountinfo(&bad))
            .unwrap_err()
            .contains("upperdir"));
        let bad = MOUNTINFO.replace("- squashfs", "- ext4");
        assert!(check_mounts(&parse_mountinfo(&bad))
            .unwrap_err()
            .contains("ext4"));
        let bad: String = MOUNTINFO
            .lines()
            .filter(|l| !l.contains("overlay"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(check_mounts(&parse_mountinfo(&bad))
            .unwrap_err()
            .contains("/nix/store"));
    }

    #[test]
    fn mountinfo_escapes_and_garbage() {
        let m = parse_mountinfo("1 2 3 / /a\\040b rw - tmpfs tmpfs rw\ngarbage\n\\\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, "/a b");
    }

    #[test]
    fn cmdline() {
        let c = ProbeCmdline::parse(
            "console=ttyS0 probe.modules=loop,squashfs probe.kexec=/dev/vda probe.via=kexec -- a b",
        );
        assert_eq!(c.modules, ["loop", "squashfs"]);
        assert_eq!(c.kexec_device.as_deref(), Some("/dev/vda"));
        assert!(c.via_kexec);
        assert_eq!(c.init_args, ["a", "b"]);
        assert_eq!(ProbeCmdline::parse(""), ProbeCmdline::default());
    }

    #[test]
    fn env_and_timeline() {
        assert!(check_env(&[("HOME".into(), "/".into())]).is_ok());
        assert!(check_env(&[("probe_env_leak".into(), "1".into())]).is_err());
        assert!(check_timeline(r#"{"version":1,"phases":[{"name":"frame"}]}"#).is_ok());
        assert!(check_timeline(r#"{"version":1,"phases":[]}"#).is_err());
        assert!(check_timeline("nope").is_err());
    }
}
