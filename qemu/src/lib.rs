//! The QEMU harness for netboot-init: sets up the host (Debian packages, two real kernels), builds
//! the static binaries, makes a fixture system with the real Nix, boots scenarios under QEMU and
//! judges them from the serial console.

pub mod elf;
pub mod probe;

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

pub fn setup(_ws: &Path) -> Result<()> {
    anyhow::bail!("setup: not implemented yet")
}

pub fn build_static(_ws: &Path) -> Result<StaticBins> {
    anyhow::bail!("build_static: not implemented yet")
}

pub fn run_scenarios(_ws: &Path, _only: &[String]) -> Result<Vec<ScenarioResult>> {
    anyhow::bail!("run_scenarios: not implemented yet")
}

pub fn demo(_ws: &Path) -> Result<()> {
    anyhow::bail!("demo: not implemented yet")
}
