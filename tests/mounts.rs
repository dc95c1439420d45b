//! The mount phase for real (root only): a squashfs made by mksquashfs, loop devices, tmpfs and
//! overlayfs, each test in a private mount namespace of its own thread.
//!
//! `unshare(CLONE_NEWNS)` moves only the calling thread, so every test runs its body on a fresh
//! thread, makes `/` rprivate there, and reads `/proc/thread-self/mountinfo`. When the thread
//! ends, its namespace and mounts go away; the autoclear loop devices detach with them.

use netboot_init::config::Config;
use netboot_init::mounts::{self, mountinfo, MountState, MountsReport};
use netboot_init::sys::Real;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/initrd-layout/examples/netboot.json"
);
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";
const HELLO: &str = "#!/bin/sh\necho hello from the store\n";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/mounts.rs mounts file systems and attaches loop devices: run it as root"
    );
    if !Path::new("/dev/loop-control").exists() {
        let st = Command::new("modprobe").arg("loop").status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "no /dev/loop-control and `modprobe loop` failed: {st:?}"
        );
    }
}

/// Runs `f` on a new thread in a private mount namespace.
fn in_private_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    require_root();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / rprivate");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A temp dir with `initrd/nix-store.squashfs` (zstd, as netboot.nix makes it) and a config
/// assembling the new root at `mnt-root`.
struct Setup {
    dir: tempfile::TempDir,
    initrd: PathBuf,
    image: PathBuf,
    root: PathBuf,
    config: Config,
}

/// Detaches every mount under `dir` (deepest first), so the temp dir can be removed.
fn detach_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = table()
        .mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.reverse();
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        detach_under(self.dir.path());
    }
}

fn mksquashfs(src: &Path, out: &Path) {
    let o = Command::new("mksquashfs")
        .arg(src)
        .arg(out)
        .args(["-comp", "zstd", "-noappend", "-quiet", "-no-progress"])
        .output()
        .expect("run mksquashfs (Debian package squashfs-tools)");
    assert!(
        o.status.success(),
        "mksquashfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let bin = store.join("aaaa-hello-1.0/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("hello"), HELLO).unwrap();
    // Enough incompressible data for several squashfs blocks.
    let mut x: u32 = 12345;
    let blob: Vec<u8> = (0..600_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(store.join("blob"), blob).unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::create_dir_all(&initrd).unwrap();
    let image = initrd.join("nix-store.squashfs");
    mksquashfs(&store, &image);
    let root = dir.path().join("mnt-root");
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut config = Config::parse(&text).unwrap();
    config.target_root = root.to_string_lossy().into_owned();
    Setup {
        dir,
        initrd,
        image,
        root,
        config,
    }
}

fn run(s: &Setup) -> anyhow::Result<MountsReport> {
    mounts::mount_all(&Real, &s.config, &s.initrd, Path::new(MOUNTINFO))
}

fn table() -> mountinfo::MountTable {
    mountinfo::parse(&std::fs::read_to_string(MOUNTINFO).unwrap())
}

fn sys_loop(dev: &str, file: &str) -> Option<String> {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/{file}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Loop devices whose backing file is `image`.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") {
            if let Some(b) = sys_loop(&name, "loop/backing_file") {
                if Path::new(&b) == image {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[test]
fn netboot_layout() {
    in_private_namespace(|| {
        let s = setup();
        let report = run(&s).unwrap_or_else(|e| panic!("{e:#}"));
        let t = table();
        let at = |p: &str| {
            let path = if p == "/" {
                s.root.clone()
            } else {
                s.root.join(p.trim_start_matches('/'))
            };
            t.find(&path.to_string_lossy())
                .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()))
                .clone()
        };

        let root = at("/");
        assert_eq!(root.fs_type, "tmpfs");
        assert!(root.super_options.contains("mode=755"), "{root:?}");

        let ro = at("/nix/.ro-store");
        assert_eq!(ro.fs_type, "squashfs");
        assert!(ro.mount_options.split(',').any(|o| o == "ro"), "{ro:?}");
        assert!(ro.source.starts_with("/dev/loop"), "{ro:?}");
        assert_eq!(
            report.entries[1].loop_device.as_deref(),
            Some(ro.source.as_str())
        );
        assert_eq!(
            sys_loop(&ro.source, "loop/backing_file").as_deref(),
            Some(s.image.to_str().unwrap())
        );
        assert_eq!(sys_loop(&ro.source, "loop/autoclear").as_deref(), Some("1"));
        assert_eq!(sys_loop(&ro.source, "ro").as_deref(), Some("1"));
        assert_eq!(sys_loop(&ro.source, "loop/dio").as_deref(), Some("0"));

        // threads=multi: taken by kernels with CONFIG_SQUASHFS_CHOICE_DECOMP_BY_MOUNT, else
        // refused and retried without; either way the summary says what happened.
        let refused = report.entries[1]
            .notes
            .iter()
            .any(|n| n == "threads=multi refused, mounted without");
        eprintln!(
            "kernel {}: threads=multi {}",
            nix::sys::utsname::uname()
                .unwrap()
                .release()
                .to_string_lossy(),
            if refused { "refused" } else { "taken" }
        );

        let rw = at("/nix/.rw-store");
        assert_eq!(rw.fs_type, "tmpfs");
        assert!(rw.mount_options.split(',').any(|o| o == "rw"), "{rw:?}");

        let ov = at("/nix/store");
        assert_eq!(ov.fs_type, "overlay");
        let r = s.root.display();
        for want in [
            format!("lowerdir={r}/nix/.ro-store"),
            format!("upperdir={r}/nix/.rw-store/store"),
            format!("workdir={r}/nix/.rw-store/work"),
        ] {
            assert!(
                ov.super_options.split(',').any(|o| o == want),
                "{want} not in {}",
                ov.super_options
            );
        }

        // A file from the image, through the overlay.
        let hello = s.root.join("nix/store/aaaa-hello-1.0/bin/hello");
        assert_eq!(std::fs::read_to_string(&hello).unwrap(), HELLO);
        assert_eq!(
            std::fs::metadata(s.root.join("nix/store/blob"))
                .unwrap()
                .len(),
            600_000
        );
        // A write lands in the rw-store upper dir, not in the image.
        std::fs::write(s.root.join("nix/store/new-path"), "written").unwrap();
        assert_eq!(
            std::fs::read_to_string(s.root.join("nix/.rw-store/store/new-path")).unwrap(),
            "written"
        );
        assert!(!s.root.join("nix/.ro-store/new-path").exists());
        assert!(std::fs::write(s.root.join("nix/.ro-store/x"), "no").is_err());

        assert_eq!(report.entries.len(), 4);
        assert!(report
            .entries
            .iter()
            .all(|e| e.state == MountState::Mounted));

        // Unmounted, the loop device detaches itself (autoclear).
        for p in ["nix/store", "nix/.rw-store", "nix/.ro-store"] {
            nix::mount::umount(&s.root.join(p)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !loops_backed_by(&s.image).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} still attached after unmounting",
                ro.source
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn mounts_in_place_are_left_alone() {
    in_private_namespace(|| {
        let s = setup();
        run(&s).unwrap_or_else(|e| panic!("{e:#}"));
        let before = table().mounts.len();
        let again = run(&s).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(table().mounts.len(), before);
        for e in &again.entries {
            assert!(
                matches!(e.state, MountState::AlreadyMounted { .. }),
                "{e:?}"
            );
        }
        assert_eq!(loops_backed_by(&s.image).len(), 1);
        assert!(again.to_string().starts_with("0 of 4 file systems mounted"));
    });
}

#[test]
fn loop_direct_io_on_request() {
    in_private_namespace(|| {
        let mut s = setup();
        s.config.file_systems[1]
            .options
            .push(mounts::options::LOOP_DIRECT_IO_OPTION.into());
        let report = run(&s).unwrap_or_else(|e| panic!("{e:#}"));
        let dev = report.entries[1].loop_device.clone().unwrap();
        // The image sits on the test machine's disk file system, which does O_DIRECT.
        assert_eq!(sys_loop(&dev, "loop/dio").as_deref(), Some("1"));
        assert!(report.entries[1]
            .notes
            .iter()
            .all(|n| !n.contains("direct I/O")));
        let hello = s.root.join("nix/store/aaaa-hello-1.0/bin/hello");
        assert_eq!(std::fs::read_to_string(hello).unwrap(), HELLO);
    });
}

#[test]
fn several_lowerdirs_with_odd_names() {
    in_private_namespace(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mnt-root");
        // serde directly: the config validation refuses `:` and `,` in lowerdirs, which the
        // mount phase escapes as overlayfs expects.
        let config: Config = serde_json::from_str(&format!(
            r#"{{"version":1,"targetRoot":"{}","fileSystems":[
              {{"mountPoint":"/","device":"tmpfs","fsType":"tmpfs","options":["mode=0755"]}},
              {{"mountPoint":"/low:one","fsType":"tmpfs"}},
              {{"mountPoint":"/low,two","fsType":"tmpfs"}},
              {{"mountPoint":"/back\\slash","fsType":"tmpfs"}},
              {{"mountPoint":"/merged","device":"overlay","fsType":"overlay",
                "overlay":{{"lowerdir":["/low:one","/low,two","/back\\slash"]}}}}]}}"#,
            root.display()
        ))
        .unwrap();
        // Mount the lower layers, put a file in each, then mount the overlay.
        let mut first = config.clone();
        first.file_systems.truncate(4);
        mounts::mount_all(&Real, &first, dir.path(), Path::new(MOUNTINFO))
            .unwrap_or_else(|e| panic!("{e:#}"));
        std::fs::write(root.join("low:one/a"), "1").unwrap();
        std::fs::write(root.join("low,two/b"), "2").unwrap();
        std::fs::write(root.join("low,two/a"), "shadowed").unwrap();
        std::fs::write(root.join("back\\slash/c"), "3").unwrap();
        let report = mounts::mount_all(&Real, &config, dir.path(), Path::new(MOUNTINFO))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(report.entries[4].state, MountState::Mounted);
        let merged = root.join("merged");
        assert_eq!(std::fs::read_to_string(merged.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(merged.join("b")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(merged.join("c")).unwrap(), "3");
        assert!(
            std::fs::write(merged.join("d"), "x").is_err(),
            "no upperdir: read-only"
        );
        detach_under(dir.path());
    });
}

/// Runs the netboot config against a damaged image: the error, with paths made generic.
fn fault(damage: impl FnOnce(&Path) + Send + 'static) -> String {
    in_private_namespace(move || {
        let s = setup();
        damage(&s.image);
        let err = format!("{:#}", run(&s).unwrap_err());
        assert!(
            loops_backed_by(&s.image).is_empty(),
            "a loop device was attached"
        );
        // The tmpfs root was mounted before the squashfs entry failed; nothing after it.
        let t = table();
        assert!(t.find(&s.root.to_string_lossy()).is_some());
        assert!(t
            .find(&s.root.join("nix/.rw-store").to_string_lossy())
            .is_none());
        err.replace(s.image.to_str().unwrap(), "$IMAGE")
    })
}

fn set_u16(image: &Path, offset: usize, v: u16) {
    let mut b = std::fs::read(image).unwrap();
    b[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    std::fs::write(image, b).unwrap();
}

#[test]
fn missing_image() {
    let err = fault(|image| std::fs::remove_file(image).unwrap());
    assert_eq!(
        err,
        "fileSystems[1] /nix/.ro-store (squashfs): squashfs image $IMAGE is missing"
    );
}

#[test]
fn truncated_image() {
    let err = fault(|image| {
        let b = std::fs::read(image).unwrap();
        std::fs::write(image, &b[..b.len() / 2]).unwrap();
    });
    assert!(
        err.starts_with(
            "fileSystems[1] /nix/.ro-store (squashfs): squashfs image $IMAGE is truncated: its superblock says "
        ),
        "{err}"
    );
}

#[test]
fn wrong_magic() {
    let err = fault(|image| {
        let mut b = std::fs::read(image).unwrap();
        b[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(image, b).unwrap();
    });
    assert_eq!(
        err,
        "fileSystems[1] /nix/.ro-store (squashfs): squashfs image $IMAGE: not a squashfs image (magic 0x464c457f, expected 0x73717368 \"hsqs\")"
    );
}

#[test]
fn unsupported_compressor() {
    let err = fault(|image| set_u16(image, 20, 9));
    assert_eq!(
        err,
        "fileSystems[1] /nix/.ro-store (squashfs): squashfs image $IMAGE: unknown squashfs compressor id 9 (known: 1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd)"
    );
    let err = fault(|image| set_u16(image, 20, 2));
    assert_eq!(
        err,
        "fileSystems[1] /nix/.ro-store (squashfs): squashfs image $IMAGE: compressor lzma (id 2) is not supported by Linux squashfs; rebuild the image with xz"
    );
}

#[test]
fn kernel_refusing_a_sound_superblock_names_the_compressor() {
    // The superblock passes the checks but the tables it points at are garbage: the kernel
    // says EINVAL, and the message points at the decompressor (and the kernel log).
    let err = fault(|image| {
        let mut b = std::fs::read(image).unwrap();
        let len = b.len();
        for x in &mut b[96..len] {
            *x = 0xff;
        }
        std::fs::write(image, b).unwrap();
    });
    assert!(err.contains("EINVAL"), "{err}");
    assert!(
        err.contains("the kernel may lack the zstd decompressor (CONFIG_SQUASHFS_ZSTD)"),
        "{err}"
    );
}

/// Page cache held after reading every file of a store image, with and without loop direct
/// I/O, with the image on the disk and on a tmpfs (as in an initrd). Not a pass/fail test:
/// `cargo test --test mounts -- --ignored --nocapture memory`; `NETBOOT_MEMORY_IMAGE` names an
/// image to use, else one is made from `/usr/bin`.
#[test]
#[ignore]
fn memory_with_and_without_direct_io() {
    in_private_namespace(|| {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = match std::env::var_os("NETBOOT_MEMORY_IMAGE") {
            Some(p) => PathBuf::from(p),
            None => {
                let image = dir.path().join("store.squashfs");
                mksquashfs(Path::new("/usr/bin"), &image);
                image
            }
        };
        let tmpfs = dir.path().join("tmpfs");
        std::fs::create_dir_all(&tmpfs).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &tmpfs,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let in_tmpfs = tmpfs.join("store.squashfs");
        std::fs::copy(&on_disk, &in_tmpfs).unwrap();
        for (place, image) in [("disk", &on_disk), ("tmpfs", &in_tmpfs)] {
            for direct_io in [false, true, false, true] {
                let f = mounts::memory::measure(
                    &Real,
                    image,
                    &dir.path().join("m"),
                    direct_io,
                    &mounts::memory::Paths::default(),
                )
                .unwrap_or_else(|e| panic!("{e:#}"));
                println!("image on {place}: {f}");
            }
        }
        detach_under(dir.path());
    });
}

/// Forwards to the kernel, but plays an older kernel (no `LOOP_CONFIGURE`) and, once, hands
/// out a loop device that is already in use, as when another process takes it between
/// `LOOP_CTL_GET_FREE` and the attach.
struct OldKernel {
    taken: Option<u32>,
    handed_out: std::sync::atomic::AtomicBool,
}

impl mounts::MountOps for OldKernel {
    type Loop = <Real as mounts::MountOps>::Loop;
    fn mkdir_all(&self, path: &Path) -> Result<(), nix::errno::Errno> {
        Real.mkdir_all(path)
    }
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), nix::errno::Errno> {
        Real.mount(source, target, fstype, flags, data)
    }
    fn umount(&self, target: &Path) -> Result<(), nix::errno::Errno> {
        Real.umount(target)
    }
    fn loop_get_free(&self) -> Result<u32, nix::errno::Errno> {
        use std::sync::atomic::Ordering;
        match self.taken {
            Some(n) if !self.handed_out.swap(true, Ordering::SeqCst) => Ok(n),
            _ => Real.loop_get_free(),
        }
    }
    fn loop_open(&self, index: u32) -> Result<Self::Loop, nix::errno::Errno> {
        Real.loop_open(index)
    }
    fn loop_configure(
        &self,
        _: &Self::Loop,
        _: &Path,
        _: mounts::loopdev::LoopFlags,
    ) -> Result<(), nix::errno::Errno> {
        Err(nix::errno::Errno::ENOTTY)
    }
    fn loop_set_fd(&self, dev: &Self::Loop, backing: &Path) -> Result<(), nix::errno::Errno> {
        Real.loop_set_fd(dev, backing)
    }
    fn loop_set_status(
        &self,
        dev: &Self::Loop,
        backing: &Path,
        flags: mounts::loopdev::LoopFlags,
    ) -> Result<(), nix::errno::Errno> {
        Real.loop_set_status(dev, backing, flags)
    }
    fn loop_set_direct_io(&self, dev: &Self::Loop, on: bool) -> Result<(), nix::errno::Errno> {
        Real.loop_set_direct_io(dev, on)
    }
    fn loop_get_flags(
        &self,
        dev: &Self::Loop,
    ) -> Result<mounts::loopdev::LoopFlags, nix::errno::Errno> {
        Real.loop_get_flags(dev)
    }
    fn loop_clear(&self, dev: &Self::Loop) -> Result<(), nix::errno::Errno> {
        Real.loop_clear(dev)
    }
}

#[test]
fn older_ioctls_and_a_device_taken_meanwhile() {
    in_private_namespace(|| {
        let mut s = setup();
        s.config.file_systems[1]
            .options
            .push(mounts::options::LOOP_DIRECT_IO_OPTION.into());
        // Another "process" holds a loop device; the first LOOP_CTL_GET_FREE returns it.
        let other = s.dir.path().join("other.img");
        std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
        let held = mounts::attach_loop(&Real, &other, false).unwrap();
        let sys = OldKernel {
            taken: Some(held.index),
            handed_out: Default::default(),
        };
        let report = mounts::mount_all(&sys, &s.config, &s.initrd, Path::new(MOUNTINFO))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let dev = report.entries[1].loop_device.clone().unwrap();
        assert_ne!(dev, held.device, "the taken device was used");
        assert_eq!(
            sys_loop(&dev, "loop/backing_file").as_deref(),
            Some(s.image.to_str().unwrap())
        );
        // LOOP_SET_FD + LOOP_SET_STATUS64 + LOOP_SET_DIRECT_IO gave the same device.
        assert_eq!(sys_loop(&dev, "loop/autoclear").as_deref(), Some("1"));
        assert_eq!(sys_loop(&dev, "ro").as_deref(), Some("1"));
        assert_eq!(sys_loop(&dev, "loop/dio").as_deref(), Some("1"));
        let hello = s.root.join("nix/store/aaaa-hello-1.0/bin/hello");
        assert_eq!(std::fs::read_to_string(hello).unwrap(), HELLO);
        // The other device was left as it was.
        assert_eq!(
            sys_loop(&held.device, "loop/backing_file").as_deref(),
            Some(other.to_str().unwrap())
        );
        drop(held);
    });
}
