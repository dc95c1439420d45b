//! `cargo xtask bench`: netboot-init against a busybox shell stage 1 on the same fixture and
//! kernel, in one run; writes `target/bench/report.{json,md}` and `timeline.svg`.
//!
//! Boot variants (each booted `NETBOOT_BENCH_BOOTS` times, default 5, round robin so that
//! machine load spreads evenly):
//! - `netboot-init`: prebuilt registration, loop I/O as the init defaults, split initrd;
//! - `netboot-init-load-db`: the image's `nix-store --load-db` (the shell's registration step);
//! - `netboot-init-direct-io` / `-buffered`: loop direct I/O the other way from the default;
//! - `netboot-init-single`: the whole initrd as one compressed archive;
//! - `shell`: the busybox stage 1 ([`shell`]).
//!
//! Every boot ends in the same stage 2 ([`stage2`]), which reads the whole store and prints
//! the kernel log. Stage-1 time and initrd unpack time come from kernel timestamps
//! (`initramfs_async=0` makes the unpack one uninterrupted span); phase times from the init's
//! timeline. Registration per mode is timed on the host on a 1,000-path closure; initrd build
//! time by building both layouts `NETBOOT_BENCH_BUILDS` times (default 3).

pub mod report;
pub mod shell;
pub mod stage2;
pub mod stats;

use crate::fixture::Fixture;
use crate::images::Kernel;
use crate::vm::{self, Step, VmSpec};
use anyhow::{bail, Context, Result};
use netboot_init::analyze;
use netboot_init::config::RegistrationMode;
use report::{Measurements, VariantSamples};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kernel every variant boots.
pub const KERNEL: &str = "6.12";
pub const DEFAULT_BOOTS: usize = 5;
pub const DEFAULT_BUILDS: usize = 3;
/// Closure size for the registration benchmark.
pub const REGISTRATION_PATHS: usize = 1000;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Kernel parameters of every benchmark boot: kernel messages stay off the console (stage 2
/// prints the log buffer at the end) and the initrd is unpacked synchronously.
pub const BASE_APPEND: &str = "console=ttyS0 quiet initramfs_async=0 panic=-1";
/// The kernel parameter that makes the init load modules one by one, if it has one.
pub const SEQUENTIAL_MODULES_PARAM: Option<&str> = Some("netboot.modules=sequential");

/// `NETBOOT_BENCH_ICOUNT=N`: guest time from instructions executed (2^N ns each) instead
/// of the host's clock, so that load on the host does not show in the figures. Off by default:
/// the figures are then wall-clock times of the emulated machine.
pub const ICOUNT_ENV: &str = "NETBOOT_BENCH_ICOUNT";

fn icount_shift() -> Option<u32> {
    std::env::var(ICOUNT_ENV)
        .ok()?
        .parse()
        .ok()
        .filter(|s| *s <= 10)
}

fn icount_args() -> Vec<String> {
    match icount_shift() {
        Some(shift) if !vm::kvm_requested() => {
            vec!["-icount".into(), format!("shift={shift},sleep=off")]
        }
        _ => Vec::new(),
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// One initrd to boot.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub config: Value,
    pub single_archive: bool,
    pub shell: bool,
    pub extra_append: String,
}

impl Variant {
    fn prebuilt(&self) -> bool {
        self.config["registration"]["mode"] == "prebuilt"
    }
}

/// The netboot-init configs: the harness's base config with a registration mode and,
/// optionally, an explicit loop direct-I/O setting on the squashfs entry.
pub fn variant_config(fx: &Fixture, mode: RegistrationMode, direct_io: Option<bool>) -> Value {
    let mut c = crate::images::base_config(fx);
    let mode = match mode {
        RegistrationMode::LoadDb => "load-db",
        RegistrationMode::Prebuilt => "prebuilt",
        RegistrationMode::None => "none",
    };
    c["registration"]["mode"] = json!(mode);
    c["registration"]["toplevel"] = json!(fx.toplevel);
    if let (Some(on), Some(entries)) = (direct_io, c["fileSystems"].as_array_mut()) {
        for e in entries.iter_mut().filter(|e| e["fsType"] == "squashfs") {
            if let Some(opts) = e["options"].as_array_mut() {
                opts.push(json!(format!(
                    "{}={}",
                    netboot_init::mounts::options::LOOP_DIRECT_IO_OPTION,
                    if on { "on" } else { "off" }
                )));
            }
        }
    }
    c
}

pub fn variants(fx: &Fixture) -> Vec<Variant> {
    let default_dio = netboot_init::mounts::options::DEFAULT_LOOP_DIRECT_IO;
    let other = if default_dio { "buffered" } else { "direct-io" };
    let v = |name: &str, description: &str, config: Value| Variant {
        name: name.into(),
        description: description.into(),
        config,
        single_archive: false,
        shell: false,
        extra_append: String::new(),
    };
    let mut out = vec![
        v(
            "netboot-init",
            "netboot-init, prebuilt registration, default loop I/O, split initrd",
            variant_config(fx, RegistrationMode::Prebuilt, None),
        ),
        v(
            "netboot-init-load-db",
            "netboot-init running the image's nix-store --load-db",
            variant_config(fx, RegistrationMode::LoadDb, None),
        ),
        v(
            &format!("netboot-init-{other}"),
            &format!("netboot-init, prebuilt registration, loop {other}"),
            variant_config(fx, RegistrationMode::Prebuilt, Some(!default_dio)),
        ),
        Variant {
            single_archive: true,
            ..v(
                "netboot-init-single",
                "netboot-init, prebuilt registration, one compressed archive",
                variant_config(fx, RegistrationMode::Prebuilt, None),
            )
        },
        Variant {
            shell: true,
            ..v(
                "shell",
                "busybox shell stage 1 (modprobe, mount -o loop, nix-store --load-db, switch_root)",
                variant_config(fx, RegistrationMode::LoadDb, None),
            )
        },
    ];
    if let Some(param) = SEQUENTIAL_MODULES_PARAM {
        out.push(Variant {
            extra_append: param.into(),
            ..v(
                "netboot-init-sequential",
                "netboot-init loading modules one by one",
                variant_config(fx, RegistrationMode::Prebuilt, None),
            )
        });
    }
    out
}

/// initrd-layout options for `variant` (the config written into `dir`).
fn build_options(
    fx: &Fixture,
    kernel: &Kernel,
    init: &Path,
    variant: &Variant,
    dir: &Path,
    output: &Path,
) -> Result<initrd_layout::BuildOptions> {
    fs::create_dir_all(dir)?;
    let config_path = dir.join("netboot-init.json");
    fs::write(&config_path, serde_json::to_string_pretty(&variant.config)?)?;
    let mut opts = initrd_layout::BuildOptions::new(
        init,
        &config_path,
        &kernel.modules(),
        &fx.store_image,
        output,
    );
    opts.kernel_release = Some(kernel.release.clone());
    opts.single_archive = variant.single_archive;
    if variant.prebuilt() {
        opts.prebuilt_db = Some(fx.prebuilt_db.clone());
    }
    Ok(opts)
}

/// Builds `variant`'s initrd into `dir/initrd`.
fn build_variant(
    fx: &Fixture,
    kernel: &Kernel,
    init: &Path,
    variant: &Variant,
    dir: &Path,
) -> Result<PathBuf> {
    let out = dir.join("initrd");
    let mut init = init.to_path_buf();
    let mut extras = Vec::new();
    if variant.shell {
        let config = netboot_init::config::Config::parse(&serde_json::to_string(&variant.config)?)?;
        let modules = initrd_layout::upstream::needed_modules(&config);
        let nix_store = config
            .registration
            .nix_store
            .clone()
            .context("the config names no nix-store")?;
        let script = shell::stage1_script(&shell::ScriptInputs {
            config: &config,
            stage2_init: &fx.init(),
            toplevel: &fx.toplevel,
            nix_store: &nix_store,
            modules: &modules,
        })?;
        fs::create_dir_all(dir)?;
        init = dir.join("stage1-init.sh");
        fs::write(&init, script)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        extras = shell::stage_extras(
            &dir.join("extras"),
            &kernel.modules(),
            &kernel.release,
            &config,
        )?;
    }
    let mut opts = build_options(fx, kernel, &init, variant, dir, &out)?;
    opts.extra_files = extras;
    initrd_layout::build(&opts).with_context(|| format!("building the {} initrd", variant.name))?;
    Ok(out)
}

/// What one boot showed.
#[derive(Debug, Clone, Default)]
pub struct BootFigures {
    pub stage1_ms: Option<f64>,
    pub unpack_ms: Option<f64>,
    pub timeline: Option<analyze::Timeline>,
    pub stage2: stage2::Stage2Output,
}

/// Reads one boot's console.
pub fn boot_figures(console: &str) -> BootFigures {
    let out = stage2::parse(console);
    // dmesg holds every kernel message; without it (a boot that never reached stage 2) the
    // console has what `quiet` let through.
    let events = analyze::kernel_events(if out.dmesg.is_empty() {
        console
    } else {
        &out.dmesg
    });
    let timeline = out
        .timeline_json
        .as_deref()
        .and_then(|j| analyze::parse_timeline_json(j).ok())
        .map(|mut t| {
            t.kernel = events.clone();
            analyze::align_to_kernel_log(&mut t, &out.dmesg);
            t
        });
    BootFigures {
        stage1_ms: events.stage1_us().map(|us| us as f64 / 1000.0),
        unpack_ms: events.unpack_us().map(|us| us as f64 / 1000.0),
        timeline,
        stage2: out,
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Boots `initrd` once; the console goes to `log`.
fn boot(kernel: &Kernel, initrd: &Path, append: &str, log: &Path) -> Result<BootFigures> {
    let mut spec = VmSpec::direct(
        kernel.image(),
        initrd.to_path_buf(),
        append.to_string(),
        log.to_path_buf(),
    );
    spec.timeout = BOOT_TIMEOUT;
    spec.extra = icount_args();
    let outcome = vm::run(&spec, |text, _| {
        if text.lines().any(|l| l.trim_end() == stage2::DONE) || text.contains("Kernel panic") {
            Step::Stop
        } else {
            Step::Continue
        }
    })?;
    let figures = boot_figures(&outcome.console);
    if !figures.stage2.done || figures.stage1_ms.is_none() {
        bail!(
            "no complete stage 2 ({}): {}",
            if outcome.timed_out {
                "timed out"
            } else {
                "stopped"
            },
            tail(&outcome.console, 4)
        );
    }
    Ok(figures)
}

fn record(samples: &mut VariantSamples, f: &BootFigures) {
    samples.stage1_ms.extend(f.stage1_ms);
    samples.unpack_ms.extend(f.unpack_ms);
    if let Some(t) = &f.timeline {
        for p in &t.phases {
            samples
                .phase_ms
                .entry(p.name.clone())
                .or_default()
                .push(p.duration_us() as f64 / 1000.0);
        }
    }
    if let Some(cpu) = f.stage2.cpu {
        samples.user_ms.push(cpu.user_ms());
        samples
            .kernel_and_children_ms
            .push(cpu.system_ms() + cpu.children_ms());
    }
    if let (Some(direct_io), Some(growth_kib), Some(overhead_kib)) = (
        f.stage2.direct_io(),
        f.stage2.cache_growth_kib(),
        f.stage2.overhead_kib(),
    ) {
        samples.memory.push(report::MemSample {
            direct_io,
            growth_kib,
            overhead_kib,
            held_after_drop_kib: f.stage2.held_after_drop_kib(),
        });
    }
}

/// Median wall time of `builds` runs of each of the two layouts, interleaved.
fn time_builds(
    fx: &Fixture,
    kernel: &Kernel,
    init: &Path,
    main: &Variant,
    dir: &Path,
    builds: usize,
) -> Result<(Vec<f64>, Vec<f64>, u64, u64)> {
    let (mut split, mut single) = (Vec::new(), Vec::new());
    let (mut split_bytes, mut single_bytes) = (0, 0);
    for i in 0..builds {
        for one in [false, true] {
            let v = Variant {
                single_archive: one,
                ..main.clone()
            };
            let out = dir.join(if one { "initrd-single" } else { "initrd-split" });
            let opts = build_options(fx, kernel, init, &v, dir, &out)?;
            let started = Instant::now();
            let r = initrd_layout::build(&opts)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            eprintln!(
                "bench: build {} {}/{builds}: {ms:.0} ms, {} bytes",
                if one { "single" } else { "split" },
                i + 1,
                r.total_len
            );
            if one {
                single.push(ms);
                single_bytes = r.total_len;
            } else {
                split.push(ms);
                split_bytes = r.total_len;
            }
        }
    }
    Ok((split, single, split_bytes, single_bytes))
}

/// Registration per mode on the host, `runs` times each, on a 1,000-path closure in a tmpfs
/// (as the new root is at boot; a disk would add its fsync costs), in a private mount
/// namespace of one thread: load-db mounts /proc and /dev under the target root while
/// `nix-store` runs, and the tmpfs goes away with the thread.
pub fn time_registration(work: &Path, runs: usize) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    use netboot_init::registration::host;
    fs::create_dir_all(work)?;
    let work = work.to_path_buf();
    let handle = std::thread::spawn(move || -> Result<(usize, Vec<f64>, Vec<f64>)> {
        private_tmpfs(&work)?;
        let fixture = host::prepare_fixture(
            &work.join("closure"),
            REGISTRATION_PATHS,
            Path::new(crate::fixture::NIX_STORE_BIN),
        )
        .context("preparing the registration closure")?;
        let (mut load_db, mut prebuilt) = (Vec::new(), Vec::new());
        for i in 0..runs {
            for mode in [RegistrationMode::LoadDb, RegistrationMode::Prebuilt] {
                let took = host::time_mode(&netboot_init::sys::Real, &fixture, mode)?;
                let ms = took.as_secs_f64() * 1000.0;
                eprintln!("bench: registration {mode:?} {}/{runs}: {ms:.1} ms", i + 1);
                match mode {
                    RegistrationMode::LoadDb => load_db.push(ms),
                    _ => prebuilt.push(ms),
                }
            }
        }
        Ok((fixture.registration.len(), load_db, prebuilt))
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("registration benchmark thread panicked"))?
}

/// Moves the calling thread into a mount namespace of its own and mounts a tmpfs on `dir`.
fn private_tmpfs(dir: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir_c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: plain syscalls with valid NUL-terminated strings; unshare(CLONE_NEWNS) moves
    // only this thread.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            dir_c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0755".as_ptr().cast(),
        ) != 0
        {
            bail!(
                "mounting a tmpfs on {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Runs every benchmark and writes the report under `<ws>/target/bench/`.
pub fn run(ws: &Path) -> Result<()> {
    // The fixture is shared with the scenarios and the demo.
    let _lock = crate::lock_harness(ws)?;
    let out = ws.join("target/bench");
    let work = out.join("work");
    fs::create_dir_all(&work)?;
    let boots = env_count("NETBOOT_BENCH_BOOTS", DEFAULT_BOOTS);
    let builds = env_count("NETBOOT_BENCH_BUILDS", DEFAULT_BUILDS);

    let bins = crate::build_static(ws)?;
    let fx = crate::fixture::ensure(ws, &bins.probe)?;
    let kernel = Kernel::load(ws, KERNEL)?;
    let variants = variants(&fx);

    let mut m = Measurements {
        kernel_release: kernel.release.clone(),
        accel: match (vm::kvm_requested(), icount_shift()) {
            (true, _) => "kvm".into(),
            (false, Some(shift)) => format!("tcg, -icount shift={shift}"),
            (false, None) => "tcg".into(),
        },
        fixture_paths: fx.paths,
        image_bytes: fs::metadata(&fx.store_image)?.len(),
        binary_bytes: fs::metadata(&bins.init)?.len(),
        compression: initrd_layout::Compression::default().to_string(),
        ..Default::default()
    };

    eprintln!("bench: initrd build time, split layout against one archive ({builds} builds each)");
    let (split, single, split_bytes, single_bytes) = time_builds(
        &fx,
        &kernel,
        &bins.init,
        &variants[0],
        &work.join("build-timing"),
        builds,
    )?;
    m.build_split_ms = split;
    m.build_single_ms = single;
    m.initrd_split_bytes = split_bytes;
    m.initrd_single_bytes = single_bytes;

    eprintln!("bench: registration per mode on {REGISTRATION_PATHS} paths (host)");
    let (paths, load_db, prebuilt) = time_registration(&work.join("registration"), boots)?;
    m.registration_paths = paths;
    m.registration_load_db_ms = load_db;
    m.registration_prebuilt_ms = prebuilt;

    let mut samples: Vec<VariantSamples> = Vec::new();
    let mut initrds = Vec::new();
    for v in &variants {
        let dir = work.join(&v.name);
        let initrd = build_variant(&fx, &kernel, &bins.init, v, &dir)?;
        samples.push(VariantSamples {
            name: v.name.clone(),
            description: v.description.clone(),
            initrd_bytes: fs::metadata(&initrd)?.len(),
            ..Default::default()
        });
        initrds.push(initrd);
    }

    let busybox = &fx.busybox;
    let boot_logs = out.join("boots");
    fs::create_dir_all(&boot_logs)?;
    let mut main_boots: Vec<(f64, BootFigures)> = Vec::new();
    for i in 0..boots {
        for (k, v) in variants.iter().enumerate() {
            let append = format!(
                "{BASE_APPEND} {} init={} -- {}",
                v.extra_append,
                stage2::init_path(busybox),
                stage2::init_args(busybox)
            );
            let log = boot_logs.join(format!("{}-{}.log", v.name, i + 1));
            let s = &mut samples[k];
            s.boots += 1;
            match boot(&kernel, &initrds[k], &append, &log) {
                Ok(f) => {
                    eprintln!(
                        "bench: boot {} {}/{boots}: stage 1 {:.1} ms, unpack {:.1} ms",
                        v.name,
                        i + 1,
                        f.stage1_ms.unwrap_or(f64::NAN),
                        f.unpack_ms.unwrap_or(f64::NAN)
                    );
                    if m.store_bytes_read.is_none() {
                        m.store_bytes_read = f.stage2.read_bytes;
                    }
                    record(s, &f);
                    if k == 0 {
                        main_boots.push((f.stage1_ms.unwrap_or(f64::MAX), f));
                    }
                }
                Err(e) => {
                    eprintln!("bench: boot {} {}/{boots}: FAILED: {e:#}", v.name, i + 1);
                    s.failures.push(format!("boot {}: {e:#}", i + 1));
                }
            }
        }
    }
    let mut it = samples.into_iter();
    let mut next = || it.next().unwrap_or_default();
    m.init = next();
    m.init_load_db = next();
    m.init_other_dio = next();
    m.init_single = next();
    m.shell = next();
    m.init_sequential = SEQUENTIAL_MODULES_PARAM.map(|_| next());
    if SEQUENTIAL_MODULES_PARAM.is_none() {
        m.notes.push("modules one by one: the init has no switch for sequential loading, so only the parallel loader's phase time is reported".into());
    }
    m.notes.push("stage-2 boots run under `quiet`; the kernel log comes from dmesg in stage 2, so console output does not slow the boots".into());

    // The picture: the main variant's median boot.
    main_boots.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, f)) = main_boots.get(main_boots.len() / 2) {
        if let Some(t) = &f.timeline {
            fs::write(out.join("timeline.svg"), analyze::render_svg(t))?;
            fs::write(out.join("timeline.txt"), analyze::render_table(t))?;
            let mut log = f.stage2.dmesg.clone();
            if let Some(j) = &f.stage2.timeline_json {
                log.push_str(&format!("netboot-init: timeline {j}\n"));
            }
            fs::write(out.join("timeline-boot.log"), log)?;
        }
    }

    let json = serde_json::to_string_pretty(&m.to_json())?;
    fs::write(out.join("report.json"), json + "\n")?;
    let md = m.to_markdown();
    fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    println!(
        "bench: wrote {}, {} and {}",
        out.join("report.json").display(),
        out.join("report.md").display(),
        out.join("timeline.svg").display()
    );
    if m.init.stage1_ms.is_empty() || m.shell.stage1_ms.is_empty() {
        bail!(
            "no successful boot of netboot-init or of the shell stage 1 (see {})",
            boot_logs.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_a_console() {
        let console = "\
[    0.500000] Trying to unpack rootfs image as initramfs...\r
bench: stat 1 (sh) S 0 1 1 0 -1 4194560 713 4242 0 3 2 9 40 50 20 0 1 0 12 2195456 85\r
bench: dio 0\r
bench: meminfo-before\r
Buffers: 0 kB\r
Cached: 1000 kB\r
\r
bench: read-bytes 1048576\r
bench: meminfo-after\r
Buffers: 512 kB\r
Cached: 2024 kB\r
\r
bench: timeline {\"version\":1,\"initStartUs\":3000500,\"phases\":[{\"name\":\"mounts\",\"startUs\":3001000,\"endUs\":3011000,\"ok\":true,\"summary\":\"4\"}]}\r
bench: dmesg-begin\r
[    0.400000] Trying to unpack rootfs image as initramfs...\r
[    0.450000] Freeing initrd memory: 100K\r
[    3.000000] Run /init as init process\r
[    3.020000] stage2-probe: started\r
bench: dmesg-end\r
bench: done\r
";
        let f = boot_figures(console);
        assert_eq!(f.stage1_ms, Some(20.0));
        assert_eq!(f.unpack_ms, Some(50.0));
        let t = f.timeline.as_ref().unwrap();
        assert_eq!(t.kernel.run_init_us, Some(3_000_000));
        assert_eq!(t.phase("mounts").unwrap().duration_us(), 10_000);
        let mut s = VariantSamples::default();
        record(&mut s, &f);
        assert_eq!(s.phase_ms["mounts"], vec![10.0]);
        assert_eq!(s.user_ms, vec![20.0]);
        assert_eq!(s.kernel_and_children_ms, vec![990.0]);
        assert_eq!(
            s.memory,
            vec![report::MemSample {
                direct_io: false,
                growth_kib: 1536,
                overhead_kib: 512,
                held_after_drop_kib: None
            }]
        );
    }

    #[test]
    fn configs_per_variant() {
        let fx = Fixture {
            dir: "/f".into(),
            toplevel: "/nix/store/abc-system".into(),
            nix_store: "/nix/store/def-nix/bin/nix-store".into(),
            busybox: "/nix/store/ghi-busybox".into(),
            kexec_bin: "/nix/store/jkl-kexec/bin".into(),
            paths: 3,
            nar_bytes: 1,
            store_image: "/f/nix-store.squashfs".into(),
            prebuilt_db: "/f/db".into(),
        };
        let vs = variants(&fx);
        let names: Vec<&str> = vs.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names[0], "netboot-init");
        assert!(names.contains(&"shell") && names.contains(&"netboot-init-single"));
        for v in &vs {
            // Every config is one the init accepts.
            let c = netboot_init::config::Config::parse(&v.config.to_string()).unwrap();
            assert_eq!(
                c.registration.toplevel.as_deref(),
                Some("/nix/store/abc-system")
            );
        }
        assert!(vs[0].prebuilt() && !vs[1].prebuilt() && vs[3].single_archive && vs[4].shell);
        let squashfs = |v: &Variant| v.config["fileSystems"][1]["options"].clone();
        assert_eq!(squashfs(&vs[0]), json!(["loop", "threads=multi"]));
        assert_eq!(squashfs(&vs[2]).as_array().unwrap().len(), 3);
    }
}
