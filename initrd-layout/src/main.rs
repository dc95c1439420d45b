use anyhow::{bail, Context, Result};
use initrd_layout::build::{BuildOptions, ExtraFile};
use initrd_layout::netboot_dir::{InitrdSource, NetbootDirOptions};
use initrd_layout::store_image::{StoreImageOptions, DEFAULT_COMP};
use initrd_layout::Compression;
use std::path::PathBuf;

const USAGE: &str = "\
initrd-layout: builds the NixOS netboot initrd that carries netboot-init

Usage:
  initrd-layout build --init FILE --config FILE --modules DIR --store-image FILE -o FILE [OPTIONS]
  initrd-layout store-image [--store-root DIR] [--registration FILE] [--comp COMP]
                            [--processors N] -o FILE (STORE_PATH... | --paths-from FILE)
  initrd-layout netboot-dir --kernel FILE [--stage2-init PATH] [--param WORD]... -o DIR
                            (--initrd FILE | BUILD INPUTS AND OPTIONS)

build:
  --init FILE                netboot-init, installed as /init (mode 0755)
  --config FILE              JSON config, validated, installed at /etc/netboot-init.json
  --modules DIR              the kernel's /lib/modules/<release> tree, after depmod
  --kernel-release NAME      default: the name of the --modules directory
  --store-image FILE         squashfs store image, installed where the config's squashfs
                             entry points (../nix-store.squashfs: /nix-store.squashfs), in
                             its own uncompressed archive after the compressed part
  --nix-db DIR               prebuilt Nix database, installed at registration.prebuiltDb
  --shell FILE               static busybox: /bin/busybox, with the config's shell
                             (failure.shell, /bin/sh) linked to it
  --file SRC=/DEST           extra file or directory tree (repeatable)
  --compress C               zstd[:1-19] (default zstd:19), xz[:0-9], gzip[:1-9] or none
  --keep-module-compression  ship modules as the kernel package has them (default:
                             decompressed, modules.dep rewritten to the .ko names)
  --single-archive           everything, the store image included, in one compressed archive
  -o, --output FILE

store-image (like nixpkgs make-squashfs.nix):
  STORE_PATH...              /nix/store/... paths; their closure goes into the image
  --paths-from FILE          read store paths from FILE, one a line
  --store-root DIR           a chroot store (nix-store --store local?root=DIR)
  --registration FILE        ship this nix-path-registration instead of nix-store --dump-db
                             (the image then holds exactly the given paths)
  --comp COMP                mksquashfs -comp setting (default \"zstd -Xcompression-level 19\")
  --processors N             mksquashfs -processors
  -o, --output FILE

netboot-dir (writes DIR/{bzImage,initrd,netboot.ipxe} and DIR/kexec-tree/{bzImage,initrd,kexec-boot}):
  --kernel FILE              the kernel image (bzImage / vmlinuz)
  --initrd FILE              use this initrd instead of building one from the build options
  --stage2-init PATH         init= for the kernel (default: the config's \"init\")
  --param WORD               a kernel parameter (repeatable); words iPXE would misread
                             ($, leading #, whitespace, ||, &&, ;) are refused
  -o, --output DIR

Environment: SOURCE_DATE_EPOCH sets every mtime in the initrd and the image (default 0).
RUST_LOG=debug|info|warn selects the log level (default info).
";

struct Args {
    words: Vec<String>,
    pos: usize,
}

impl Args {
    fn next(&mut self) -> Option<String> {
        let w = self.words.get(self.pos).cloned();
        self.pos += 1;
        w
    }
    fn value(&mut self, flag: &str) -> Result<String> {
        self.next().with_context(|| format!("{flag} needs a value"))
    }
}

#[derive(Default)]
struct Parsed {
    init: Option<PathBuf>,
    config: Option<PathBuf>,
    modules: Option<PathBuf>,
    kernel_release: Option<String>,
    store_image: Option<PathBuf>,
    nix_db: Option<PathBuf>,
    shell: Option<PathBuf>,
    files: Vec<ExtraFile>,
    compress: Option<Compression>,
    keep_module_compression: bool,
    single_archive: bool,
    output: Option<PathBuf>,
    // store-image
    paths: Vec<String>,
    store_root: Option<PathBuf>,
    registration: Option<PathBuf>,
    comp: Option<String>,
    processors: Option<u32>,
    // netboot-dir
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    stage2_init: Option<String>,
    params: Vec<String>,
}

fn parse(words: Vec<String>) -> Result<Parsed> {
    let mut a = Args { words, pos: 0 };
    let mut p = Parsed::default();
    while let Some(w) = a.next() {
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (w.clone(), None),
        };
        let val = |a: &mut Args| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => a.value(&flag),
            }
        };
        match flag.as_str() {
            "--init" => p.init = Some(val(&mut a)?.into()),
            "--config" => p.config = Some(val(&mut a)?.into()),
            "--modules" => p.modules = Some(val(&mut a)?.into()),
            "--kernel-release" => p.kernel_release = Some(val(&mut a)?),
            "--store-image" => p.store_image = Some(val(&mut a)?.into()),
            "--nix-db" => p.nix_db = Some(val(&mut a)?.into()),
            "--shell" => p.shell = Some(val(&mut a)?.into()),
            "--file" => p.files.push(ExtraFile::parse(&val(&mut a)?)?),
            "--compress" => p.compress = Some(Compression::parse(&val(&mut a)?)?),
            "--keep-module-compression" => p.keep_module_compression = true,
            "--single-archive" => p.single_archive = true,
            "-o" | "--output" => p.output = Some(val(&mut a)?.into()),
            "--store-root" => p.store_root = Some(val(&mut a)?.into()),
            "--registration" => p.registration = Some(val(&mut a)?.into()),
            "--comp" => p.comp = Some(val(&mut a)?),
            "--processors" => {
                let v = val(&mut a)?;
                p.processors = Some(
                    v.parse()
                        .with_context(|| format!("--processors {v:?}: not a number"))?,
                );
            }
            "--paths-from" => {
                let f = val(&mut a)?;
                let text =
                    std::fs::read_to_string(&f).with_context(|| format!("--paths-from {f}"))?;
                p.paths.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            "--kernel" => p.kernel = Some(val(&mut a)?.into()),
            "--initrd" => p.initrd = Some(val(&mut a)?.into()),
            "--stage2-init" => p.stage2_init = Some(val(&mut a)?),
            "--param" => p.params.push(val(&mut a)?),
            f if f.starts_with('-') => bail!("unknown option {f}\n\n{USAGE}"),
            _ => p.paths.push(w),
        }
    }
    Ok(p)
}

fn mtime() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds that fits 32 bits")
        }),
        _ => Ok(0),
    }
}

fn build_options(p: &mut Parsed, output: PathBuf) -> Result<BuildOptions> {
    let need = |v: &Option<PathBuf>, flag: &str| {
        v.clone()
            .with_context(|| format!("build: {flag} is required\n\n{USAGE}"))
    };
    let mut o = BuildOptions::new(
        &need(&p.init, "--init")?,
        &need(&p.config, "--config")?,
        &need(&p.modules, "--modules")?,
        &need(&p.store_image, "--store-image")?,
        &output,
    );
    o.kernel_release = p.kernel_release.take();
    o.prebuilt_db = p.nix_db.take();
    o.shell = p.shell.take();
    o.extra_files = std::mem::take(&mut p.files);
    o.compression = p.compress.unwrap_or_default();
    o.keep_module_compression = p.keep_module_compression;
    o.single_archive = p.single_archive;
    o.mtime = mtime()?;
    Ok(o)
}

fn no_leftover_paths(p: &Parsed) -> Result<()> {
    if let Some(w) = p.paths.first() {
        bail!("unexpected argument {w:?}\n\n{USAGE}");
    }
    Ok(())
}

fn run(args: Vec<String>) -> Result<()> {
    let Some(cmd) = args.first().cloned() else {
        bail!("no command given\n\n{USAGE}");
    };
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        print!("{USAGE}");
        return Ok(());
    }
    let mut p = parse(args[1..].to_vec())?;
    let output = p
        .output
        .clone()
        .with_context(|| format!("{cmd}: -o/--output is required\n\n{USAGE}"))?;
    match cmd.as_str() {
        "build" => {
            no_leftover_paths(&p)?;
            let o = build_options(&mut p, output)?;
            let report = initrd_layout::build(&o)?;
            println!("{report}");
        }
        "store-image" => {
            let mut o =
                StoreImageOptions::new(std::mem::take(&mut p.paths), p.store_root.take(), &output);
            o.registration = p.registration.take();
            o.comp = p.comp.take().unwrap_or_else(|| DEFAULT_COMP.to_string());
            o.processors = p.processors;
            o.mtime = mtime()?;
            let report = initrd_layout::store_image::make_store_image(&o)?;
            println!("{report}");
        }
        "netboot-dir" => {
            no_leftover_paths(&p)?;
            let kernel = p
                .kernel
                .clone()
                .with_context(|| format!("netboot-dir: --kernel is required\n\n{USAGE}"))?;
            let initrd = match p.initrd.take() {
                Some(f) => InitrdSource::Prebuilt(f),
                None => {
                    InitrdSource::Build(Box::new(build_options(&mut p, output.join("initrd"))?))
                }
            };
            let o = NetbootDirOptions {
                kernel,
                initrd,
                stage2_init: p.stage2_init.take(),
                kernel_params: std::mem::take(&mut p.params),
                out_dir: output,
            };
            let report = initrd_layout::netboot_dir::make_netboot_dir(&o)?;
            println!("{report}");
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
    Ok(())
}

struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("initrd-layout: {}", r.args());
        }
    }
    fn flush(&self) {}
}

fn main() {
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("debug") | Ok("trace") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    };
    let logger = Box::leak(Box::new(StderrLogger(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("initrd-layout: error: {e:#}");
        std::process::exit(1);
    }
}
