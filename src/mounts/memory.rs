//! How much RAM a squashfs store holds once every file has been read, with and without loop
//! direct I/O: a buffered loop device may keep the compressed image a second time in the
//! page cache of its backing file, next to squashfs's decompressed pages.
//!
//! [`measure`] attaches, mounts, drops the caches, reads every file, and compares
//! `/proc/meminfo` before and after; the benchmark calls it once per mode.

use super::{attach_loop, MountOps};
use anyhow::Context;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// The `/proc/meminfo` fields that matter here, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    pub mem_available: u64,
    pub buffers: u64,
    pub cached: u64,
    pub shmem: u64,
}

impl MemInfo {
    /// Page cache: `Buffers` + `Cached`.
    pub fn cache(&self) -> u64 {
        self.buffers + self.cached
    }
}

/// Parses `/proc/meminfo`; missing fields read as 0.
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines().take(200) {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match key {
            "MemAvailable" => m.mem_available = kb,
            "Buffers" => m.buffers = kb,
            "Cached" => m.cached = kb,
            "Shmem" => m.shmem = kb,
            _ => {}
        }
    }
    m
}

/// Where [`measure`] reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `/proc/sys/vm/drop_caches`.
    pub drop_caches: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            meminfo: "/proc/meminfo".into(),
            drop_caches: "/proc/sys/vm/drop_caches".into(),
        }
    }
}

/// Bytes of `path` (a file or a block device) in the page cache, by `mincore(2)` over a
/// shared read-only mapping: what this file holds in RAM, unaffected by the rest of the
/// machine (unlike `/proc/meminfo`).
pub fn cached_bytes(path: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(0);
    }
    let len_usize =
        usize::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EFBIG))?;
    let page = 4096usize;
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below, never read.
    let addr = unsafe {
        nix::libc::mmap(
            std::ptr::null_mut(),
            len_usize,
            nix::libc::PROT_READ,
            nix::libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == nix::libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut vec = vec![0u8; len_usize.div_ceil(page)];
    // SAFETY: addr..addr+len is the mapping above; vec has one byte per page.
    let rc = unsafe { nix::libc::mincore(addr, len_usize, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping the mapping made above.
    unsafe { nix::libc::munmap(addr, len_usize) };
    if rc != 0 {
        return Err(err);
    }
    Ok(vec.iter().filter(|b| *b & 1 != 0).count() as u64 * page as u64)
}

/// Sum of [`cached_bytes`] over the regular files under `dir`.
pub fn tree_cached_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for_each_file(dir, |file| {
        total += cached_bytes(file)?;
        Ok(())
    })?;
    Ok(total)
}

/// Calls `f` with every regular file under `dir`; symlinks are not followed.
fn for_each_file(
    dir: &Path,
    mut f: impl FnMut(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                f(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    pub image_bytes: u64,
    /// Image file pages in the page cache after reading (the compressed copy).
    pub image_cached: u64,
    /// Loop block device pages in the page cache after reading.
    pub loop_cached: u64,
    /// Decompressed file pages in the page cache after reading.
    pub files_cached: u64,
    pub direct_io_requested: bool,
    pub direct_io_effective: bool,
    pub files: u64,
    pub bytes_read: u64,
    pub before: MemInfo,
    pub after: MemInfo,
}

impl Figures {
    /// Growth of the page cache while reading, KiB.
    pub fn cache_growth_kib(&self) -> i64 {
        self.after.cache() as i64 - self.before.cache() as i64
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "direct I/O {} (in effect: {}): image {} KiB, read {} files / {} KiB; cached: image file {} KiB, loop device {} KiB, files {} KiB; whole machine: page cache {:+} KiB (Buffers {:+}, Cached {:+}), MemAvailable {:+} KiB",
            if self.direct_io_requested { "on" } else { "off" },
            self.direct_io_effective,
            self.image_bytes / 1024,
            self.files,
            self.bytes_read / 1024,
            self.image_cached / 1024,
            self.loop_cached / 1024,
            self.files_cached / 1024,
            self.cache_growth_kib(),
            self.after.buffers as i64 - self.before.buffers as i64,
            self.after.cached as i64 - self.before.cached as i64,
            self.after.mem_available as i64 - self.before.mem_available as i64,
        )
    }
}

/// Reads every regular file under `dir` to the end; returns (files, bytes). Symlinks are
/// not followed.
pub fn read_tree(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut buf = vec![0u8; 1 << 16];
    for_each_file(dir, |path| {
        let mut f = std::fs::File::open(path)?;
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
        files += 1;
        Ok(())
    })?;
    Ok((files, bytes))
}

fn drop_caches(paths: &Paths) -> anyhow::Result<()> {
    nix::unistd::sync();
    std::fs::write(&paths.drop_caches, "3\n")
        .with_context(|| format!("write {}", paths.drop_caches.display()))
}

fn meminfo(paths: &Paths) -> anyhow::Result<MemInfo> {
    let text = std::fs::read_to_string(&paths.meminfo)
        .with_context(|| format!("read {}", paths.meminfo.display()))?;
    Ok(parse_meminfo(&text))
}

/// Mounts `image` (squashfs) on `mount_point` through a loop device with or without direct
/// I/O, reads every file, and reports the page cache before and after. Unmounts at the end.
/// Root only; other activity on the machine shows up in the figures, so run it quietly.
pub fn measure<S: MountOps>(
    sys: &S,
    image: &Path,
    mount_point: &Path,
    direct_io: bool,
    paths: &Paths,
) -> anyhow::Result<Figures> {
    super::squashfs::check_image(image)?;
    let image_bytes = std::fs::metadata(image)
        .with_context(|| format!("stat {}", image.display()))?
        .len();
    sys.mkdir_all(mount_point)
        .with_context(|| format!("mkdir {}", mount_point.display()))?;
    let lo = attach_loop(sys, image, direct_io)?;
    sys.mount(&lo.device, mount_point, "squashfs", MsFlags::MS_RDONLY, "")
        .with_context(|| format!("mount {} on {}", lo.device, mount_point.display()))?;
    let direct_io_effective = lo.flags.direct_io;
    let device = PathBuf::from(&lo.device);
    drop(lo);
    let result = (|| {
        drop_caches(paths)?;
        let before = meminfo(paths)?;
        let (files, bytes_read) =
            read_tree(mount_point).with_context(|| format!("read {}", mount_point.display()))?;
        let after = meminfo(paths)?;
        Ok(Figures {
            image_bytes,
            image_cached: cached_bytes(image)
                .with_context(|| format!("mincore {}", image.display()))?,
            loop_cached: cached_bytes(&device)
                .with_context(|| format!("mincore {}", device.display()))?,
            files_cached: tree_cached_bytes(mount_point)
                .with_context(|| format!("mincore under {}", mount_point.display()))?,
            direct_io_requested: direct_io,
            direct_io_effective,
            files,
            bytes_read,
            before,
            after,
        })
    })();
    sys.umount(mount_point)
        .with_context(|| format!("umount {}", mount_point.display()))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields() {
        let m = parse_meminfo(
            "MemTotal:       24684092 kB\nMemAvailable:   24256968 kB\nBuffers:           20200 kB\nCached:           920872 kB\nShmem: 12 kB\nbad line\nX:\n",
        );
        assert_eq!(
            m,
            MemInfo {
                mem_available: 24256968,
                buffers: 20200,
                cached: 920872,
                shmem: 12
            }
        );
        assert_eq!(m.cache(), 941072);
        assert_eq!(parse_meminfo(""), MemInfo::default());
    }

    #[test]
    fn reads_a_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), vec![1u8; 100_000]).unwrap();
        std::fs::write(d.path().join("g"), "xy").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        assert_eq!(read_tree(d.path()).unwrap(), (2, 100_002));
        // Just written and read: resident.
        assert_eq!(cached_bytes(&d.path().join("a/b/f")).unwrap(), 25 * 4096);
        assert_eq!(tree_cached_bytes(d.path()).unwrap(), 26 * 4096);
    }
}
