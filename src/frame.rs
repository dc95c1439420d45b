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

/// The mount points `/proc/self/mountinfo` under `root` lists; none when it cannot be read.
fn mounted_points(root: &Path) -> HashSet<PathBuf> {
    let path = root.join("proc/self/mountinfo");
    match crate::mounts::mountinfo::read(&path) {
        Ok(table) => table
            .mounts
            .into_iter()
            .map(|m| PathBuf::from(m.mount_point))
            .collect(),
        Err(e) => {
            log::warn!(
                "cannot read {}: {e}; mounting every API file system",
                path.display()
            );
            HashSet::new()
        }
    }
}

/// Mounts the API file systems under `root` (`/` at boot) that are not mounted yet.
/// Returns the ones it mounted.
pub fn mount_api_filesystems<S: FrameOps>(sys: &S, root: &Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let mut mounted = Vec::new();
    let mut present: Option<HashSet<PathBuf>> = None;
    for m in api_mounts() {
        let target = root.join(m.target.trim_start_matches('/'));
        let already = if m.target == "/proc" {
            root.join("proc/self").exists()
        } else {
            // /proc is up now: learn once what the kernel (or a previous stage) mounted.
            present
                .get_or_insert_with(|| mounted_points(root))
                .contains(Path::new(m.target))
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

/// A sysctl value is a word; anything longer is not the knob we know.
const KNOB_MAX_BYTES: u64 = 64;

fn kmsg_knob(root: &Path) -> PathBuf {
    root.join("proc/sys/kernel/printk_devkmsg")
}

/// The kernel rate-limits /dev/kmsg writers to ten lines per five seconds by default, which
/// would drop most of a boot's log. Turn that off for stage 1 and return the old setting.
pub fn unlimit_kmsg<S: FrameOps>(sys: &S, root: &Path) -> Option<String> {
    let knob = kmsg_knob(root);
    let old = crate::sys::read_text_limited(&knob, KNOB_MAX_BYTES)
        .ok()?
        .trim()
        .to_string();
    if old == "ratelimit" {
        // The sysctl rejects a value without its trailing newline.
        sys.write_file(&knob, "on\n").ok()?;
    }
    Some(old)
}

/// Gives stage 2 the rate limit [`unlimit_kmsg`] lifted (`old` is what it returned).
pub fn restore_kmsg_limit<S: FrameOps>(sys: &S, root: &Path, old: Option<&str>) {
    if old == Some("ratelimit") {
        let knob = kmsg_knob(root);
        if let Err(e) = sys.write_file(&knob, "ratelimit\n") {
            log::warn!("could not restore {} to ratelimit: {e}", knob.display());
        }
    }
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
        std::fs::write(path, contents).map_err(|e| crate::sys::io_errno(&e))
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
    use crate::sys::lock;
    use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
    use std::process::{Child, Command};

    /// The children spawned through [`spawn_owned`] and not yet [`release`]d.
    static OWNED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    /// Spawns a child the caller will wait for; the reaper leaves it alone. The lock is held
    /// across the spawn so the reaper cannot see the child exit before it is listed.
    pub fn spawn_owned(command: &mut Command) -> std::io::Result<Child> {
        let mut owned = lock(&OWNED);
        let child = command.spawn()?;
        owned.push(child.id());
        Ok(child)
    }

    /// Marks an owned child as waited for.
    pub fn release(pid: u32) {
        lock(&OWNED).retain(|p| *p != pid);
    }

    /// Starts the reaper thread.
    pub fn start() {
        if let Err(e) = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(reap_forever)
        {
            log::warn!("cannot start the reaper thread ({e}); orphans stay zombies until stage 2");
        }
    }

    fn reap_forever() {
        loop {
            // Peek without reaping, so an owned child's status stays for its owner.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Ok(status) => {
                    let Some(pid) = status.pid() else {
                        continue;
                    };
                    // While the init waits for a child of its own, orphans wait too: reaping
                    // only when nothing is owned leaves no window in which an owner's status
                    // could be taken. Owned children are short-lived (nix-store, a shell).
                    if lock(&OWNED).is_empty() {
                        let _ = waitpid(pid, None);
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                Err(Errno::EINTR) => {}
                // ECHILD: no children right now.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
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
    fn an_oversized_mountinfo_counts_as_nothing_mounted() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/self")).unwrap();
        let line = "22 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n";
        let lines = crate::mounts::mountinfo::MAX_FILE_BYTES as usize / line.len() + 1;
        std::fs::write(root.path().join("proc/self/mountinfo"), line.repeat(lines)).unwrap();
        let fake = Fake::new();
        let mounted = mount_api_filesystems(&fake, root.path()).unwrap();
        assert_eq!(
            mounted,
            vec!["/sys", "/dev", "/dev/pts", "/dev/shm", "/run"]
        );
    }

    /// Set in the copy of the test binary that [`the_reaper_never_takes_an_owned_childs_status`]
    /// runs: the reaper waits for any child, so it must not run inside the shared test process.
    const REAPER_CHILD_ENV: &str = "NETBOOT_INIT_REAPER_TEST_CHILD";

    #[test]
    fn the_reaper_never_takes_an_owned_childs_status() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "frame::tests::reaper_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(REAPER_CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// As a subreaper with the reaper running: owned children keep their exit status for
    /// their owner while orphans exiting around them are reaped.
    #[test]
    fn reaper_child() {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        use std::process::Command;
        if std::env::var_os(REAPER_CHILD_ENV).is_none() {
            return;
        }
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        reaper::start();
        for round in 0..20 {
            // An orphan (the inner shell, re-parented to us) exits while the owned child runs.
            let mut orphan_maker = Command::new("sh");
            orphan_maker.args(["-c", "sh -c 'sleep 0.01; exit 3' & exit 0"]);
            let mut parent = reaper::spawn_owned(&mut orphan_maker).unwrap();
            let mut command = Command::new("sh");
            command.args(["-c", &format!("sleep 0.02; exit {}", round % 7 + 1)]);
            let mut child = reaper::spawn_owned(&mut command).unwrap();
            let status = child.wait();
            reaper::release(child.id());
            assert_eq!(status.unwrap().code(), Some(round % 7 + 1), "round {round}");
            let status = parent.wait();
            reaper::release(parent.id());
            assert_eq!(status.unwrap().code(), Some(0), "round {round}");
        }
        // Every orphan was reaped: no exited child is left.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => {}
            other => panic!("a child was left unreaped: {other:?}"),
        }
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
        restore_kmsg_limit(&fake, root.path(), Some("on"));
        restore_kmsg_limit(&fake, root.path(), None);
        assert!(fake.calls().is_empty());
        restore_kmsg_limit(&fake, root.path(), Some("ratelimit"));
        assert_eq!(
            fake.calls(),
            vec![format!("write {} ratelimit\n", knob.display())]
        );
    }
}
