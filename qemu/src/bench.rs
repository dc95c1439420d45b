//! `cargo xtask bench`: netboot-init against a busybox shell stage 1 on the same fixture and
//! kernel, in one run; writes `target/bench/report.{json,md}` and `timeline.svg`.

pub mod shell;
pub mod stage2;
pub mod stats;

use anyhow::Result;
use std::path::Path;

/// Runs every benchmark and writes the report under `<ws>/target/bench/`.
pub fn run(_ws: &Path) -> Result<()> {
    anyhow::bail!("bench: not implemented yet")
}
