//! The static release binaries for the image: netboot-init and the stage-2 probe.

use crate::StaticBins;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds both binaries with glibc statically linked (`+crt-static` on the explicit target only,
/// so build scripts and proc-macros stay dynamic) into `<ws>/target/<TARGET>/release/` and checks
/// they are static. They are linked at a fixed address (`relocation-model=static`) rather than as
/// a static PIE: 5% smaller, with nothing to relocate at start (the benchmark saw no difference in
/// boot time either way; a stage-1 PID 1 that reads only its own initrd gains little from ASLR).
pub fn build_static(ws: &Path) -> Result<StaticBins> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(ws)
        .args(["build", "--release", "--target", TARGET])
        .args(["-p", "netboot-init", "--bin", "netboot-init"])
        .args(["-p", "netboot-qemu", "--bin", "stage2-probe"])
        .env("CARGO_TARGET_DIR", ws.join("target"))
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release --target {TARGET} failed ({status})");
    }
    let dir = ws.join("target").join(TARGET).join("release");
    let bins = StaticBins {
        init: dir.join("netboot-init"),
        probe: dir.join("stage2-probe"),
    };
    for b in [&bins.init, &bins.probe] {
        crate::elf::ensure_static(b)?;
    }
    Ok(bins)
}
