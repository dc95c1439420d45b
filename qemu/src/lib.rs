//! The QEMU harness for netboot-init: sets up the host (Debian packages, two real kernels), builds
//! the static binaries, makes a fixture system with the real Nix, boots scenarios under QEMU and
//! judges them from the serial console.

pub mod bench;
pub mod demo;
pub mod elf;
pub mod fixture;
pub mod images;
pub mod netboot;
pub mod probe;
pub mod scenarios;
pub mod setup;
pub mod statics;
pub mod vm;

use anyhow::Result;
use std::path::{Path, PathBuf};

/// The static binaries [`build_static`] produces.
#[derive(Debug, Clone)]
pub struct StaticBins {
    pub init: PathBuf,
    pub probe: PathBuf,
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    /// `None` when the scenario passed, else the reason.
    pub failure: Option<String>,
    pub seconds: f64,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Idempotent host set-up: backports source, Debian packages, kernels under `target/netboot/kernels`.
pub fn setup(ws: &Path) -> Result<()> {
    setup::setup(ws)
}

/// Builds netboot-init and the stage-2 probe as static binaries and checks they are static.
pub fn build_static(ws: &Path) -> Result<StaticBins> {
    statics::build_static(ws)
}

/// Runs the scenarios named in `only` (all when empty), two at a time, printing one line each.
pub fn run_scenarios(ws: &Path, only: &[String]) -> Result<Vec<ScenarioResult>> {
    let _lock = lock_harness(ws)?;
    scenarios::run_scenarios(ws, only)
}

/// Boots the 6.12 demo image, streams its console and prints the per-phase timings.
pub fn demo(ws: &Path) -> Result<()> {
    let _lock = lock_harness(ws)?;
    demo::demo(ws)
}

/// Serializes harness runs on one workspace: they share the fixture and the scenario directories.
/// The lock goes with the returned file.
pub fn lock_harness(ws: &Path) -> Result<std::fs::File> {
    use anyhow::Context;
    use std::os::unix::io::AsRawFd;
    let dir = ws.join("target/netboot");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("harness.lock");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "netboot-qemu: waiting for another harness run ({})",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            anyhow::bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(f)
}
