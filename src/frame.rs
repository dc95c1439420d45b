//! The PID-1 frame: the API file systems every later phase needs, and a reaper for orphans.

use crate::sys::{Fake, Real};
use nix::errno::Errno;
use nix::mount::MsFlags;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The syscalls of the frame.
pub trait FrameOps {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), Errno>;
    /// Writes a small value to a file such as a sysctl under /proc/sys.
    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Errno>;
    /// The running kernel's release (`uname -r`).
    fn kernel_release(&self) -> String;
}

/// One API file system of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// What a stage 1 needs before anything else, in mount order.
pub fn api_mounts() -> Vec<ApiMount> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    vec![
        ApiMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: None,
        },
        ApiMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: None,
        },
        ApiMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        ApiMount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("gid=3,mode=0620,ptmxmode=0666"),
        },
        ApiMount {
            source: "tmpfs",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nosuid_nodev,
            data: Some("mode=1777"),
        },
        ApiMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: nosuid_nodev,
            data: Some("mode=0755"),
        },
    ]
}

/// The mount points listed in a mountinfo text (field 5, octal escapes undone).
pub fn mount_points(mountinfo: &str) -> HashSet<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && octal.is_some_and(|d| d.iter().all(|b| (b'0'..=b'7').contains(b))) {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts the API file systems under `root` (`/` at boot) that are not mounted yet.
/// Returns the ones it mounted.
pub fn mount_api_filesystems<S: FrameOps>(sys: &S, root: &Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let mut mounted = Vec::new();
    let mut present = HashSet::new();
    for m in api_mounts() {
        let target = root.join(m.target.trim_start_matches('/'));
        if m.target != "/proc" && present.is_empty() {
            // /proc is up now: learn what the kernel (or a previous stage) mounted already.
            if let Ok(text) = std::fs::read_to_string(root.join("proc/self/mountinfo")) {
                present = mount_points(&text);
            }
        }
        let already = if m.target == "/proc" {
            root.join("proc/self").exists()
        } else {
            present.contains(Path::new(m.target))
        };
        if already {
            continue;
        }
        match sys.mkdir(&target, 0o755) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", target.display()));
            }
        }
        sys.mount(m.source, &target, m.fstype, m.flags, m.data)
            .with_context(|| format!("mounting {} on {}", m.fstype, m.target))?;
        mounted.push(m.target.to_string());
    }
    Ok(mounted)
}

/// The kernel rate-limits /dev/kmsg writers to ten lines per five seconds by default, which
/// would drop most of a boot's log. Turn that off for stage 1 and return the old setting.
pub fn unlimit_kmsg<S: FrameOps>(sys: &S, root: &Path) -> Option<String> {
    let knob = root.join("proc/sys/kernel/printk_devkmsg");
    let old = std::fs::read_to_string(&knob).ok()?.trim().to_string();
    if old == "ratelimit" {
        // The sysctl rejects a value without its trailing newline.
        sys.write_file(&knob, "on\n").ok()?;
    }
    Some(old)
}

impl FrameOps for Real {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        nix::unistd::mkdir(path, nix::sys::stat::Mode::from_bits_truncate(mode))
    }

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Errno> {
        std::fs::write(path, contents)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)))
    }

    fn kernel_release(&self) -> String {
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl FrameOps for Fake {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.record(format!(
            "mount {source} {} {fstype} flags={:#x} data={}",
            target.display(),
            flags.bits(),
            data.unwrap_or("")
        ))
    }

    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        self.record(format!("mkdir {} {mode:o}", path.display()))
    }

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Errno> {
        self.record(format!("write {} {contents}", path.display()))
    }

    /// The fake kernel's release is whatever the test wrote with [`Fake::set_release`].
    fn kernel_release(&self) -> String {
        self.release()
    }
}

/// Reaps orphans re-parented to PID 1 while stage 1 runs, without stealing the exit status
/// of the children the init waits for itself (those spawned through [`spawn_owned`]).
pub mod reaper {
    use super::*;
    use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    use std::process::{Child, Command};

    static OWNED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

    /// Spawns a child the caller will wait for; the reaper leaves it alone.
    pub fn spawn_owned(command: &mut Command) -> std::io::Result<Child> {
        let mut owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
        let child = command.spawn()?;
        owned.push(child.id() as i32);
        Ok(child)
    }

    /// Marks an owned child as waited for.
    pub fn release(pid: u32) {
        let mut owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
        owned.retain(|p| *p != pid as i32);
    }

    /// Starts the reaper thread.
    pub fn start() {
        let _ = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(reap_forever);
    }

    fn reap_forever() {
        loop {
            // Peek without reaping, so an owned child's status stays for its owner.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Ok(status) => {
                    let Some(pid) = status_pid(&status) else {
                        continue;
                    };
                    let owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
                    if owned.contains(&pid.as_raw()) {
                        drop(owned);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    } else {
                        let _ = waitpid(pid, None);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }

    fn status_pid(status: &WaitStatus) -> Option<Pid> {
        status.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_everything_on_an_empty_root_in_order() {
        let root = tempfile::tempdir().unwrap();
        let fake = Fake::new();
        let mounted = mount_api_filesystems(&fake, root.path()).unwrap();
        assert_eq!(
            mounted,
            vec!["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run"]
        );
        let mounts = fake.calls_starting_with("mount ");
        let r = root.path().display();
        assert_eq!(
            mounts[0],
            format!("mount proc {r}/proc proc flags=0xe data=")
        );
        assert_eq!(
            mounts[2],
            format!("mount devtmpfs {r}/dev devtmpfs flags=0x2 data=mode=0755")
        );
        assert_eq!(
            mounts[5],
            format!("mount tmpfs {r}/run tmpfs flags=0x6 data=mode=0755")
        );
    }

    #[test]
    fn skips_what_is_already_mounted() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/self")).unwrap();
        std::fs::write(
            root.path().join("proc/self/mountinfo"),
            "22 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n\
             23 22 0:6 / /dev/pts rw - devpts devpts rw\n",
        )
        .unwrap();
        let fake = Fake::new();
        let mounted = mount_api_filesystems(&fake, root.path()).unwrap();
        assert_eq!(mounted, vec!["/sys", "/dev/shm", "/run"]);
    }

    #[test]
    fn a_failed_mount_names_the_file_system() {
        let root = tempfile::tempdir().unwrap();
        let fake = Fake::new();
        fake.fail_on("mount sysfs", Errno::ENODEV);
        let err = mount_api_filesystems(&fake, root.path()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "mounting sysfs on /sys: ENODEV: No such device"
        );
    }

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let points = mount_points("36 35 98:0 / /mnt/a\\040b rw - ext3 /dev/root rw\n");
        assert!(points.contains(Path::new("/mnt/a b")));
    }

    #[test]
    fn kmsg_rate_limit_is_lifted_only_when_set() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel")).unwrap();
        let knob = root.path().join("proc/sys/kernel/printk_devkmsg");
        std::fs::write(&knob, "ratelimit\n").unwrap();
        let fake = Fake::new();
        assert_eq!(
            unlimit_kmsg(&fake, root.path()).as_deref(),
            Some("ratelimit")
        );
        assert_eq!(fake.calls(), vec![format!("write {} on\n", knob.display())]);
        std::fs::write(&knob, "on\n").unwrap();
        let fake = Fake::new();
        assert_eq!(unlimit_kmsg(&fake, root.path()).as_deref(), Some("on"));
        assert!(fake.calls().is_empty());
    }
}
