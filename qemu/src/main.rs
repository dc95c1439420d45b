//! Development entry point: `netboot-qemu setup|build|scenarios [NAME...]|demo|fetch-kernel`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

fn workspace() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("qemu crate has no parent dir")?
        .to_path_buf())
}

fn main() -> Result<()> {
    let ws = workspace()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => netboot_qemu::setup(&ws),
        Some("build") => {
            let b = netboot_qemu::build_static(&ws)?;
            println!("init:  {}\nprobe: {}", b.init.display(), b.probe.display());
            Ok(())
        }
        Some("scenarios") => {
            let results = netboot_qemu::run_scenarios(&ws, &args[1..])?;
            let failed = results.iter().filter(|r| !r.passed()).count();
            if failed > 0 {
                bail!("{failed} of {} scenarios failed", results.len());
            }
            Ok(())
        }
        Some("demo") => netboot_qemu::demo(&ws),
        // Another kernel, e.g. `fetch-kernel /tmp/k linux-image-amd64/bookworm-backports`.
        Some("fetch-kernel") if args.len() == 3 => netboot_qemu::setup::fetch_kernel(
            std::path::Path::new(&args[1]),
            &args[2],
            &std::path::PathBuf::from(format!("{}.downloads", args[1].trim_end_matches('/'))),
        ),
        _ => bail!("usage: netboot-qemu setup|build|scenarios [NAME...]|demo|fetch-kernel DEST META-PACKAGE"),
    }
}
