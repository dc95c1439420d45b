//! The hand-off: move the API file systems into the new root, free the initramfs, make the
//! new root `/` and exec the stage-2 init with a clean environment.

use crate::sys::{Fake, Real};
use anyhow::Context;
use nix::errno::Errno;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The API file systems that move into the new root.
pub const MOVED_MOUNTS: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

/// The syscalls of the hand-off.
pub trait SwitchRootOps {
    fn mkdir(&self, path: &Path) -> Result<(), Errno>;
    fn move_mount(&self, from: &Path, to: &Path) -> Result<(), Errno>;
    /// Deletes the initramfs under `root` without leaving its file system; returns the number
    /// of entries removed.
    fn remove_initramfs(&self, root: &Path, keep: &Path) -> Result<u64, Errno>;
    fn chdir(&self, path: &Path) -> Result<(), Errno>;
    /// `mount --move . /` then `chroot .`, from inside the new root.
    fn make_cwd_root(&self) -> Result<(), Errno>;
    fn close_stray_fds(&self) -> Result<(), Errno>;
    /// Replaces the process: with the kernel it returns only an error; `Ok` is the fake's.
    fn exec(&self, path: &Path, argv: &[String], env: &[String]) -> Result<(), Errno>;
}

/// Stage 2 with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage2 {
    pub init: String,
    /// The arguments the kernel passed to /init, handed on unchanged.
    pub args: Vec<String>,
}

/// Checks the stage-2 init exists in the new root while a failure can still reach a shell in
/// the initramfs.
pub fn check_stage2(target_root: &Path, init: &str) -> anyhow::Result<()> {
    let inside = target_root.join(init.trim_start_matches('/'));
    // A symlink in the new root is resolved as stage 2 will see it, not as the initramfs does.
    let resolved = resolve_in_root(target_root, Path::new(init)).with_context(|| {
        format!(
            "stage-2 init {init} not found in the new root ({})",
            inside.display()
        )
    })?;
    let meta = std::fs::metadata(&resolved).with_context(|| {
        format!(
            "stage-2 init {init} not found in the new root ({})",
            inside.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        anyhow::bail!("stage-2 init {init} is not an executable file");
    }
    Ok(())
}

/// Resolves `path` as if `root` were `/`, following symlinks (absolute ones relative to root).
fn resolve_in_root(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let mut current = root.to_path_buf();
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if current != root {
                current.pop();
            }
            continue;
        }
        let next = current.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(std::io::Error::from_raw_os_error(Errno::ELOOP as i32));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    current = root.to_path_buf();
                }
                for c in target.components().rev() {
                    match c {
                        std::path::Component::Normal(n) => pending.push(n.to_os_string()),
                        std::path::Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => current = next,
            Err(e) => return Err(e),
        }
    }
    Ok(current)
}

/// Performs the hand-off. With the kernel it returns only when it failed.
pub fn switch_root<S: SwitchRootOps>(
    sys: &S,
    initrd_root: &Path,
    target_root: &Path,
    stage2: &Stage2,
) -> anyhow::Result<()> {
    prepare(sys, initrd_root, target_root)?;
    let mut argv = vec![stage2.init.clone()];
    argv.extend(stage2.args.iter().cloned());
    // stage-1-init.sh execs stage 2 through `env -i`: nothing of stage 1's environment.
    sys.exec(Path::new(&stage2.init), &argv, &[])
        .with_context(|| format!("exec of stage-2 init {} failed", stage2.init))
}

fn prepare<S: SwitchRootOps>(
    sys: &S,
    initrd_root: &Path,
    target_root: &Path,
) -> anyhow::Result<()> {
    for api in MOVED_MOUNTS {
        let from = initrd_root.join(api.trim_start_matches('/'));
        let to = target_root.join(api.trim_start_matches('/'));
        match sys.mkdir(&to) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", to.display())),
        }
        sys.move_mount(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    sys.chdir(target_root)
        .with_context(|| format!("changing directory to {}", target_root.display()))?;
    let removed = sys
        .remove_initramfs(initrd_root, target_root)
        .context("deleting the initramfs contents")?;
    log::info!("freed the initramfs ({removed} entries)");
    sys.make_cwd_root().context("making the new root /")?;
    sys.chdir(Path::new("/"))
        .context("changing directory to /")?;
    // The kmsg descriptor is one of the stray ones; the console stays on fds 1 and 2.
    crate::logging::use_console();
    sys.close_stray_fds().context("closing stray descriptors")?;
    Ok(())
}

impl SwitchRootOps for Real {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::mkdir(path, nix::sys::stat::Mode::from_bits_truncate(0o755))
    }

    fn move_mount(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        nix::mount::mount(
            Some(from),
            to,
            None::<&str>,
            nix::mount::MsFlags::MS_MOVE,
            None::<&str>,
        )
    }

    fn remove_initramfs(&self, root: &Path, keep: &Path) -> Result<u64, Errno> {
        initramfs::remove(root, keep)
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn make_cwd_root(&self) -> Result<(), Errno> {
        nix::mount::mount(
            Some("."),
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_MOVE,
            None::<&str>,
        )?;
        nix::unistd::chroot(".")
    }

    fn close_stray_fds(&self) -> Result<(), Errno> {
        // SAFETY: close_range takes plain integers and only closes descriptors.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        if rc == 0 {
            return Ok(());
        }
        // Kernels before 5.9: close what /proc/self/fd lists (it moved with /proc).
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map_err(|e| crate::sys::io_errno(&e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            let _ = nix::unistd::close(fd);
        }
        Ok(())
    }

    fn exec(&self, path: &Path, argv: &[String], env: &[String]) -> Result<(), Errno> {
        let to_c = |s: &str| CString::new(s).map_err(|_| Errno::EINVAL);
        let prepared = (|| -> Result<(CString, Vec<CString>, Vec<CString>), Errno> {
            let path = to_c(&path.to_string_lossy())?;
            let argv = argv
                .iter()
                .map(|a| to_c(a))
                .collect::<Result<Vec<_>, _>>()?;
            let env = env.iter().map(|e| to_c(e)).collect::<Result<Vec<_>, _>>()?;
            Ok((path, argv, env))
        })();
        let (path, argv, env) = prepared?;
        match nix::unistd::execve(&path, &argv, &env) {
            Err(e) => Err(e),
            Ok(never) => match never {},
        }
    }
}

impl SwitchRootOps for Fake {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        self.record(format!("mkdir {}", path.display()))
    }
    fn move_mount(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        self.record(format!("move-mount {} {}", from.display(), to.display()))
    }
    fn remove_initramfs(&self, root: &Path, keep: &Path) -> Result<u64, Errno> {
        self.record(format!(
            "remove-initramfs {} keep {}",
            root.display(),
            keep.display()
        ))?;
        Ok(0)
    }
    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        self.record(format!("chdir {}", path.display()))
    }
    fn make_cwd_root(&self) -> Result<(), Errno> {
        self.record("move-mount . / && chroot .")
    }
    fn close_stray_fds(&self) -> Result<(), Errno> {
        self.record("close-range 3")
    }
    fn exec(&self, path: &Path, argv: &[String], env: &[String]) -> Result<(), Errno> {
        self.record(format!("exec {} argv={argv:?} env={env:?}", path.display()))
    }
}

/// Deleting the initramfs, as util-linux switch_root does: recursively, never crossing into
/// another file system (the new root, moved mounts), and only if `/` really is a ramfs/tmpfs.
pub mod initramfs {
    use super::*;
    use nix::sys::stat::{lstat, stat};

    /// Removes everything under `root` that is on `root`'s file system, except `keep`.
    pub fn remove(root: &Path, keep: &Path) -> Result<u64, Errno> {
        let fs = nix::sys::statfs::statfs(root)?;
        let kind = fs.filesystem_type();
        // RAMFS_MAGIC from linux/magic.h; nix does not name it.
        let ramfs = nix::sys::statfs::FsType(0x8584_58f6);
        if kind != ramfs && kind != nix::sys::statfs::TMPFS_MAGIC {
            // Not an initramfs: deleting it would destroy a real file system.
            return Err(Errno::EXDEV);
        }
        let device = stat(root)?.st_dev;
        remove_under(root, device, keep)
    }

    /// The same-device walk, usable on any directory (tests run it on a tmpfs).
    pub fn remove_under(dir: &Path, device: u64, keep: &Path) -> Result<u64, Errno> {
        let mut removed = 0;
        let entries = std::fs::read_dir(dir).map_err(|e| crate::sys::io_errno(&e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path == keep {
                continue;
            }
            let Ok(meta) = lstat(&path) else { continue };
            if meta.st_dev != device {
                continue;
            }
            let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir {
                removed += remove_under(&path, device, keep)?;
                // A directory holding a mount point stays; that is expected.
                if std::fs::remove_dir(&path).is_ok() {
                    removed += 1;
                }
            } else if std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage2() -> Stage2 {
        Stage2 {
            init: "/nix/store/abc-nixos-system/init".into(),
            args: vec!["probe-arg".into()],
        }
    }

    #[test]
    fn hand_off_sequence() {
        let fake = Fake::new();
        switch_root(&fake, Path::new("/"), Path::new("/mnt-root"), &stage2()).unwrap();
        assert_eq!(
            fake.calls(),
            vec![
                "mkdir /mnt-root/proc",
                "move-mount /proc /mnt-root/proc",
                "mkdir /mnt-root/sys",
                "move-mount /sys /mnt-root/sys",
                "mkdir /mnt-root/dev",
                "move-mount /dev /mnt-root/dev",
                "mkdir /mnt-root/run",
                "move-mount /run /mnt-root/run",
                "chdir /mnt-root",
                "remove-initramfs / keep /mnt-root",
                "move-mount . / && chroot .",
                "chdir /",
                "close-range 3",
                "exec /nix/store/abc-nixos-system/init argv=[\"/nix/store/abc-nixos-system/init\", \"probe-arg\"] env=[]",
            ]
        );
    }

    #[test]
    fn each_failure_names_its_step() {
        let table = [
            ("move-mount /sys", "moving /sys to /mnt-root/sys: EINVAL: Invalid argument"),
            ("remove-initramfs", "deleting the initramfs contents: EXDEV: Cross-device link"),
            ("move-mount . /", "making the new root /: EINVAL: Invalid argument"),
            (
                "exec",
                "exec of stage-2 init /nix/store/abc-nixos-system/init failed: ENOENT: No such file or directory",
            ),
        ];
        for (prefix, message) in table {
            let fake = Fake::new();
            let errno = match prefix {
                "remove-initramfs" => Errno::EXDEV,
                "exec" => Errno::ENOENT,
                _ => Errno::EINVAL,
            };
            fake.fail_on(prefix, errno);
            let err =
                switch_root(&fake, Path::new("/"), Path::new("/mnt-root"), &stage2()).unwrap_err();
            assert_eq!(format!("{err:#}"), message);
        }
    }

    #[test]
    fn stage2_must_exist_in_the_new_root() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let sys_dir = root.path().join("nix/store/abc-system");
        std::fs::create_dir_all(&sys_dir).unwrap();
        let err = check_stage2(root.path(), "/nix/store/abc-system/init").unwrap_err();
        assert!(format!("{err:#}")
            .starts_with("stage-2 init /nix/store/abc-system/init not found in the new root"));
        std::fs::write(sys_dir.join("init"), "#!/bin/sh\n").unwrap();
        let err = check_stage2(root.path(), "/nix/store/abc-system/init").unwrap_err();
        assert_eq!(
            err.to_string(),
            "stage-2 init /nix/store/abc-system/init is not an executable file"
        );
        std::fs::set_permissions(sys_dir.join("init"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        check_stage2(root.path(), "/nix/store/abc-system/init").unwrap();
        // An absolute symlink resolves inside the new root, as stage 2 will see it.
        std::os::unix::fs::symlink("/nix/store/abc-system", root.path().join("sys-link")).unwrap();
        check_stage2(root.path(), "/sys-link/init").unwrap();
    }

    #[test]
    fn removal_stays_on_one_device_and_spares_keep() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/file"), "x").unwrap();
        std::fs::write(r.join("init"), "x").unwrap();
        std::fs::create_dir_all(r.join("mnt-root/nix")).unwrap();
        let device = nix::sys::stat::stat(r).unwrap().st_dev;
        let removed = initramfs::remove_under(r, device, &r.join("mnt-root")).unwrap();
        assert_eq!(removed, 4);
        assert!(r.join("mnt-root/nix").exists());
        assert!(!r.join("a").exists());
        // A different device number is never entered.
        std::fs::create_dir_all(r.join("other/x")).unwrap();
        let removed = initramfs::remove_under(r, device + 1, &r.join("mnt-root")).unwrap();
        assert_eq!(removed, 0);
        assert!(r.join("other/x").exists());
    }
}
